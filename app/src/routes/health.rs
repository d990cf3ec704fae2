//! Probes. `/livez`: the process serves HTTP. `/readyz`: not draining, migrations applied,
//! and the primary answers, or, while it fails, the read replica can serve reads within
//! its staleness bound (ready but degraded: taking the pod out of its Service would turn
//! the reads it can still answer into failures).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db::failover::{self, Staleness};
use crate::db::{self, DbError};
use crate::http::CACHE_NONE;
use crate::state::AppState;

/// The kubelet waits 2 s for `/readyz` (`timeoutSeconds` of the operator's Deployment) and
/// counts a later answer as a failure: two of them take the pod out of its Service. So the
/// answer comes within that, whatever the database does: a hung primary (frozen, cut off)
/// gets `PRIMARY_CHECK`, the replica `REPLICA_CHECK` after it.
const PRIMARY_CHECK: Duration = Duration::from_millis(800);
const REPLICA_CHECK: Duration = Duration::from_millis(800);

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
    let limit = state.config.db_timeout;
    // While the breaker is open its probe asks the primary every 250 ms; asking again here
    // would only spend the kubelet's time on a primary known to be down.
    let primary = match state.breaker.check() {
        Err(e) => Err(e),
        Ok(()) => failover::run_on(&state.pool, limit.min(PRIMARY_CHECK), db::ready).await,
    };
    match primary {
        Ok(true) => {
            state.failover.primary_answered();
            // The database answered: requests need not wait for the breaker's own probe.
            if state.breaker.close() {
                tracing::info!("database reachable again: circuit breaker closed");
            }
            probe(StatusCode::OK, json!({ "status": "ready" }))
        }
        Ok(false) => unready("database schema is older than this server"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            match replica_can_serve(&state).await {
                Some(staleness) => probe(
                    StatusCode::OK,
                    json!({
                        "status": "ready",
                        "degraded": "primary unreachable: reads from the replica, writes answer 503",
                        "replica": staleness.to_string(),
                    }),
                ),
                None if e.is_failover() || state.failover.refused_recently(limit * 2) => {
                    unready("database failing over")
                }
                None => unready("database unreachable"),
            }
        }
    }
}

/// The replica's staleness if it can answer reads now.
async fn replica_can_serve(state: &AppState) -> Option<Staleness> {
    let (pool, replica) = (
        state.read_pool.as_ref()?,
        state.config.read_replica.as_ref()?,
    );
    let since_primary = state.failover.since_primary_answered();
    let status = failover::run_on(
        pool,
        state.config.db_timeout.min(REPLICA_CHECK),
        async |c| failover::replica_status(c).await,
    )
    .await
    .map_err(|e: DbError| tracing::warn!(error = %e, "read replica unreachable"))
    .ok()?;
    let staleness = Staleness::assess(&status, since_primary);
    staleness.within(replica.max_lag).then_some(staleness)
}
