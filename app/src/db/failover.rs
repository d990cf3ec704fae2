//! Surviving a PostgreSQL failover. sqlx ignores `target_session_attrs` and has no
//! multi-host URLs, so the rules a libpq client would get from `target_session_attrs` are
//! kept here by hand:
//!
//! - The write pool refuses a connection to a server in recovery (or read-only) when it is
//!   made (`refuse_standby`): after the write Service moves, the pool never fills with
//!   connections to the old primary turned replica.
//! - A connection that saw SQLSTATE 25006, an I/O error, or whose call was cancelled by a
//!   timeout is closed instead of going back to the pool (`Held`): it reaches a demoted
//!   server, or a frozen one, and sqlx's ping on release has no time limit of its own.
//! - Idle connections are checked with a bounded ping (`bounded_ping`), so a frozen host
//!   costs a fraction of the acquire timeout per connection, not all of it.
//! - Reads may fall back to the replicas' Service while the primary fails, only within a
//!   staleness bound (`Staleness`).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use sqlx::pool::{PoolConnection, PoolConnectionMetadata};
use sqlx::postgres::{PgPool, Postgres};
use sqlx::{Connection, PgConnection};

use super::{DbError, Outage};

/// `read_only_sql_transaction`: a write reached a server that no longer accepts them.
pub const READ_ONLY_SQLSTATE: &str = "25006";

type Hook<'c, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// Why the write pool refused a connection.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused a write connection: the server {what}; ARTICLES_DATABASE_HOST must reach the primary \
     (a failover may be under way, the write Service has not moved yet)"
)]
pub struct NotPrimary {
    what: &'static str,
}

/// Time as milliseconds since the first call, 0 meaning never: fits an atomic.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

fn since(stamp: u64) -> Option<Duration> {
    (stamp != 0).then(|| Duration::from_millis(now_ms().saturating_sub(stamp)))
}

/// What the server knows about failovers as they happen, shared by its pools' hooks.
#[derive(Debug, Default)]
pub struct Failover {
    /// Connections refused because the write host was a standby.
    pub standby_refused: Counter,
    /// Connections closed after SQLSTATE 25006.
    pub read_only_closed: Counter,
    last_refusal: std::sync::Arc<AtomicU64>,
    last_primary_ok: AtomicU64,
}

impl Failover {
    /// The write pool's `after_connect` hook: one query per new connection.
    pub fn refuse_standby(
        &self,
    ) -> impl for<'c> Fn(&'c mut PgConnection, PoolConnectionMetadata) -> Hook<'c, ()>
    + Send
    + Sync
    + 'static {
        let refused = self.standby_refused.clone();
        let last = self.last_refusal.clone();
        move |conn, _meta| {
            let refused = refused.clone();
            let last = last.clone();
            Box::pin(async move {
                let (in_recovery, read_only): (bool, bool) = sqlx::query_as(
                    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
                )
                .fetch_one(&mut *conn)
                .await?;
                let what = match (in_recovery, read_only) {
                    (false, false) => return Ok(()),
                    (true, _) => "is in recovery (a standby)",
                    (false, true) => "is read-only (default_transaction_read_only is on)",
                };
                refused.inc();
                let now = now_ms();
                let previous = last.swap(now, Ordering::AcqRel);
                let why = NotPrimary { what };
                // sqlx retries every few ms until its acquire timeout: one line per episode.
                if previous == 0 || now.saturating_sub(previous) > 5_000 {
                    tracing::warn!(error = %why, "database host is not the primary");
                }
                Err(sqlx::Error::Configuration(Box::new(why)))
            })
        }
    }

    /// A standby was refused recently: a pool timeout now means "failing over", not "down".
    pub fn refused_recently(&self, window: Duration) -> bool {
        since(self.last_refusal.load(Ordering::Acquire)).is_some_and(|d| d <= window)
    }

    /// The primary answered (successfully or with a plain SQL error).
    pub fn primary_answered(&self) {
        self.last_primary_ok.store(now_ms(), Ordering::Release);
    }

    /// How long ago the primary last answered this server; `None` if it never did.
    pub fn since_primary_answered(&self) -> Option<Duration> {
        since(self.last_primary_ok.load(Ordering::Acquire))
    }
}

