//! The connection pool, migrations and the bounded-time wrapper for every database call.

pub mod articles;
pub mod breaker;
pub mod failover;
pub mod jobs;

use std::future::Future;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::config::{Config, ReadReplicaConfig};
use failover::{Failover, Staleness};

/// Migrations compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database call timed out")]
    Timeout,
    #[error("no database connection available: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// No connection could be had within the time limit: nothing was sent to the server.
    #[error("no database connection within the time limit: {0}")]
    NoConnection(#[source] sqlx::Error),
    #[error("the database is known to be down (circuit breaker open)")]
    CircuitOpen,
    /// SQLSTATE 25006 on a write: the server turned read-only (demoted); the connection
    /// that saw it is closed.
    #[error(
        "the database server refused a write as read-only (SQLSTATE 25006): it was demoted, a failover is under way"
    )]
    ReadOnly(#[source] sqlx::Error),
    /// The write host answers, but only as a standby: the Service has not moved to the new
    /// primary yet (see `failover::refuse_standby`).
    #[error("the database host is a standby in recovery, not the primary: a failover is under way")]
    NotPrimary,
    /// The read replica is further behind than `ARTICLES_READ_MAX_LAG_SECONDS`.
    #[error("the read replica is too far behind the primary ({0})")]
    TooStale(Staleness),
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => DbError::Unavailable(e),
            // 57014: statement_timeout; 57P01..57P03: admin shutdown, crash, cannot connect now;
            // 53300: too many connections; 08xxx: connection exceptions; 3D000: no such
            // database; 28xxx: authentication. All mean "not reachable now", not a bug.
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("57014") => DbError::Timeout,
                Some(failover::READ_ONLY_SQLSTATE) => DbError::ReadOnly(e),
                Some(c)
                    if c.starts_with("57P")
                        || c.starts_with("08")
                        || c.starts_with("28")
                        || c == "53300"
                        || c == "3D000" =>
                {
                    DbError::Unavailable(e)
                }
                _ => DbError::Other(e),
            },
            _ => DbError::Other(e),
        }
    }
}

/// Errors that may mean the database is unreachable, for the circuit breaker and the
/// failover logic.
pub trait Outage {
    /// The database error inside, if this error came from the database.
    fn db_error(&self) -> Option<&DbError>;

    fn is_outage(&self) -> bool {
        self.db_error().is_some_and(DbError::is_outage)
    }
}

impl Outage for DbError {
    fn db_error(&self) -> Option<&DbError> {
        Some(self)
    }
}

/// Runs one database call (or transaction) with a deadline, so a slow or vanished
/// database turns into a quick 503 instead of a hung request.
pub async fn timed<T, E>(limit: Duration, fut: impl Future<Output = Result<T, E>>) -> Result<T, E>
where
    E: From<DbError>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(E::from(DbError::Timeout)),
    }
}

fn base_options(config: &Config) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(config
        .database
        .connect_options()?
        .application_name("article-server")
        // Statement logging would put article bodies into the log at info level.
        .disable_statement_logging())
}

