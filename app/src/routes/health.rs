//! Probes. `/livez`: the process serves HTTP. `/readyz`: not draining, migrations applied,
//! and the database answers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db;
use crate::http::CACHE_NONE;
use crate::state::AppState;

fn probe(status: StatusCode, body: serde_json::Value) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_NONE));
    res
}

pub async fn livez() -> Response {
    probe(StatusCode::OK, json!({ "status": "alive" }))
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let unready = |reason: &str| {
        probe(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "not ready", "reason": reason }),
        )
    };
    if state.lifecycle.draining() {
        return unready("shutting down");
    }
    if !state.lifecycle.migrated() {
        return unready("migrations not applied yet");
    }
    match db::ready(&state.pool, state.config.db_timeout).await {
        Ok(true) => {
            // The database answered: requests need not wait for the breaker's own probe.
            if state.breaker.close() {
                tracing::info!("database reachable again: circuit breaker closed");
            }
            probe(StatusCode::OK, json!({ "status": "ready" }))
        }
        Ok(false) => unready("database schema is older than this server"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            unready("database unreachable")
        }
    }
}
