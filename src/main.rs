//! `articlesite-operator run` reconciles ArticleSites; `articlesite-operator crd` prints the CRD.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::client::ClientBuilder;
use kube::{Client, Config};
use tracing::info;

use articlesite_operator::api_health::{self, ApiHealth};
use articlesite_operator::controller::{self, Settings};
use articlesite_operator::metrics::{self, Metrics};
use articlesite_operator::telemetry::{self, LogFormat};
use articlesite_operator::{MANAGER, crd};

#[derive(Parser)]
#[command(
    name = "articlesite-operator",
    version,
    about = "Runs highly available article sites on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ArticleSite CustomResourceDefinition as YAML.
    Crd,
    /// Reconcile ArticleSites until SIGTERM or SIGINT.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespaces to reconcile (repeat the flag or separate with commas); all namespaces when unset.
    #[arg(
        long = "namespace",
        short = 'n',
        value_delimiter = ',',
        env = "WATCH_NAMESPACES"
    )]
    namespaces: Vec<String>,
    /// Address of /healthz, /readyz and /metrics (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", env = "METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Sites reconciled at the same time.
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// DNS domain of the cluster, for in-cluster URLs.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Seconds between periodic re-checks of each site (reads only when nothing changed).
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd::crd_yaml().context("serialize CRD")?);
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let mut config = Config::infer()
        .await
        .context("load kubeconfig or in-cluster config")?;
    // A distinct user agent lets audit logs attribute every request to the operator.
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!(
            "articlesite-operator/",
            env!("CARGO_PKG_VERSION")
        )),
    ));
    // No hidden client-side retries (up to 15 per request by default): a failed request fails
    // the reconcile, which retries with per-site backoff, and the guard bounds the request rate
    // while the API server is unhappy (docs/operator-design.md, "Resilience").
    config.default_retry = false;
    let metrics = Arc::new(Metrics::default());
    let health = ApiHealth::new(metrics.clone());
    let client: Client = ClientBuilder::try_from(config)
        .context("build Kubernetes client")?
        .with_layer(&health.layer())
        .build();
    tokio::spawn(api_health::probe(client.clone(), metrics.clone()));
    let (listener, addr) = metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("bind metrics address {}", args.metrics_addr))?;
    info!(%addr, manager = MANAGER, "serving /healthz, /readyz and /metrics");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, metrics::router(metrics.clone()))
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );

    let settings = Settings {
        namespaces: args
            .namespaces
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        concurrency: args.concurrency.max(1),
        cluster_domain: args.cluster_domain,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
    };
    // Returns after SIGTERM/SIGINT once the running reconciles have finished.
    controller::run(client, settings, metrics).await;
    let _ = stop_tx.send(());
    server
        .await
        .context("metrics server task")?
        .context("metrics server")?;
    info!("shut down");
    Ok(())
}
