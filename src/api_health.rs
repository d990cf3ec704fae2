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
}

impl ApiHealth {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            bucket: Mutex::default(),
            metrics,
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

impl ApiHealth {
    /// When a request whose reserved turn is `turn` may go, as seen at `now`: `None` means at
    /// once. It waits for its turn only while throttling lasts: once the API server has gone
    /// `CALM` without errors, a queue built up while it failed is released, not worked off at
    /// the throttled rate (after a 429 burst that queue could otherwise hold requests for tens
    /// of seconds). While errors continue, the turn stands, so the rate bound holds.
    fn wake_at(&self, turn: Instant, now: Instant) -> Option<Instant> {
        if now >= turn {
            return None;
        }
        let b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let calm_at = b.last_error.map(|t| t + CALM)?;
        (calm_at > now).then(|| turn.min(calm_at))
    }

    async fn wait_turn(&self, turn: Instant) {
        while let Some(at) = self.wake_at(turn, Instant::now()) {
            tokio::time::sleep_until(at).await;
        }
    }
}

fn throttled(b: &Bucket, now: Instant) -> bool {
    b.last_error
        .is_some_and(|t| now.saturating_duration_since(t) < CALM)
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
        // The client's futures are lazy: nothing is sent before the first poll, after the wait.
        let sent = self.inner.call(req);
        let health = self.health.clone();
        Box::pin(async move {
            if !wait.is_zero() {
                health.metrics.throttled.inc();
                health.wait_turn(turn).await;
            }
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
    fn queued_requests_are_released_when_errors_stop() {
        let h = ApiHealth::new(Arc::new(Metrics::default()));
        let t0 = Instant::now();
        h.record_error_at(t0);
        // A burst of 200 requests queues up to 38 s at the throttled rate.
        let last_turn = (0..200).map(|_| t0 + h.reserve_at(t0)).max().unwrap();
        assert!(last_turn >= t0 + Duration::from_secs(30));
        // It waits until CALM after the last error, not until its turn...
        assert_eq!(h.wake_at(last_turn, t0), Some(t0 + CALM));
        assert_eq!(h.wake_at(last_turn, t0 + CALM), None);
        // ...unless errors continue: then the turn stands (the rate bound holds).
        h.record_error_at(t0 + Duration::from_secs(4));
        assert_eq!(
            h.wake_at(last_turn, t0 + CALM),
            Some(t0 + Duration::from_secs(4) + CALM)
        );
        let near = t0 + Duration::from_secs(6);
        assert_eq!(h.wake_at(near, t0 + CALM), Some(near));
        assert_eq!(h.wake_at(near, near), None);
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
