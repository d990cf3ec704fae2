//! Prometheus metrics and the HTTP endpoints `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::leader::LeaderMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub verb: String,
    pub kind: String,
}

/// One site.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabels {
    pub namespace: String,
    pub site: String,
}

/// One database instance of one site.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub namespace: String,
    pub site: String,
    pub instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub kind: String,
    pub outcome: String,
}

pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_duration: Histogram,
    pub errors: Family<ErrorLabels, Counter>,
    /// Write requests the operator sent (apply, create, delete, status, events): the client-side
    /// proof of the zero-write steady state.
    pub writes: Family<WriteLabels, Counter>,
    pub children: Family<OutcomeLabels, Counter>,
    /// 1 while this replica holds the leader election Lease (or runs without election).
    pub leader: Gauge,
    /// High availability actions: pod restarts by reason, rollbacks, orphaned pods deleted.
    pub pod_restarts: Family<ErrorLabels, Counter>,
    pub rollbacks: Counter,
    pub orphaned_pods_deleted: Counter,
    /// Changes of primary seen, failovers and switchovers apart.
    pub database_failovers: Counter,
    pub database_switchovers: Counter,
    /// Bytes each replica is behind its primary (0 for the primary).
    pub replication_lag: Family<InstanceLabels, Gauge>,
    /// Seconds since the epoch of a site's last archived WAL segment and last backup: the age
    /// of what a restore could reach (alert on `time() - ...`).
    pub backup_last_archived: Family<SiteLabels, Gauge>,
    pub backup_last_success: Family<SiteLabels, Gauge>,
    /// 1 while a site's archiving fails or lags (`ContinuousArchiving` False).
    pub backup_archive_failing: Family<SiteLabels, Gauge>,
    registry: Registry,
    ready: AtomicBool,
    /// A replica waiting for the Lease: healthy and ready to take over, reconciling nothing.
    standby: AtomicBool,
    /// Requests held back while the API server was failing (`api_health`).
    pub throttled: Counter,
    /// Watch restarts by reason (`410` = expired resource version, `transport`, ...).
    pub watch_errors: Family<ErrorLabels, Counter>,
    api_reachable_gauge: Gauge,
    api_reachable: AtomicBool,
    /// Counts the API server's returns after being unreachable (`api_recoveries`).
    recoveries: tokio::sync::watch::Sender<u64>,
    /// The leader election's series (`articlesite_operator_leader_*`).
    pub election: Arc<LeaderMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let reconcile_duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let errors = Family::<ErrorLabels, Counter>::default();
        let writes = Family::<WriteLabels, Counter>::default();
        let children = Family::<OutcomeLabels, Counter>::default();
        let mut registry = Registry::with_prefix("articlesite_operator");
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by reason",
            errors.clone(),
        );
        registry.register(
            "write_requests",
            "Write requests sent to the API server",
            writes.clone(),
        );
        registry.register(
            "children",
            "Child objects handled, by kind and outcome",
            children.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 when this replica is the leader and reconciles",
            leader.clone(),
        );
        let pod_restarts = Family::<ErrorLabels, Counter>::default();
        let rollbacks = Counter::default();
        let orphaned_pods_deleted = Counter::default();
        registry.register(
            "pod_restarts",
            "App pods restarted through the Eviction API, by reason",
            pod_restarts.clone(),
        );
        registry.register(
            "rollbacks",
            "Failed rollouts rolled back to the last ready pod template",
            rollbacks.clone(),
        );
        registry.register(
            "orphaned_pods_deleted",
            "Pods force-deleted because their node no longer exists",
            orphaned_pods_deleted.clone(),
        );
        let database_failovers = Counter::default();
        let database_switchovers = Counter::default();
        let replication_lag = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "database_failovers",
            "Unplanned changes of a database's primary (Patroni promoted a standby)",
            database_failovers.clone(),
        );
        registry.register(
            "database_switchovers",
            "Requested or drain-triggered changes of a database's primary",
            database_switchovers.clone(),
        );
        registry.register(
            "database_replication_lag_bytes",
            "Bytes of WAL a database instance has not replayed, against its primary",
            replication_lag.clone(),
        );
        let backup_last_archived = Family::<SiteLabels, Gauge>::default();
        let backup_last_success = Family::<SiteLabels, Gauge>::default();
        let backup_archive_failing = Family::<SiteLabels, Gauge>::default();
        registry.register(
            "backup_last_archived_timestamp_seconds",
            "When a site's primary last archived a WAL segment to its repository",
            backup_last_archived.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When a site's last successful backup finished",
            backup_last_success.clone(),
        );
        registry.register(
            "backup_archive_failing",
            "1 while a site's WAL archiving fails or lags",
            backup_archive_failing.clone(),
        );
        let throttled = Counter::default();
        registry.register(
            "throttled_requests",
            "Requests delayed because the API server was answering with errors",
            throttled.clone(),
        );
        let watch_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "watch_errors",
            "Watch failures (each is followed by a backed-off restart), by reason",
            watch_errors.clone(),
        );
        let api_reachable_gauge = Gauge::default();
        api_reachable_gauge.set(1);
        registry.register(
            "api_reachable",
            "1 while the API server's /readyz answers ok",
            api_reachable_gauge.clone(),
        );
        let election = Arc::new(LeaderMetrics::register(
            registry.sub_registry_with_prefix("leader"),
        ));
        Self {
            election,
            reconciles,
            reconcile_duration,
            errors,
            writes,
            children,
            leader,
            pod_restarts,
            rollbacks,
            orphaned_pods_deleted,
            database_failovers,
            database_switchovers,
            replication_lag,
            backup_last_archived,
            backup_last_success,
            backup_archive_failing,
            registry,
            ready: AtomicBool::new(false),
            standby: AtomicBool::new(false),
            throttled,
            watch_errors,
            api_reachable_gauge,
            api_reachable: AtomicBool::new(true),
            recoveries: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Metrics {
    pub fn write(&self, verb: &str, kind: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                verb: verb.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// An app pod restarted through the Eviction API, by why.
    pub fn pod_restart(&self, reason: crate::reason::Reason) {
        self.pod_restarts
            .get_or_create(&ErrorLabels {
                reason: reason.as_str().into(),
            })
            .inc();
    }

    /// The database figures of a new status: counters grow by what it added to the old one.
    pub fn database(
        &self,
        namespace: &str,
        site: &str,
        old: Option<&crate::crd::DatabaseStatus>,
        new: &crate::crd::DatabaseStatus,
    ) {
        let grew = |n: i32, o: Option<i32>| u64::try_from(n - o.unwrap_or(n)).unwrap_or(0);
        self.database_failovers
            .inc_by(grew(new.failovers, old.map(|o| o.failovers)));
        self.database_switchovers
            .inc_by(grew(new.switchovers, old.map(|o| o.switchovers)));
        for i in &new.instances {
            if let Some(lag) = i.lag_bytes {
                self.replication_lag
                    .get_or_create(&InstanceLabels {
                        namespace: namespace.into(),
                        site: site.into(),
                        instance: i.name.clone(),
                    })
                    .set(lag);
            }
        }
    }

    /// The backup figures of a new status.
    pub fn backup(&self, namespace: &str, site: &str, status: &crate::crd::ArticleSiteStatus) {
        let Some(b) = &status.backup else {
            return;
        };
        let labels = SiteLabels {
            namespace: namespace.into(),
            site: site.into(),
        };
        if let Some(t) = &b.last_archived_at {
            self.backup_last_archived
                .get_or_create(&labels)
                .set(t.0.as_second());
        }
        if let Some(l) = &b.last_backup {
            self.backup_last_success
                .get_or_create(&labels)
                .set(l.finished.0.as_second());
        }
        let failing = status
            .conditions
            .iter()
            .any(|c| c.type_ == crate::backup_report::CONTINUOUS_ARCHIVING && c.status == "False");
        self.backup_archive_failing
            .get_or_create(&labels)
            .set(i64::from(failing));
    }

    pub fn error(&self, reason: String) {
        self.errors.get_or_create(&ErrorLabels { reason }).inc();
    }

    pub fn child(&self, kind: &str, outcome: &str) {
        self.children
            .get_or_create(&OutcomeLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Starts timing a reconcile; the duration is recorded when the guard drops.
    pub fn start_reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    pub fn set_api_reachable(&self, reachable: bool) {
        let was = self.api_reachable.swap(reachable, Ordering::Relaxed);
        self.api_reachable_gauge.set(i64::from(reachable));
        if reachable && !was {
            self.recoveries.send_modify(|n| *n += 1);
        }
    }

    /// Yields once each time the API server becomes reachable again, so that every site is
    /// reconciled at once instead of waiting out its error backoff (which grew during the outage).
    pub fn api_recoveries(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.recoveries.subscribe(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    pub fn watch_error(&self, reason: String) {
        self.watch_errors
            .get_or_create(&ErrorLabels { reason })
            .inc();
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Standby (waiting for the Lease) or leading; a leader is ready once its caches synced.
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Relaxed);
        self.leader.set(i64::from(!standby));
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if !m.api_reachable.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "API server unreachable")
    } else if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else if m.standby.load(Ordering::Relaxed) {
        // Ready so that rollouts of the operator proceed: a standby takes over when needed.
        (StatusCode::OK, "ok: standby, not the leader")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    match m.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub fn router(state: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Binds the address (port 0 picks a free port) and returns the listener and its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode() {
        let m = Metrics::default();
        {
            let _t = m.start_reconcile();
        }
        m.error("api_500".into());
        m.write("apply", "Deployment");
        let text = m.encode().unwrap();
        assert!(text.contains("articlesite_operator_reconciles_total 1"));
        assert!(text.contains("articlesite_operator_reconcile_duration_seconds_count 1"));
        assert!(text.contains("articlesite_operator_reconcile_errors_total{reason=\"api_500\"} 1"));
        assert!(text.contains(
            "articlesite_operator_write_requests_total{verb=\"apply\",kind=\"Deployment\"} 1"
        ));
        // The election's series are part of the same page.
        m.election.fenced_writes.inc();
        assert!(text.contains("articlesite_operator_leader_fenced_writes_total 0"));
        let text = m.encode().unwrap();
        assert!(text.contains("articlesite_operator_leader_fenced_writes_total 1"));
    }
}
