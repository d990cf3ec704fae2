//! `article-server`: reads `ARTICLES_*` from the environment and serves until SIGTERM.

use std::process::ExitCode;

use article_server::{Config, run, shutdown};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("article-server: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("article-server: invalid configuration:\n  - RUST_LOG: {e}");
                return ExitCode::from(2);
            }
        },
        _ => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("article-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %config.listen_addr, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match run(config, listener, shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
