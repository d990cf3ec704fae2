//! Cross-cutting request handling: request log and metrics, load shedding, the request
//! timeout, and `Connection: close` while draining.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::auth::{Credentials, credentials};
use crate::error::{ApiError, Problem};
use crate::metrics::{RequestLabels, RouteLabels, method_label};
use crate::render;
use crate::state::AppState;

/// What `observe` records when a request ends, whether it was answered or dropped.
struct Observation {
    state: Arc<AppState>,
    method: &'static str,
    route: String,
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
/// is still counted and logged (as 499), and leaves the in-flight gauge.
pub async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, route = %route);
    state.metrics.in_flight.inc();
    let mut observation = Observation {
        state,
        method,
        route,
        started: Instant::now(),
        span: span.clone(),
        finished: false,
    };
    let res = next.run(req).instrument(span).await;
    observation.finish(res.status().as_u16());
    res
}

/// Site routes answer 503 until migrations have run: before that every query would fail.
pub async fn require_schema(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.lifecycle.migrated() {
        next.run(req).await
    } else {
        ApiError::NotReady.into_response()
    }
}

/// Refuses work beyond capacity with 503 and Retry-After instead of queueing it.
pub async fn shed(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match state.capacity.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            state.metrics.shed.inc();
            ApiError::Overloaded.into_response()
        }
    }
}

/// Bounds every request, body reading included. A problem body and Retry-After tell the
/// client this is transient.
pub async fn timeout(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// While draining, ask each client to close its connection after this response, so its
/// next request opens a new connection that lands on a ready replica.
pub async fn drain_close(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    if state.lifecycle.draining() {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// One rule for a wrong token, on every site route, reads included: a request that sends
/// `Authorization` with anything but the write token is refused with 401, never silently
/// served as anonymous (a misconfigured client learns at once). No token is fine for reads.
pub async fn reject_wrong_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if credentials(req.headers(), &state.token) == Credentials::Invalid {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Paths a reader's browser visits: everything but the API, the probes and `/metrics`.
pub fn is_reader_path(path: &str) -> bool {
    !(path == "/api"
        || path.starts_with("/api/")
        || matches!(path, "/livez" | "/readyz" | "/metrics"))
}

/// Errors on reader paths (a 404, a bad cursor, the database away, a wrong method) are
/// answered as an HTML page with the same status and headers; the API keeps its problem
/// documents.
pub async fn html_errors(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    if !is_reader_path(&path) {
        return res;
    }
    let Some(problem) = res.extensions().get::<Problem>().cloned() else {
        return res;
    };
    let (mut parts, _) = res.into_parts();
    let page = match render::error_page(state.site(), problem.status, &path, &problem.detail) {
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

/// Security headers on every response: a Content-Security-Policy that allows only what
/// the pages use (the one inline style sheet, by hash; images from this site and https;
/// the search form), no framing, no MIME sniffing, no full referrer to other sites.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(render::content_security_policy()) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
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
    res
}
