//! The write fence: a leader sends a write to the API server only while its Lease is valid.
//!
//! `Fence` holds the instant until which this replica may write: the send time of its last
//! successful Lease write plus the renew deadline (`leader`). `FenceLayer` sits in the client
//! under every other layer and lets a write (any method but GET and HEAD) go only while the fence
//! is open, checked at every poll of the request, just before it is handed on: a request that
//! waited (for the throttle, a connection, a paused process) past the deadline is dropped
//! unsent, and hyper drops a request whose caller went away before it was written. So the
//! reconcile pipeline needs no checks of its own: a leader whose renew deadline has passed sends
//! nothing, whatever it was doing.
//!
//! Both clocks bound the fence: the monotonic clock (which keeps running while the process is
//! stopped) and the wall clock (which, unlike the monotonic one, also counts a suspended
//! machine's sleep once it resumes). Whichever says the deadline has passed closes it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Method, Request};
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

/// Until when writes may be sent, on both clocks; `None`: closed.
#[derive(Clone, Copy, Debug)]
struct Until {
    at: Instant,
    wall: SystemTime,
}

/// Whether this replica may write now. Shared by the elector (which opens and extends it) and
/// the client's `FenceLayer`.
#[derive(Debug)]
pub struct Fence {
    until: Mutex<Option<Until>>,
    /// Without leader election the fence never closes.
    always_open: bool,
}

/// A write refused because the fence was closed (the Lease is not held, or its renew deadline
/// passed). The reconcile that sent it fails; it is never retried by the client.
#[derive(Debug, thiserror::Error)]
#[error("write not sent: this replica does not hold the leader Lease (renew deadline passed)")]
pub struct FenceClosed;

impl Fence {
    /// A fence that is always open: one process without leader election.
    pub fn always_open() -> Arc<Self> {
        Arc::new(Self {
            until: Mutex::new(None),
            always_open: true,
        })
    }

    /// A closed fence, opened by the elector when it takes the Lease.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            until: Mutex::new(None),
            always_open: false,
        })
    }

    /// Writes may go until `valid` from `sent` (monotonic) and `sent_wall` (wall clock), the
    /// send time of the Lease write that made or kept this replica the leader.
    pub fn open_until(&self, sent: Instant, sent_wall: SystemTime, valid: Duration) {
        *self.lock() = Some(Until {
            at: sent + valid,
            wall: sent_wall + valid,
        });
    }

    /// No write goes from now on (until the fence is opened again).
    pub fn close(&self) {
        *self.lock() = None;
    }

    /// The monotonic deadline while open, `None` when closed (or always open).
    pub fn deadline(&self) -> Option<Instant> {
        self.open_now().then(|| self.lock().map(|u| u.at)).flatten()
    }

    /// Whether a write may be sent at this moment.
    pub fn open_now(&self) -> bool {
        self.always_open || self.open_at(Instant::now(), SystemTime::now())
    }

    fn open_at(&self, now: Instant, wall: SystemTime) -> bool {
        self.lock().is_some_and(|u| now < u.at && wall < u.wall)
    }

    /// Time left before the fence closes (zero when closed; `None` when always open).
    pub fn remaining(&self) -> Option<Duration> {
        if self.always_open {
            return None;
        }
        let now = Instant::now();
        let wall = SystemTime::now();
        let until = *self.lock();
        Some(until.map_or(Duration::ZERO, |u| {
            u.at.saturating_duration_since(now)
                .min(u.wall.duration_since(wall).unwrap_or_default())
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Until>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drives `inner` only while `fence` is open: checked before every poll, and woken at the
/// deadline. Once the fence is closed `inner` is dropped without another poll.
pub struct WhileOpen<F> {
    fence: Arc<Fence>,
    inner: Option<Pin<Box<F>>>,
    wake: Option<(Instant, Pin<Box<Sleep>>)>,
}

/// `fut` (a request, lazy until polled) is polled only while `fence` is open; see `WhileOpen`.
pub fn while_open<F: Future>(fence: Arc<Fence>, fut: F) -> WhileOpen<F> {
    WhileOpen {
        fence,
        inner: Some(Box::pin(fut)),
        wake: None,
    }
}

impl<F: Future> Future for WhileOpen<F> {
    type Output = Result<F::Output, FenceClosed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.fence.open_now() {
            this.inner = None;
            return Poll::Ready(Err(FenceClosed));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(FenceClosed));
        };
        if let Poll::Ready(out) = inner.as_mut().poll(cx) {
            this.inner = None;
            return Poll::Ready(Ok(out));
        }
        // Wake at the deadline (re-armed when a renewal moved it), to drop the request then.
        if let Some(deadline) = this.fence.deadline() {
            let stale = this.wake.as_ref().is_none_or(|(at, _)| *at != deadline);
            if stale {
                this.wake = Some((deadline, Box::pin(tokio::time::sleep_until(deadline))));
            }
            if let Some((_, sleep)) = this.wake.as_mut()
                && sleep.as_mut().poll(cx).is_ready()
            {
                this.inner = None;
                return Poll::Ready(Err(FenceClosed));
            }
        }
        Poll::Pending
    }
}

/// A request that only reads.
fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// Tower layer of the client: writes go only while the fence is open (see the module docs).
/// Add it first (innermost), under the throttling guard, so that the check comes last.
#[derive(Clone)]
pub struct FenceLayer {
    fence: Arc<Fence>,
    refused: Option<Counter>,
}

impl FenceLayer {
    /// `refused` counts the writes the fence dropped.
    pub fn new(fence: Arc<Fence>, refused: Option<Counter>) -> Self {
        Self { fence, refused }
    }
}

impl<S> Layer<S> for FenceLayer {
    type Service = FenceService<S>;

    fn layer(&self, inner: S) -> FenceService<S> {
        FenceService {
            inner,
            layer: self.clone(),
        }
    }
}

pub struct FenceService<S> {
    inner: S,
    layer: FenceLayer,
}

impl<S, B> Service<Request<B>> for FenceService<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Fenced<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let read = is_read(req.method());
        // Lazy: nothing is sent before the first poll, which `while_open` makes only when open.
        let sent = self.inner.call(req);
        if read || self.layer.fence.always_open {
            Fenced::Read(Box::pin(sent))
        } else {
            Fenced::Write(
                while_open(self.layer.fence.clone(), sent),
                self.layer.refused.clone(),
            )
        }
    }
}