/// How long an idle connection's liveness ping may take before the connection is dropped
/// and another one tried: a quarter of the database timeout, within 50 ms..1 s.
pub fn ping_limit(db_timeout: Duration) -> Duration {
    (db_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The `before_acquire` hook: a ping that gives up after `limit` (a frozen host never
/// answers, and sqlx 0.9 sets no TCP keepalive).
pub fn bounded_ping(
    limit: Duration,
) -> impl for<'c> Fn(&'c mut PgConnection, PoolConnectionMetadata) -> Hook<'c, bool>
+ Send
+ Sync
+ 'static {
    move |conn, _meta| {
        Box::pin(async move {
            match tokio::time::timeout(limit, conn.ping()).await {
                Ok(Ok(())) => Ok(true),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    tracing::info!(
                        limit_ms = limit.as_millis() as u64,
                        "an idle database connection did not answer a ping: dropped"
                    );
                    Ok(false)
                }
            }
        })
    }
}

/// A pooled connection that goes back to the pool only when told to: dropped by an error
/// or a cancelled call (a timeout, a client gone), it is closed instead.
pub struct Held {
    conn: PoolConnection<Postgres>,
    keep: bool,
}

impl Held {
    pub async fn acquire(pool: &PgPool) -> Result<Held, sqlx::Error> {
        Ok(Held {
            conn: pool.acquire().await?,
            keep: false,
        })
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.keep {
            self.conn.close_on_drop();
        }
    }
}

/// Runs `op` on one connection of `pool`, all within `limit`. The connection returns to the
/// pool after a success or an ordinary SQL error, and is closed after a connection-level
/// error or SQLSTATE 25006 (or if this future is dropped half-way).
///
/// Waiting for a connection and running `op` fail differently on purpose: no connection
/// within the limit is `DbError::NoConnection` (nothing was sent, a write may be retried),
/// while a timeout once `op` runs is `DbError::Timeout` (a commit may have landed).
pub async fn run_on<T, E>(
    pool: &PgPool,
    limit: Duration,
    op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DbError> + Outage,
{
    let started = Instant::now();
    let mut held = match tokio::time::timeout(limit, Held::acquire(pool)).await {
        Ok(Ok(held)) => held,
        Ok(Err(e)) => return Err(E::from(DbError::NoConnection(e))),
        Err(_) => return Err(E::from(DbError::NoConnection(sqlx::Error::PoolTimedOut))),
    };
    let result = super::timed(limit.saturating_sub(started.elapsed()), op(held.conn())).await;
    let breaks = matches!(&result, Err(e) if e.db_error().is_some_and(DbError::breaks_connection));
    if !breaks {
        held.keep();
    }
    result
}

/// How far behind the primary a replica's answers may be, as measured just before a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// The read host is not in recovery (a promoted replica, or the primary itself).
    Primary,
    /// Streaming from a primary and everything received is applied: as current as the
    /// primary, give or take the network.
    Streaming,
    /// WAL received but not applied yet: behind by the age of the newest applied commit.
    Applying { behind: Duration },
    /// Not streaming (its primary is gone) and everything received is applied: it misses
    /// at most what was written since this server last reached the primary.
    Detached { since_primary: Duration },
    /// No way to tell (nothing replayed since start, primary never reached).
    Unknown,
}

impl Staleness {
    /// The bound on how old an answer may be; `None` when unknown.
    pub fn lag(&self) -> Option<Duration> {
        match *self {
            Staleness::Primary | Staleness::Streaming => Some(Duration::ZERO),
            Staleness::Applying { behind } => Some(behind),
            Staleness::Detached { since_primary } => Some(since_primary),
            Staleness::Unknown => None,
        }
    }

    pub fn within(&self, max: Duration) -> bool {
        self.lag().is_some_and(|l| l <= max)
    }

    /// The decision, from what the replica reports and when this server last reached the
    /// primary. A pure function, so every case is unit-tested.
    pub fn assess(status: &ReplicaStatus, since_primary: Option<Duration>) -> Staleness {
        let replayed_age = status
            .since_last_replayed
            .filter(|s| s.is_finite())
            .map(|s| Duration::from_secs_f64(s.max(0.0)));
        if !status.in_recovery {
            Staleness::Primary
        } else if status.replay_behind {
            replayed_age.map_or(Staleness::Unknown, |behind| Staleness::Applying { behind })
        } else if status.streaming {
            Staleness::Streaming
        } else if let Some(since_primary) = since_primary {
            Staleness::Detached { since_primary }
        } else {
            // Never reached the primary: the newest applied commit's age is an upper bound
            // (too high on an idle site, which refuses rather than serves).
            replayed_age.map_or(Staleness::Unknown, |behind| Staleness::Applying { behind })
        }
    }
}

impl std::fmt::Display for Staleness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Staleness::Primary => f.write_str("the read host is a primary"),
            Staleness::Streaming => f.write_str("streaming, all received WAL applied"),
            Staleness::Applying { behind } => {
                write!(
                    f,
                    "applying WAL, newest applied commit {:.1} s old",
                    behind.as_secs_f64()
                )
            }
            Staleness::Detached { since_primary } => write!(
                f,
                "not streaming, primary last reached {:.1} s ago",
                since_primary.as_secs_f64()
            ),
            Staleness::Unknown => f.write_str("staleness unknown"),
        }
    }
}

