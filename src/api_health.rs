//! The API server's health as the operator sees it, and how the operator limits itself while
//! the API server is unhappy.
//!
//! - `GuardLayer` sits in the Kubernetes client and sees every answer. A 429, any 5xx or a
//!   transport error switches the client to *throttled* mode until `CALM` has passed without such
//!   an error. Throttled, every request first takes a token from a bucket refilled at
//!   `THROTTLED_RATE` per second and holding at most `THROTTLED_BURST`: while the API server
//!   fails, the operator sends at most `THROTTLED_BURST + THROTTLED_RATE × seconds` requests,
//!   whatever the number of sites (per-site retries and watch restarts also back off on their
//!   own). Healthy, requests are not limited, so convergence stays fast.
//! - At most `MAX_IN_FLIGHT` requests other than watches are in flight at once. A reconcile
//!   reads everything it needs concurrently, so `--concurrency` reconciles could otherwise open
//!   hundreds of connections (HTTP/1.1: one per request in flight) and take as many of the API
//!   server's priority-and-fairness seats.
//! - `probe` asks the API server's `/readyz` every `PROBE_INTERVAL`; the operator's own
//!   `/readyz` answers 503 while that fails (API server down, or its etcd unavailable).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Sustained request rate (per second) while the API server answers with errors.
pub const THROTTLED_RATE: f64 = 5.0;
/// Requests that may go out at once when throttling begins.
pub const THROTTLED_BURST: f64 = 10.0;
/// Throttling ends after this long without a 429, 5xx or transport error.
pub const CALM: Duration = Duration::from_secs(5);
/// Longest the throttle outlasts the last error while requests queue (see `throttled`).
pub const STICKY: Duration = Duration::from_secs(30);
/// How often a queued request checks whether throttling has ended (it then goes at once).
const RECHECK: Duration = Duration::from_millis(250);
/// Requests in flight at once, watches not counted (they stay open).
pub const MAX_IN_FLIGHT: usize = 32;
/// How often the API server's `/readyz` is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Bucket {
    last_error: Option<Instant>,
    tokens: f64,
    refilled: Option<Instant>,
}

/// Shared by the client's guard layer and the probe.
pub struct ApiHealth {
    bucket: Mutex<Bucket>,
    metrics: Arc<Metrics>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl ApiHealth {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            bucket: Mutex::default(),
            metrics,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    pub fn layer(self: &Arc<Self>) -> GuardLayer {
        GuardLayer(self.clone())
    }

    /// Whether a request ended in an error that tells of an unhappy API server.
    fn record(&self, failed: bool) {
        if failed {
            self.record_error_at(Instant::now());
        }
    }

    fn record_error_at(&self, now: Instant) {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        if !throttled(&b, now) {
            b.tokens = THROTTLED_BURST;
            b.refilled = Some(now);
            warn!(
                rate = THROTTLED_RATE,
                burst = THROTTLED_BURST,
                "API server answers with errors; throttling requests"
            );
        }
        b.last_error = Some(now);
    }

    /// Waits until `turn`, or less when throttling ends before it: the queue of a short burst
    /// of errors (one 429 at start-up, say) is not worked off at the throttled rate.
    async fn wait_turn(&self, turn: Instant) {
        loop {
            let now = Instant::now();
            if now >= turn {
                return;
            }
            if !throttled(&self.bucket.lock().unwrap_or_else(|p| p.into_inner()), now) {
                return;
            }
            tokio::time::sleep_until(turn.min(now + RECHECK)).await;
        }
    }

    /// Reserves the next request's token and returns how long it must wait (zero unthrottled).
    fn reserve(&self) -> Duration {
        self.reserve_at(Instant::now())
    }

    fn reserve_at(&self, now: Instant) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        if !throttled(&b, now) {
            return Duration::ZERO;
        }
        let elapsed = b
            .refilled
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or_default();
        b.tokens = (b.tokens + elapsed * THROTTLED_RATE).min(THROTTLED_BURST) - 1.0;
        b.refilled = Some(now);
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / THROTTLED_RATE)
        }
    }
}

/// Throttled: an error within `CALM`, or, within `STICKY` of the last error, requests still
/// waiting for their turn. A reconcile reads concurrently before it writes, so while the queue
/// holds its reads its (failing) writes are not sent and errors pause; new requests must not
/// bypass that queue, or the rate bound would not hold. `STICKY` ends it even under steady
/// demand once the API server has answered without errors for that long.
fn throttled(b: &Bucket, now: Instant) -> bool {
    let since_error = |d: Duration| {
        b.last_error
            .is_some_and(|t| now.saturating_duration_since(t) < d)
    };
    let queued = b.refilled.is_some_and(|t| {
        b.tokens + now.saturating_duration_since(t).as_secs_f64() * THROTTLED_RATE < 0.0
    });
    since_error(CALM) || (queued && since_error(STICKY))
}

/// Tower layer of the client: throttles while the API server fails (see the module docs).
#[derive(Clone)]
pub struct GuardLayer(Arc<ApiHealth>);

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            health: self.0.clone(),
        }
    }
}

