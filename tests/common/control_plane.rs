//! The local control plane as a test disturbs and describes it: its API server paused
//! (SIGSTOP/SIGCONT, as a stalled machine or a long GC pause would), and a one-line account
//! of what it is doing for the message of a step that timed out.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

/// The pid of the local cluster's kube-apiserver, from the pid file that hack/cluster wrote;
/// panics unless it names a running kube-apiserver (a cluster not started from this repository
/// is never touched).
pub fn apiserver_pid() -> u32 {
    let file = super::cluster_dir().join("pids/kube-apiserver.pid");
    let pid: u32 = std::fs::read_to_string(&file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{} missing: this test pauses the API server of a cluster started by hack/cluster/up.sh",
                file.display()
            )
        });
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("kube-apiserver"),
        "pid {pid} of {} is not a running kube-apiserver",
        file.display()
    );
    pid
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// A stopped (SIGSTOP) process, continued when dropped, also when the test panics.
pub struct Paused(u32);

impl Paused {
    pub fn stop(pid: u32) -> Self {
        assert!(signal(pid, "STOP"), "SIGSTOP {pid}");
        Self(pid)
    }

    /// The local API server, paused: every process of the cluster stalls with it.
    pub fn apiserver() -> Self {
        Self::stop(apiserver_pid())
    }

    /// Continues the process now.
    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !signal(self.0, "CONT") {
            eprintln!("could not SIGCONT {}", self.0);
        }
    }
}

/// What the control plane was doing, for a timeout's message: whether the API server answers
/// `/readyz` (within 3 s), and Lease `ns/name`'s holder and last renewal, by the API server's
/// clock and how long ago by this machine's.
pub async fn describe(client: &Client, lease_ns: &str, lease: &str) -> String {
    let readyz = async {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        client
            .request_text(req)
            .await
            .map_err(|e| e.to_string())
    };
    let api = match tokio::time::timeout(Duration::from_secs(3), readyz).await {
        Ok(Ok(body)) if body.trim() == "ok" => "API server ready".to_string(),
        Ok(Ok(body)) => format!("API server not ready: {}", body.trim()),
        Ok(Err(e)) => format!("API server unreachable: {e}"),
        Err(_) => "API server unreachable: no answer to /readyz within 3s".to_string(),
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease_ns);
    let lease_text = match tokio::time::timeout(Duration::from_secs(3), leases.get_opt(lease)).await
    {
        Ok(Ok(Some(l))) => {
            let spec = l.spec.unwrap_or_default();
            let renewed = spec.renew_time.map(|t| t.0);
            let ago = renewed
                .map(|t| format!("{:.1}s ago", jiff::Timestamp::now().duration_since(t).as_secs_f64()))
                .unwrap_or_else(|| "never".into());
            format!(
                "Lease {lease_ns}/{lease}: holder {:?}, last renewal {} ({ago}), duration {:?}s, transitions {:?}",
                spec.holder_identity.unwrap_or_default(),
                renewed.map(|t| t.to_string()).unwrap_or_default(),
                spec.lease_duration_seconds,
                spec.lease_transitions,
            )
        }
        Ok(Ok(None)) => format!("Lease {lease_ns}/{lease} does not exist"),
        Ok(Err(e)) => format!("Lease {lease_ns}/{lease} unreadable: {e}"),
        Err(_) => format!("Lease {lease_ns}/{lease}: no answer within 3s"),
    };
    format!("{api}; {lease_text}")
}
