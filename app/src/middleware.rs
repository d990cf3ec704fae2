//! Cross-cutting request handling, as two tower layers: [`ObserveLayer`] (request log and
//! metrics, HTML error pages on reader paths, security headers, Server-Timing,
//! `Connection: close` while draining) around every route, and [`GuardLayer`] (load
//! shedding, the schema check, the wrong-token rule and the request timeout) around the
//! site routes.
//!
//! They are written as tower services rather than `axum::middleware::from_fn`: a `from_fn`
//! layer clones the whole stack below it on every request (each level a boxed service), and
//! with nine of them that cloning, allocating and freeing was the largest cost of a cache
//! hit (see docs/benchmarks.md, "Where the time goes"). Every check before the handler is
//! synchronous, so each layer calls its inner service at once and only wraps its future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::{Credentials, credentials};
use crate::error::{ApiError, Problem};
use crate::metrics::{RequestLabels, Route, RouteLabels, method_label};
use crate::render;
use crate::state::AppState;

/// The future of both layers' services.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

fn ready(res: Response) -> ResponseFuture {
    Box::pin(std::future::ready(Ok(res)))
}

/// What `Observe` records when a request ends, whether it was answered or dropped.
struct Observation {
    state: Arc<AppState>,
    method: &'static str,
    route: Route,
    started: Instant,
    span: tracing::Span,
    finished: bool,
}

impl Observation {
    fn finish(&mut self, status: u16) {
        if self.finished {
            return;
        }
        self.finished = true;
        let elapsed = self.started.elapsed();
        let metrics = &self.state.metrics;
        metrics.in_flight.dec();
        self.span.in_scope(|| {
            if status == STATUS_CLIENT_CLOSED {
                tracing::info!(
                    status,
                    latency_ms = elapsed.as_secs_f64() * 1000.0,
                    "request abandoned: the client closed the connection first"
                );
            } else {
                tracing::info!(
                    status,
                    latency_ms = elapsed.as_secs_f64() * 1000.0,
                    "request"
                );
            }
        });
        metrics
            .latency
            .get_or_create(&RouteLabels {
                method: self.method,
                route: self.route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method: self.method,
                route: std::mem::take(&mut self.route),
                status,
            })
            .inc();
    }
}

/// The status recorded for a request whose client went away before the response: hyper
/// then drops the handler's future, and only `Drop` sees it (nginx's 499).
pub const STATUS_CLIENT_CLOSED: u16 = 499;

impl Drop for Observation {
    fn drop(&mut self) {
        self.finish(STATUS_CLIENT_CLOSED);
    }
}

/// One JSON log line per request, inside a span carrying the request id, and the request
/// metrics. The route label is the matched pattern and the method one of the standard
/// ones or `other`, so clients cannot blow up cardinality. A request the client abandons
/// is still counted and logged (as 499), and leaves the in-flight gauge. On the way out:
/// HTML error pages for reader paths, the security headers, the server's time
/// (`Server-Timing`) and `Connection: close` while draining.
#[derive(Clone)]
pub struct ObserveLayer {
    state: Arc<AppState>,
}

impl ObserveLayer {
    pub fn new(state: Arc<AppState>) -> Self {
        ObserveLayer { state }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            state: self.state.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    state: Arc<AppState>,
    inner: S,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Error = Infallible>,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        let method = method_label(req.method());
        let route = Route::new(req.extensions().get::<MatchedPath>());
        let span = {
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("request", request_id = %request_id, method = %method, route = %route.as_str())
        };
        // Only an error on a reader path needs the path again (a cheap, shared copy).
        let reader_uri = is_reader_path(req.uri().path()).then(|| req.uri().clone());
        let state = self.state.clone();
        state.metrics.in_flight.inc();
        let mut observation = Observation {
            state: state.clone(),
            method,
            route,
            started: Instant::now(),
            span: span.clone(),
            finished: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = match fut.instrument(span).await {
                Ok(r) => r.into_response(),
                Err(never) => match never {},
            };
            let mut res = match reader_uri {
                Some(uri) => html_errors(&state, res, &uri),
                None => res,
            };
            security_headers(&mut res);
            server_timing(&mut res, observation.started);
            if state.lifecycle.draining() {
                // Ask the client to close after this response, so its next request opens
                // a new connection that lands on a ready replica.
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            observation.finish(res.status().as_u16());
            Ok(res)
        })
    }
}

