//! `/metrics` in the OpenMetrics text format.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::db::jobs;
use crate::error::ApiError;
use crate::metrics::StateLabels;
use crate::state::AppState;

pub async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let m = &state.metrics;
    let size = i64::from(state.pool.size());
    let idle = i64::try_from(state.pool.num_idle()).unwrap_or(i64::MAX);
    m.pool_connections
        .get_or_create(&StateLabels { state: "idle" })
        .set(idle);
    m.pool_connections
        .get_or_create(&StateLabels { state: "in_use" })
        .set((size - idle).max(0));
    m.cache_bytes
        .set(i64::try_from(state.cache.bytes()).unwrap_or(i64::MAX));
    m.cache_entries
        .set(i64::try_from(state.cache.len()).unwrap_or(i64::MAX));
    m.db_circuit_open.set(i64::from(state.breaker.is_open()));
    // A scrape while the database is away still answers, with the last known depth.
    match state.db(async |c| jobs::depth(c).await).await {
        Ok(d) => {
            m.jobs_queue
                .get_or_create(&StateLabels { state: "pending" })
                .set(d.pending);
            m.jobs_queue
                .get_or_create(&StateLabels { state: "due" })
                .set(d.due);
        }
        Err(e) => tracing::debug!(error = %e, "job queue depth unavailable"),
    }
    let body = m.encode().map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut res = body.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(res)
}