pub struct Guard<S> {
    inner: S,
    health: Arc<ApiHealth>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Guard<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<ResBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let wait = self.health.reserve();
        let turn = Instant::now() + wait;
        let limited = !req.uri().query().is_some_and(|q| q.contains("watch=true"));
        // The client's futures are lazy: nothing is sent before the first poll, after the wait.
        let sent = self.inner.call(req);
        let health = self.health.clone();
        Box::pin(async move {
            if !wait.is_zero() {
                health.metrics.throttled.inc();
                health.wait_turn(turn).await;
            }
            // Held until the answer's head arrives; the semaphore is never closed.
            let _permit = if limited {
                health.in_flight.clone().acquire_owned().await.ok()
            } else {
                None
            };
            let res = sent.await.map_err(Into::into);
            health.record(match &res {
                Ok(r) => r.status().as_u16() == 429 || r.status().is_server_error(),
                Err(_) => true,
            });
            res
        })
    }
}

/// Backoff of the watches (all of one controller restart together after a failure): 0.5 s
/// doubling to 5 s, with jitter, reset by the next event. Shorter than kube-rs's default 30 s cap
/// so watches resume within seconds of the API server's return; during an outage the guard's
/// throttling bounds the restarts anyway.
pub fn watch_backoff() -> WatchBackoff {
    WatchBackoff { attempt: 0 }
}

pub struct WatchBackoff {
    attempt: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = Duration::from_millis(500)
            .saturating_mul(1 << self.attempt.min(4))
            .min(Duration::from_secs(5));
        self.attempt = self.attempt.saturating_add(1);
        Some(jittered(base))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `base` scaled by a random factor in [½, 1].
fn jittered(base: Duration) -> Duration {
    let r = getrandom::u32().unwrap_or(u32::MAX);
    base.mul_f64(0.5 + 0.5 * f64::from(r) / f64::from(u32::MAX))
}

/// Label of `articlesite_operator_watch_errors_total`: the API status code (`410` when the
/// watched resource version was compacted away), or `transport`.
pub fn watch_error_reason(e: &watcher::Error) -> String {
    match e {
        watcher::Error::WatchError(s) => s.code.to_string(),
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code.to_string(),
        watcher::Error::NoResourceVersion => "no_resource_version".into(),
        _ => "transport".into(),
    }
}

/// Asks the API server's `/readyz` every `PROBE_INTERVAL` and reports the answer on the
/// operator's `/readyz`. Runs until the process ends.
pub async fn probe(client: Client, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_reachable = true;
    loop {
        tick.tick().await;
        let reachable = match Request::get("/readyz").body(Vec::new()) {
            Ok(req) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, client.request_text(req)).await,
                Ok(Ok(body)) if body.trim() == "ok"
            ),
            Err(_) => false,
        };
        metrics.set_api_reachable(reachable);
        if reachable != was_reachable {
            if reachable {
                info!("API server reachable again");
            } else {
                warn!("API server unreachable or not ready");
            }
            was_reachable = reachable;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_only_after_errors_and_until_calm() {
        let h = ApiHealth::new(Arc::new(Metrics::default()));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(h.reserve_at(t0), Duration::ZERO, "healthy: unlimited");
        }
        h.record_error_at(t0);
        let burst = THROTTLED_BURST as usize;
        for _ in 0..burst {
            assert_eq!(h.reserve_at(t0), Duration::ZERO, "the burst goes at once");
        }
        // The next ones queue at the sustained rate.
        let step = 1.0 / THROTTLED_RATE;
        assert!((h.reserve_at(t0).as_secs_f64() - step).abs() < 1e-9);
        assert!((h.reserve_at(t0).as_secs_f64() - 2.0 * step).abs() < 1e-9);
        // After CALM without errors, unlimited again.
        assert_eq!(h.reserve_at(t0 + CALM), Duration::ZERO);
    }

    #[test]
    fn throttling_lasts_while_requests_queue_up_to_sticky() {
        let h = ApiHealth::new(Arc::new(Metrics::default()));
        let t0 = Instant::now();
        h.record_error_at(t0);
        // A queue of 20 s at the throttled rate.
        let last = (0..110).map(|_| h.reserve_at(t0)).max().unwrap();
        assert!(last >= Duration::from_secs(19));
        // 6 s after the last error the queue still waits: a new request queues behind it...
        assert!(h.reserve_at(t0 + Duration::from_secs(6)) > Duration::ZERO);
        // ...but not beyond STICKY without errors.
        assert_eq!(h.reserve_at(t0 + STICKY), Duration::ZERO);
    }

    #[test]
    fn watch_backoff_grows_to_five_seconds_and_resets() {
        let mut b = watch_backoff();
        let first = b.next().unwrap();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        let later: Vec<_> = (&mut b).take(10).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(later[9] >= Duration::from_millis(2500));
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(500));
    }

    #[test]
    fn sustained_rate_is_bounded() {
        let h = ApiHealth::new(Arc::new(Metrics::default()));
        let t0 = Instant::now();
        h.record_error_at(t0);
        // Requests whose reserved start falls within 3 s: burst + 3 s × rate (+1 at t = 3 s).
        let mut sent = 0;
        loop {
            let wait = h.reserve_at(t0);
            if wait > Duration::from_secs(3) {
                break;
            }
            sent += 1;
        }
        let ceiling = THROTTLED_BURST + 3.0 * THROTTLED_RATE + 1.0;
        assert!(f64::from(sent) <= ceiling, "{sent} > {ceiling}");
        assert!(f64::from(sent) >= ceiling - 1.0, "{sent}");
    }
}