/// The answer of a request through `FenceService`: reads as they are, writes while open.
pub enum Fenced<F> {
    Read(Pin<Box<F>>),
    Write(WhileOpen<F>, Option<Counter>),
}

impl<F, T, E> Future for Fenced<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Fenced::Read(sent) => sent.as_mut().poll(cx).map_err(Into::into),
            Fenced::Write(sent, refused) => match Pin::new(sent).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(answer)) => Poll::Ready(answer.map_err(Into::into)),
                Poll::Ready(Err(closed)) => {
                    if let Some(c) = refused {
                        c.inc();
                    }
                    Poll::Ready(Err(closed.into()))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_opens_for_the_validity_and_closes_on_either_clock() {
        let f = Fence::closed();
        assert!(!f.open_now());
        let now = Instant::now();
        let wall = SystemTime::now();
        f.open_until(now, wall, Duration::from_secs(10));
        assert!(f.open_at(now + Duration::from_secs(9), wall));
        assert!(!f.open_at(now + Duration::from_secs(10), wall), "monotonic");
        assert!(
            !f.open_at(now, wall + Duration::from_secs(10)),
            "wall clock (a suspended machine)"
        );
        let left = f.remaining().expect("election fence");
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10));
        f.close();
        assert!(!f.open_at(now, wall));
        assert_eq!(f.remaining(), Some(Duration::ZERO));
        assert!(Fence::always_open().open_now());
        assert_eq!(Fence::always_open().remaining(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_dropped_unpolled_once_the_deadline_passes() {
        let f = Fence::closed();
        f.open_until(Instant::now(), SystemTime::now(), Duration::from_secs(2));
        // A request that would go out after 5 s (waiting for a connection, say).
        let polled_late = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = polled_late.clone();
        let start = Instant::now();
        let req = async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        };
        let out = while_open(f.clone(), req).await;
        assert!(out.is_err());
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "dropped at the deadline"
        );
        assert!(!polled_late.load(std::sync::atomic::Ordering::SeqCst));
        // Closed: not even polled once (tokio's timeout with no time left polls once).
        let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = polled.clone();
        let out = while_open(f, async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        })
        .await;
        assert!(out.is_err() && !polled.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_moves_the_deadline_of_a_waiting_request() {
        let f = Fence::closed();
        f.open_until(Instant::now(), SystemTime::now(), Duration::from_secs(2));
        let renew = f.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            renew.open_until(Instant::now(), SystemTime::now(), Duration::from_secs(2));
        });
        let req = tokio::time::sleep(Duration::from_millis(2500));
        assert!(while_open(f, req).await.is_ok());
    }
}
