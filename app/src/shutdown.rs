//! Lifecycle flags for the probes, and the signals that start a graceful shutdown.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Lifecycle {
    migrated: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    pub fn set_migrated(&self) {
        self.migrated.store(true, Ordering::Release);
    }

    pub fn migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }

    /// From now on `/readyz` fails, so the endpoints controller stops sending traffic here,
    /// while the server keeps serving what still arrives.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Resolves on SIGTERM (what the kubelet sends) or SIGINT (Ctrl-C when run by hand).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        _ = term => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}
