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
use articlesite_operator::backup_job;
use articlesite_operator::controller::{self, Settings};
use articlesite_operator::fence::{Fence, FenceLayer};
use articlesite_operator::leader::{self, ElectionSettings, Elector};
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
    /// Back up one site's database (what its backup Jobs run): pgBackRest in the primary's pod.
    Backup(BackupArgs),
}

#[derive(clap::Args)]
struct BackupArgs {
    /// The ArticleSite.
    #[arg(long)]
    site: String,
    /// Its namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// `full`, `diff` or `incr`.
    #[arg(long = "type", default_value = "full")]
    kind: articlesite_operator::resources::backup::BackupType,
    /// Where the result goes for the operator to read (the container's termination message).
    #[arg(long, default_value = "/dev/termination-log")]
    result_file: std::path::PathBuf,
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
    /// Image of the backup Jobs, which run `articlesite-operator backup`: this operator's own
    /// image (the chart sets it).
    #[arg(long, env = "BACKUP_IMAGE", default_value = concat!("articlesite/articlesite-operator:", env!("CARGO_PKG_VERSION")))]
    backup_image: String,
    /// Seconds between periodic re-checks of each site (reads only when nothing changed).
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
    /// Milliseconds a site's reconcile waits for more changes of its children before it runs
    /// (0 turns this off). While a site comes up its children change in bursts (pods scheduled,
    /// started, ready; status of each workload): one reconcile per burst instead of one per change.
    #[arg(long, default_value_t = 500)]
    debounce_millis: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Reconcile only while holding a Lease, so that several replicas can run (the chart turns
    /// this on). Off by default: a single local process needs no Lease.
    #[arg(long)]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "articlesite-operator")]
    lease_name: String,
    /// Namespace of the Lease [default: $POD_NAMESPACE, else the service account's namespace].
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease [default: $POD_NAME, else <hostname>_<random>].
    #[arg(long)]
    lease_identity: Option<String>,
    /// Seconds after the last renewal before a standby may take the Lease.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds a leader keeps trying to renew before it stops reconciling and exits.
    #[arg(long, default_value_t = 10)]
    lease_renew_deadline_seconds: u64,
    /// Seconds between renewals (leader) and attempts (standby).
    #[arg(long, default_value_t = 2)]
    lease_retry_period_seconds: u64,
}

impl RunArgs {
    fn election(&self) -> anyhow::Result<Option<ElectionSettings>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let namespace = self
            .lease_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(leader::default_namespace)
            .context("--leader-elect needs --lease-namespace (or $POD_NAMESPACE) outside a pod")?;
        let settings = ElectionSettings {
            lease_name: self.lease_name.clone(),
            namespace,
            identity: self
                .lease_identity
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(leader::default_identity),
            lease_duration: Duration::from_secs(self.lease_duration_seconds),
            renew_deadline: Duration::from_secs(self.lease_renew_deadline_seconds),
            retry_period: Duration::from_secs(self.lease_retry_period_seconds),
        };
        settings.validate()?;
        Ok(Some(settings))
    }
}

/// Resolves on SIGTERM or SIGINT (used while standing by; the controller has its own handler).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd::crd_yaml().context("serialize CRD")?);
            Ok(())
        }
        Command::Run(args) => run(args).await,
        Command::Backup(args) => {
            telemetry::init(LogFormat::Json);
            let client = Client::try_default()
                .await
                .context("load kubeconfig or in-cluster config")?;
            let job = backup_job::BackupJob {
                namespace: args.namespace,
                site: args.site,
                kind: args.kind,
            };
            let result = job.run(&client).await;
            // The operator reads the outcome from the termination message, success or not.
            let message = backup_job::termination_message(&result);
            std::fs::write(&args.result_file, message)
                .with_context(|| format!("write {}", args.result_file.display()))?;
            result.map(|_| ()).map_err(Into::into)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let election = args.election()?;
    let mut config = Config::infer()
        .await
        .context("load kubeconfig or in-cluster config")?;
    // A distinct user agent lets audit logs attribute every request to the operator, and with
    // leader election to the replica.
    let agent = concat!("articlesite-operator/", env!("CARGO_PKG_VERSION"));
    let agent = match &election {
        Some(e) => format!("{agent} ({})", e.identity),
        None => agent.to_string(),
    };
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_str(&agent).context("--lease-identity in a user agent")?,
    ));
    // No hidden client-side retries (up to 15 per request by default): a failed request fails
    // the reconcile, which retries with per-site backoff, and the guard bounds the request rate
    // while the API server is unhappy (docs/operator-design.md, "Resilience").
    config.default_retry = false;
    let metrics = Arc::new(Metrics::default());
    let health = ApiHealth::new(metrics.clone());
    // The probe has a client of its own, outside the guard: its timeout measures the API
    // server, not the operator's own throttling queue.
    // The elector uses it too: renewals must not queue behind throttled reconcile requests.
    let probe_client = Client::try_from(config.clone()).context("build Kubernetes client")?;
    // Writes go only while this replica holds the Lease (innermost layer: checked last).
    let fence = match &election {
        Some(_) => Fence::closed(),
        None => Fence::always_open(),
    };
    let leader_metrics = metrics.election.clone();
    let fence_layer = FenceLayer::new(fence.clone(), Some(leader_metrics.fenced_writes.clone()));
    let client: Client = ClientBuilder::try_from(config)
        .context("build Kubernetes client")?
        .with_layer(&fence_layer)
        .with_layer(&health.layer())
        .build();
    tokio::spawn(api_health::probe(probe_client.clone(), metrics.clone()));
    let (listener, addr) = metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("bind metrics address {}", args.metrics_addr))?;
    info!(%addr, manager = MANAGER, "serving /healthz, /readyz and /metrics");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = metrics::router(metrics.clone());
    let server = tokio::spawn(
        axum::serve(listener, router)
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
        backup_image: args.backup_image,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        debounce: Duration::from_millis(args.debounce_millis),
    };
    match election {
        // Returns after SIGTERM/SIGINT once the running reconciles have finished.
        None => {
            metrics.set_standby(false);
            controller::run(client, settings, metrics).await;
        }
        Some(election) => {
            let elector = Elector::new(probe_client, election, fence, leader_metrics);
            metrics.set_standby(true);
            let signalled = tokio::select! {
                _ = elector.acquire() => false,
                _ = shutdown_signal() => true,
            };
            if !signalled {
                metrics.set_standby(false);
                tokio::select! {
                    _ = controller::run(client, settings, metrics.clone()) => {
                        elector.release().await;
                    }
                    lost = elector.hold() => {
                        // The fence already refuses every write; dropping the controller stops
                        // the reconciles too. A restart makes this replica a standby again.
                        metrics.set_standby(true);
                        tracing::error!(error = %lost, "lost leadership, exiting");
                        return Err(lost.into());
                    }
                }
            }
        }
    }
    let _ = stop_tx.send(());
    server
        .await
        .context("metrics server task")?
        .context("metrics server")?;
    info!("shut down");
    Ok(())
}