/// A lazily connecting, bounded pool on the primary: the server starts even while the
/// database is down, and reconnects by itself when it returns. Connections to a standby
/// are refused as they are made, and idle ones are checked with a bounded ping (see
/// `failover`), so the pool follows the write Service through a failover. It keeps
/// `pool_min` connections open (see [`warm`]): a connection lost or retired is replaced in
/// the background, not by the request that needs one.
pub fn pool(config: &Config, failover: &Failover) -> Result<PgPool, sqlx::Error> {
    let ms = config.db_timeout.as_millis().to_string();
    let options = base_options(config)?.options([("statement_timeout", ms.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(config.pool_size)
        .min_connections(config.pool_min)
        .acquire_timeout(config.db_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .max_lifetime(Some(Duration::from_secs(1800)))
        .after_connect(failover.refuse_standby())
        // sqlx's own test waits for the ping without a limit of its own (a frozen host
        // would take the whole acquire timeout); ours is bounded.
        .test_before_acquire(false)
        .before_acquire(failover::bounded_ping(failover::ping_limit(
            config.db_timeout,
        )))
        .connect_lazy_with(options))
}

/// Opens up to `count` connections of `pool` at once and returns them to it idle, within
/// `limit`; says how many it opened. A new connection is a login (DNS, TCP, SCRAM), and
/// opened by a request it costs that request the wait: under full load a new replica whose
/// pool grew on demand answered some reads only after seconds (tests/full_load.rs). So the
/// server opens them before it reports ready, and the pool keeps them (`min_connections`).
pub async fn warm(pool: &PgPool, count: u32, limit: Duration) -> usize {
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..count {
        let pool = pool.clone();
        opening.spawn(async move { pool.acquire().await });
    }
    // Every connection is held until all are open, so that no acquire reuses one just
    // returned; on the deadline the tasks are dropped and what they opened goes back idle.
    let opened = tokio::time::timeout(limit, async {
        let mut held = Vec::new();
        while let Some(done) = opening.join_next().await {
            if let Ok(Ok(conn)) = done {
                held.push(conn);
            }
        }
        held.len()
    })
    .await;
    opened.unwrap_or_else(|_| pool.size() as usize)
}

/// The read-only fallback pool on the replicas' Service: smaller, used only while the
/// primary fails, and it accepts standbys (that is its point).
pub fn read_pool(config: &Config, replica: &ReadReplicaConfig) -> Result<PgPool, sqlx::Error> {
    let ms = config.db_timeout.as_millis().to_string();
    let options = config
        .database
        .read_options(replica)?
        .application_name("article-server-reads")
        .disable_statement_logging()
        .options([
            ("statement_timeout", ms.as_str()),
            ("default_transaction_read_only", "on"),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(config.pool_size.div_ceil(2))
        .min_connections(0)
        .acquire_timeout(config.db_timeout)
        .idle_timeout(Some(Duration::from_secs(60)))
        .max_lifetime(Some(Duration::from_secs(1800)))
        .test_before_acquire(false)
        .before_acquire(failover::bounded_ping(failover::ping_limit(
            config.db_timeout,
        )))
        .connect_lazy_with(options))
}

/// The change listener's own one-connection pool: it must not take one of the request
/// pool's connections, and it reconnects through it. A standby cannot `LISTEN`, so it
/// refuses standbys too.
pub fn listener_pool(config: &Config, failover: &Failover) -> Result<PgPool, sqlx::Error> {
    let ms = config.db_timeout.as_millis().to_string();
    let options = base_options(config)?.options([("statement_timeout", ms.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(config.db_timeout)
        .idle_timeout(None)
        .max_lifetime(None)
        .after_connect(failover.refuse_standby())
        .connect_lazy_with(options))
}

/// Opens the dedicated migration connection, with no statement timeout: the advisory-lock
/// wait and index builds may take a while.
pub async fn migrate_connect(config: &Config) -> Result<PgConnection, sqlx::migrate::MigrateError> {
    Ok(base_options(config)?.connect().await?)
}

/// Applies the embedded migrations. sqlx's Postgres migrator holds `pg_advisory_lock` for
/// the whole run, so replicas that start together take turns, and each after the first
/// finds the work done.
pub async fn migrate_on(mut conn: PgConnection) -> Result<(), sqlx::migrate::MigrateError> {
    // `run_direct` because `run`'s `Acquire` bound makes the future not `Send`.
    let result = MIGRATOR.run_direct(None, &mut conn, false).await;
    let _ = conn.close().await;
    result
}

/// The newest migration version compiled in; `/readyz` checks the database has it.
pub fn latest_migration() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// True when the database has every embedded migration applied.
pub async fn ready(conn: &mut PgConnection) -> Result<bool, DbError> {
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(conn)
            .await?;
    Ok(applied.unwrap_or(0) >= latest_migration())
}
