//! Cross-cutting request handling: request log and metrics, load shedding, the request
//! timeout, and `Connection: close` while draining.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::ApiError;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::AppState;

/// One JSON log line per request, inside a span carrying the request id, and the request
/// metrics. The route label is the matched pattern, so paths cannot blow up cardinality.
pub async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
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
    let res = next.run(req).instrument(span.clone()).await;
    state.metrics.in_flight.dec();
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
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
