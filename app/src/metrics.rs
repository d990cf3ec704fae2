//! Prometheus metrics: requests by route and status, latency, pool usage, job queue depth,
//! cache and job outcomes. Gauges that describe the database are refreshed at scrape time.

use axum::extract::MatchedPath;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The route label: the matched pattern, or `unmatched`. It holds axum's `MatchedPath`
/// (a shared string) rather than a copy, so labelling a request allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct Route(Option<MatchedPath>);

impl Route {
    pub fn new(matched: Option<&MatchedPath>) -> Self {
        Route(matched.cloned())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: Route,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: Route,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// What became of a write that found no primary and was held (`AppState::write`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum HeldOutcome {
    /// A primary answered within the hold and the write ran.
    Ran,
    /// The hold ran out first: answered 503.
    Expired,
    /// Too many writes were held already: answered 503 at once.
    NoSlot,
}

impl HeldOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            HeldOutcome::Ran => "ran",
            HeldOutcome::Expired => "expired",
            HeldOutcome::NoSlot => "no_slot",
        }
    }
}

impl EncodeLabelValue for HeldOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeldLabels {
    pub outcome: HeldOutcome,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily,
    pub in_flight: Gauge,
    pub connections: Gauge,
    pub shed: Counter,
    pub pool_connections: Family<StateLabels, Gauge>,
    pub pool_max: Gauge,
    pub jobs_queue: Family<StateLabels, Gauge>,
    pub jobs_processed: Family<JobLabels, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_stale: Counter,
    pub cache_bytes: Gauge,
    pub cache_entries: Gauge,
    pub cache_invalidations: Counter,
    pub cache_resyncs: Counter,
    pub db_circuit_open: Gauge,
    pub replica_reads: Counter,
    pub replica_refused: Counter,
    pub writes_held: Family<HeldLabels, Counter>,
}

/// The method as a metric label: the standard ones by name, anything else as `other`, so
/// a client cannot create series by inventing methods.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("articles");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let in_flight = Gauge::default();
        let connections = Gauge::default();
        let shed = Counter::default();
        let pool_connections = Family::<StateLabels, Gauge>::default();
        let pool_max = Gauge::default();
        let jobs_queue = Family::<StateLabels, Gauge>::default();
        let jobs_processed = Family::<JobLabels, Counter>::default();
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        let cache_stale = Counter::default();
        let cache_bytes = Gauge::default();
        let cache_entries = Gauge::default();
        let cache_invalidations = Counter::default();
        let cache_resyncs = Counter::default();
        let db_circuit_open = Gauge::default();
        let replica_reads = Counter::default();
        let replica_refused = Counter::default();
        let writes_held = Family::<HeldLabels, Counter>::default();
        registry.register(
            "db_writes_held",
            "Writes that found no primary and were held for one (ARTICLES_WRITE_HOLD_MS), by outcome",
            writes_held.clone(),
        );
        registry.register(
            "db_replica_reads",
            "Reads answered from the read replica because the primary failed",
            replica_reads.clone(),
        );
        registry.register(
            "db_replica_refused",
            "Reads the read replica could not answer within ARTICLES_READ_MAX_LAG_SECONDS",
            replica_refused.clone(),
        );
        registry.register(
            "cache_stale_served",
            "Cached responses served stale because the database was unreachable",
            cache_stale.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes held by the response cache",
            cache_bytes.clone(),
        );
        registry.register(
            "cache_entries",
            "Entries in the response cache",
            cache_entries.clone(),
        );
        registry.register(
            "cache_invalidations",
            "Article change notifications applied to the cache",
            cache_invalidations.clone(),
        );
        registry.register(
            "cache_resyncs",
            "Times the cache was cleared because the change listener (re)connected",
            cache_resyncs.clone(),
        );
        registry.register(
            "db_circuit_open",
            "1 while the database circuit breaker is open (failing fast)",
            db_circuit_open.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served",
            in_flight.clone(),
        );
        registry.register(
            "http_connections_open",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "http_requests_shed",
            "Requests refused with 503 at capacity",
            shed.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by state (idle, in_use)",
            pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Database pool size limit",
            pool_max.clone(),
        );
        registry.register(
            "jobs_queue_depth",
            "Pending jobs: all pending, and those due now",
            jobs_queue.clone(),
        );
        registry.register(
            "jobs_processed",
            "Jobs attempted by this replica, by outcome",
            jobs_processed.clone(),
        );
        registry.register("cache_hits", "Response cache hits", cache_hits.clone());
        registry.register(
            "cache_misses",
            "Response cache misses",
            cache_misses.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            in_flight,
            connections,
            shed,
            pool_connections,
            pool_max,
            jobs_queue,
            jobs_processed,
            cache_hits,
            cache_misses,
            cache_stale,
            cache_bytes,
            cache_entries,
            cache_invalidations,
            cache_resyncs,
            db_circuit_open,
            replica_reads,
            replica_refused,
            writes_held,
        }
    }

    /// The failover counters live with the pool hooks that count them.
    pub fn register_failover(&mut self, failover: &crate::db::failover::Failover) {
        self.registry.register(
            "db_standby_refused",
            "Write connections refused because the server was in recovery or read-only",
            failover.standby_refused.clone(),
        );
        self.registry.register(
            "db_read_only_closed",
            "Connections closed after a write failed with SQLSTATE 25006 (server demoted)",
            failover.read_only_closed.clone(),
        );
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes(b"BREWCOFFEEXXXXXXXXXXXXXXXXXX").expect("valid token");
        assert_eq!(method_label(&invented), "other");
    }
}