/// What a replica says about its own replication, in one query.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct ReplicaStatus {
    pub in_recovery: bool,
    /// Received WAL not yet applied (or replay paused behind it).
    pub replay_behind: bool,
    /// A WAL receiver is streaming from a primary. Its `status` is visible only to roles
    /// with `pg_read_all_stats`; without it this is false, the conservative answer.
    pub streaming: bool,
    /// Seconds since the newest applied commit was committed on the primary.
    pub since_last_replayed: Option<f64>,
}

pub const REPLICA_STATUS_SQL: &str = "SELECT pg_is_in_recovery() AS in_recovery, \
     COALESCE(pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), false) AS replay_behind, \
     EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') AS streaming, \
     EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 AS since_last_replayed";

pub async fn replica_status(conn: &mut PgConnection) -> Result<ReplicaStatus, DbError> {
    Ok(sqlx::query_as(REPLICA_STATUS_SQL).fetch_one(conn).await?)
}

/// A value and where it came from: the primary, or a replica and how stale it may be.
#[derive(Debug)]
pub struct Sourced<T> {
    pub value: T,
    pub replica: Option<Staleness>,
}

impl<T> Sourced<T> {
    pub fn primary(value: T) -> Self {
        Sourced {
            value,
            replica: None,
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Sourced<U> {
        Sourced {
            value: f(self.value),
            replica: self.replica,
        }
    }

    pub fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Sourced<U>, E> {
        Ok(Sourced {
            value: f(self.value)?,
            replica: self.replica,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(in_recovery: bool, behind: bool, streaming: bool, age: Option<f64>) -> ReplicaStatus {
        ReplicaStatus {
            in_recovery,
            replay_behind: behind,
            streaming,
            since_last_replayed: age,
        }
    }

    #[test]
    fn staleness_follows_what_the_replica_can_prove() {
        let s = |st, p| Staleness::assess(&st, p);
        let secs = Duration::from_secs;
        assert_eq!(
            s(status(false, false, false, None), None),
            Staleness::Primary
        );
        // An idle primary: the replay timestamp is old, but nothing is waiting to apply.
        assert_eq!(
            s(status(true, false, true, Some(3600.0)), Some(secs(1))),
            Staleness::Streaming
        );
        assert_eq!(
            s(status(true, true, true, Some(12.0)), Some(secs(1))),
            Staleness::Applying { behind: secs(12) }
        );
        assert_eq!(s(status(true, true, true, None), None), Staleness::Unknown);
        assert_eq!(
            s(status(true, false, false, Some(3600.0)), Some(secs(4))),
            Staleness::Detached {
                since_primary: secs(4)
            }
        );
        assert_eq!(
            s(status(true, false, false, Some(7.0)), None),
            Staleness::Applying { behind: secs(7) }
        );
        assert_eq!(
            s(status(true, false, false, None), None),
            Staleness::Unknown
        );
    }

    #[test]
    fn the_bound_refuses_unknown_and_old() {
        let max = Duration::from_secs(30);
        assert!(Staleness::Streaming.within(max));
        assert!(Staleness::Primary.within(max));
        assert!(
            Staleness::Applying {
                behind: Duration::from_secs(30)
            }
            .within(max)
        );
        assert!(
            !Staleness::Applying {
                behind: Duration::from_secs(31)
            }
            .within(max)
        );
        assert!(!Staleness::Unknown.within(max));
        assert!(
            !Staleness::Detached {
                since_primary: Duration::from_secs(90)
            }
            .within(max)
        );
    }

    #[test]
    fn ping_limit_is_a_bounded_fraction_of_the_timeout() {
        assert_eq!(
            ping_limit(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            ping_limit(Duration::from_millis(40)),
            Duration::from_millis(50)
        );
        assert_eq!(ping_limit(Duration::from_secs(60)), Duration::from_secs(1));
    }

    #[test]
    fn the_refusal_window_needs_a_refusal() {
        let f = Failover::default();
        assert!(!f.refused_recently(Duration::from_secs(10)));
        assert_eq!(f.since_primary_answered(), None);
        f.last_refusal.store(now_ms(), Ordering::Release);
        f.primary_answered();
        assert!(f.refused_recently(Duration::from_secs(10)));
        assert!(
            f.since_primary_answered()
                .is_some_and(|d| d < Duration::from_secs(5))
        );
    }
}
