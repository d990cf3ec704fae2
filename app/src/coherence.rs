//! Keeps every replica's cache coherent. A trigger on `articles` (migration 0004) runs
//! `pg_notify('articles_changed', slug)` inside each writing transaction, so PostgreSQL
//! delivers it at commit and never for a rollback, to every listening replica. Each replica
//! holds one dedicated listening connection (never through a transaction pooler, which
//! cannot LISTEN) and drops the article's entries and every list entry on each notification.
//!
//! A notification sent while the listener is disconnected is lost, so: when the connection
//! drops (or a heartbeat `SELECT 1` fails or hangs, for a half-open socket that would
//! otherwise block forever), the cache is suspended (nothing served fresh, entries kept for
//! stale-if-error); once subscribed again it is cleared and serves again.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::db;
use crate::state::AppState;

pub const CHANNEL: &str = "articles_changed";
/// How often the idle listening connection is checked.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error("{0}")]
    Db(#[from] sqlx::Error),
    #[error("the listening connection did not answer in time")]
    Timeout,
}

async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, ListenError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| ListenError::Timeout)?
        .map_err(ListenError::from)
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs until `stop`: subscribes, applies notifications, and resubscribes with backoff
/// whenever the connection is lost.
pub async fn run_listener(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    if !state.cache.enabled() {
        return;
    }
    let pool = match db::listener_pool(&state.config, &state.failover) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot configure the change listener; the cache stays off");
            return;
        }
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match listen(&state, &pool, &mut stop).await {
            Ok(()) => break,
            Err((e, subscribed)) => {
                state.cache.suspend();
                if subscribed {
                    delay = Duration::from_millis(100);
                }
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                    "change listener lost: cache suspended until it is back");
            }
        }
        tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    pool.close().await;
}

/// One subscription. Returns `Ok` when stopped; on failure, the error and whether it had
/// subscribed (to reset the backoff).
async fn listen(
    state: &AppState,
    pool: &PgPool,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), (ListenError, bool)> {
    let limit = state.config.db_timeout;
    let mut listener = bounded(limit, PgListener::connect_with(pool))
        .await
        .map_err(|e| (e, false))?;
    listener.ignore_pool_close_event(true);
    bounded(limit, listener.listen(CHANNEL))
        .await
        .map_err(|e| (e, false))?;
    state.cache.resume();
    state.metrics.cache_resyncs.inc();
    tracing::info!(
        channel = CHANNEL,
        "listening for article changes; cache cleared"
    );
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = stopped(stop) => return Ok(()),
            _ = heartbeat.tick() => {
                bounded(limit, async { sqlx::query("SELECT 1").execute(&mut listener).await.map(|_| ()) })
                    .await
                    .map_err(|e| (e, true))?;
            }
            received = listener.try_recv() => match received {
                Ok(Some(n)) => {
                    state.cache.invalidate_article(n.payload());
                    state.metrics.cache_invalidations.inc();
                }
                Ok(None) => {
                    // sqlx reconnected and subscribed again by itself, but whatever was
                    // sent in between is lost.
                    state.cache.suspend();
                    state.cache.resume();
                    state.metrics.cache_resyncs.inc();
                    tracing::warn!("change listener reconnected; cache cleared");
                }
                Err(e) => return Err((e.into(), true)),
            },
        }
    }
}
