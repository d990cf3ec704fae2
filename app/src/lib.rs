//! The article server: a JSON API, server-rendered pages and an Atom feed over PostgreSQL,
//! built to run as many replicas and to be stopped at any time.

pub mod auth;
pub mod cache;
pub mod coherence;
pub mod compress;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod middleware;
pub mod render;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod token;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

pub use config::Config;
use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid database settings: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// How long the server waits for its pool's connections before it reports ready anyway
/// (the others are opened when requests need them).
const WARM_LIMIT: Duration = Duration::from_secs(10);

/// Applies migrations, retrying until they succeed or the server stops, then warms the
/// pool. Until then `/readyz` reports not ready; the server already answers `/livez`.
async fn migrate_until_done(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let connect_limit = state.config.db_timeout.max(Duration::from_secs(5));
        let attempt = async {
            match tokio::time::timeout(connect_limit, db::migrate_connect(&state.config)).await {
                Ok(Ok(conn)) => db::migrate_on(conn).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(sqlx::migrate::MigrateError::Execute(
                    sqlx::Error::PoolTimedOut,
                )),
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            result = attempt => match result {
                Ok(()) => {
                    tracing::info!(version = db::latest_migration(), "database schema is up to date");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "migrations failed; retrying"),
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    // Ready only with a warm pool: a request should not wait for a login.
    let wanted = state.config.pool_min;
    tokio::select! {
        _ = stop.wait_for(|s| *s) => return,
        opened = db::warm(&state.pool, wanted, WARM_LIMIT) => {
            tracing::info!(opened, wanted, "database pool warmed");
        }
    }
    state.lifecycle.set_migrated();
    render_stale(&state, &mut stop).await;
}

/// Renders again, in the background, the articles whose stored HTML is missing or from an
/// older renderer (pages show a fresh rendering of them meanwhile). Replicas starting
/// together may do the same rows; the result is the same and the write is cheap.
async fn render_stale(state: &AppState, stop: &mut watch::Receiver<bool>) {
    let mut done = 0u64;
    while !*stop.borrow() {
        let batch = match state
            .db(async |c| db::articles::stale_renders(c, render::RENDER_VERSION, 100).await)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for articles to render; later starts will");
                return;
            }
        };
        if batch.is_empty() {
            break;
        }
        for (id, version, body) in batch {
            let rendered = render::render_body(&body);
            if let Err(e) = state
                .db(async |c| db::articles::store_render(c, id, version, &rendered).await)
                .await
            {
                tracing::warn!(error = %e, "cannot store a rendering; later starts will");
                return;
            }
            done += 1;
        }
    }
    if done > 0 {
        tracing::info!(articles = done, "stored renderings brought up to date");
    }
}

/// `SELECT 1` on `pool` within `limit`, through a connection that is closed if it fails
/// (a probe must not leave a hung connection in the pool).
async fn ping(pool: &sqlx::PgPool, limit: Duration) -> Result<(), db::DbError> {
    db::failover::run_on(pool, limit, async |c| {
        sqlx::query("SELECT 1")
            .execute(c)
            .await
            .map(|_| ())
            .map_err(db::DbError::from)
    })
    .await
}

/// While a circuit breaker is open (the primary's or the read replica's), checks its
/// database every `PROBE_INTERVAL` and closes the breaker as soon as it answers.
async fn probe_database(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(db::breaker::PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        state
            .metrics
            .db_circuit_open
            .set(i64::from(state.breaker.is_open()));
        let limit = state.config.db_timeout;
        if state.breaker.is_open() && ping(&state.pool, limit).await.is_ok() {
            state.failover.primary_answered();
            if state.breaker.close() {
                state.metrics.db_circuit_open.set(0);
                tracing::info!("database reachable again: circuit breaker closed");
            }
        }
        if let Some(read_pool) = &state.read_pool
            && state.replica_breaker.is_open()
            && ping(read_pool, limit).await.is_ok()
            && state.replica_breaker.close()
        {
            tracing::info!("read replica reachable again: its circuit breaker closed");
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then: reports not-ready at once, keeps
/// serving for the drain delay, stops accepting, finishes requests in flight and the job
/// being run, closes the pool, and returns, all within the shutdown timeout.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let state = Arc::new(AppState::new(config)?);
    let pool = state.pool.clone();
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut migrator = tokio::spawn(migrate_until_done(state.clone(), stop_rx.clone()));
    let mut worker = tokio::spawn(jobs::run_worker(state.clone(), stop_rx.clone()));
    let mut listener_task = tokio::spawn(coherence::run_listener(state.clone(), stop_rx.clone()));
    let mut probe = tokio::spawn(probe_database(state.clone(), stop_rx.clone()));
    let app = routes::router(state.clone());
    let limits = server::ConnectionLimits {
        header_read_timeout: state.config.header_read_timeout,
        max_connections: state.config.max_connections,
    };
    let mut server = tokio::spawn(server::serve(
        listener,
        app,
        limits,
        state.metrics.connections.clone(),
        stop_rx.clone(),
    ));
    tracing::info!(addr = ?state.config.listen_addr, cache = state.cache.enabled(), "article server started");

    tokio::select! {
        _ = shutdown => {}
        result = &mut server => {
            // The accept loop only returns early if its task failed.
            let _ = stop_tx.send(true);
            pool.close().await;
            if let Some(r) = &state.read_pool {
                r.close().await;
            }
            return Err(RunError::Serve(std::io::Error::other(format!(
                "the accept loop stopped: {result:?}"
            ))));
        }
    }

    let deadline = Instant::now() + state.config.shutdown_timeout;
    state.lifecycle.start_draining();
    tracing::info!(
        drain_ms = state.config.drain_delay.as_millis() as u64,
        "draining: reporting not ready"
    );
    tokio::time::sleep(state.config.drain_delay).await;
    tracing::info!("no longer accepting connections; finishing requests in flight");
    let _ = stop_tx.send(true);

    // Keep a moment for closing the pool before the deadline.
    let finish_by = deadline
        .checked_sub(Duration::from_millis(500))
        .unwrap_or(deadline);
    let finished = tokio::time::timeout_at(finish_by, async {
        let _ = (&mut server).await;
        let _ = (&mut worker).await;
        let _ = (&mut migrator).await;
        let _ = (&mut listener_task).await;
        let _ = (&mut probe).await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!("shutdown timeout reached with work still in flight; stopping anyway");
        server.abort();
        worker.abort();
        migrator.abort();
        listener_task.abort();
        probe.abort();
    }
    let close_all = async {
        pool.close().await;
        if let Some(r) = &state.read_pool {
            r.close().await;
        }
    };
    if tokio::time::timeout_at(deadline, close_all).await.is_err() {
        tracing::warn!("database pool did not close in time");
    }
    tracing::info!("stopped");
    Ok(())
}