static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// The server's own time for the request (W3C Server-Timing, in milliseconds): a client
/// that waited much longer waited on the network or a queue before the server, and a load
/// test can tell which (tests/load/reads.lua).
fn server_timing(res: &mut Response, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.1}")) {
        res.headers_mut().insert(SERVER_TIMING.clone(), v);
    }
}

/// Paths a reader's browser visits: everything but the API, the probes and `/metrics`.
pub fn is_reader_path(path: &str) -> bool {
    !(path == "/api" || path.starts_with("/api/") || is_ops_path(path))
}

/// The probes and `/metrics`: neither shed nor queued behind site traffic, and they
/// ignore `Authorization`.
fn is_ops_path(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/metrics")
}

/// Errors on reader paths (a 404, a bad cursor, the database away, a wrong method) are
/// answered as an HTML page with the same status and headers; the API keeps its problem
/// documents.
fn html_errors(state: &AppState, res: Response, uri: &Uri) -> Response {
    let Some(problem) = res.extensions().get::<Problem>().cloned() else {
        return res;
    };
    let (mut parts, _) = res.into_parts();
    let path = uri.path();
    let page = match render::error_page(
        state.site(),
        problem.status,
        &problem.kind,
        path,
        &problem.detail,
    ) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot render the error page");
            problem.title.to_owned()
        }
    };
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(render::HTML));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(page))
}

/// Built once: parsing the policy for every response showed in the profile.
static CSP: LazyLock<Option<HeaderValue>> =
    LazyLock::new(|| HeaderValue::from_str(render::content_security_policy()).ok());

/// Security headers on every response: a Content-Security-Policy that allows only what
/// the pages use (the one inline style sheet, by hash; images from this site and https;
/// the search form), no framing, no MIME sniffing, no full referrer to other sites.
fn security_headers(res: &mut Response) {
    let h = res.headers_mut();
    if let Some(csp) = CSP.as_ref() {
        h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    );
}

/// Around the site routes (the probes and `/metrics` pass straight through), in this
/// order:
/// - work beyond capacity is refused with 503 and Retry-After instead of queueing;
/// - until migrations have run every query would fail: 503;
/// - one rule for a wrong token, on every site route, reads included: a request that
///   sends `Authorization` with anything but the write token is refused with 401, never
///   silently served as anonymous (a misconfigured client learns at once); no token is
///   fine for reads;
/// - every request is bounded in time, body reading included (503 with a problem body
///   and Retry-After: the client knows it is transient).
#[derive(Clone)]
pub struct GuardLayer {
    state: Arc<AppState>,
}

impl GuardLayer {
    pub fn new(state: Arc<AppState>) -> Self {
        GuardLayer { state }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            state: self.state.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    state: Arc<AppState>,
    inner: S,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Error = Infallible>,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        if is_ops_path(req.uri().path()) {
            let fut = self.inner.call(req);
            return Box::pin(async move {
                match fut.await {
                    Ok(r) => Ok(r.into_response()),
                    Err(never) => match never {},
                }
            });
        }
        let state = &self.state;
        let Ok(permit) = state.capacity.clone().try_acquire_owned() else {
            state.metrics.shed.inc();
            return ready(ApiError::Overloaded.into_response());
        };
        if !state.lifecycle.migrated() {
            return ready(ApiError::NotReady.into_response());
        }
        if credentials(req.headers(), &state.token) == Credentials::Invalid {
            return ready(ApiError::Unauthorized.into_response());
        }
        let limit = state.config.request_timeout;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(limit, fut).await {
                Ok(Ok(r)) => Ok(r.into_response()),
                Ok(Err(never)) => match never {},
                Err(_) => Ok(ApiError::Timeout.into_response()),
            }
        })
    }
}
