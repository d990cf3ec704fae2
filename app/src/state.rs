//! State shared by every request handler and background task of one server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio::sync::Semaphore;

use crate::cache::Cache;
use crate::config::Config;
use crate::db::breaker::Breaker;
use crate::db::failover::{self, Failover, Held, Sourced};
use crate::db::{self, DbError, Outage, timed};
use crate::metrics::{HeldLabels, HeldOutcome, Metrics};
use crate::shutdown::Lifecycle;
use crate::token::TokenDigest;

/// The part of the database timeout a read gives the primary when a replica could answer
/// instead: the rest is the replica's.
const PRIMARY_SHARE_OF_READ: f64 = 0.5;

/// How often a held write tries again for a primary: a switchover's new primary is found
/// within one interval, and a pool with nothing to connect to fails fast, so this is cheap.
const HOLD_RETRY: Duration = Duration::from_millis(50);

pub struct AppState {
    pub config: Config,
    /// The primary, through `ARTICLES_DATABASE_HOST`.
    pub pool: PgPool,
    /// The replicas, through `ARTICLES_DATABASE_READ_HOST`, if set: reads only, and only
    /// while the primary fails.
    pub read_pool: Option<PgPool>,
    pub failover: Failover,
    pub cache: Cache,
    pub metrics: Metrics,
    pub lifecycle: Lifecycle,
    pub token: TokenDigest,
    /// Requests allowed in flight; past that, new ones are shed.
    pub capacity: Arc<Semaphore>,
    pub breaker: Breaker,
    /// The read replica's own breaker, so a replica that is down too costs nothing.
    pub replica_breaker: Breaker,
    /// Slots for writes held while no primary answers (`write`): a quarter of the request
    /// slots, so that a long failover cannot fill the server with waiting writes.
    pub write_holds: Semaphore,
}

impl AppState {
    /// Builds the state and its (lazily connecting) pools.
    pub fn new(config: Config) -> Result<Self, sqlx::Error> {
        let mut metrics = Metrics::new();
        let failover = Failover::default();
        metrics.register_failover(&failover);
        metrics.pool_max.set(i64::from(config.pool_size));
        let pool = db::pool(&config, &failover)?;
        let read_pool = match &config.read_replica {
            Some(replica) => Some(db::read_pool(&config, replica)?),
            None => None,
        };
        Ok(AppState {
            cache: Cache::new(&config.cache),
            token: TokenDigest::new(&config.write_token.0),
            capacity: Arc::new(Semaphore::new(config.max_in_flight())),
            write_holds: Semaphore::new(config.max_in_flight().div_ceil(4)),
            lifecycle: Lifecycle::default(),
            breaker: Breaker::default(),
            replica_breaker: Breaker::default(),
            metrics,
            pool,
            read_pool,
            failover,
            config,
        })
    }
}

impl AppState {
    pub fn site(&self) -> crate::render::Site<'_> {
        crate::render::Site {
            title: &self.config.site_title,
            public_url: &self.config.public_url,
        }
    }

    /// Every call on the primary, reads and writes, of a request or a background task:
    /// refused at once while the circuit breaker is open, otherwise bounded by the database
    /// timeout, run on one connection that is closed rather than reused if it failed at the
    /// connection level or hit SQLSTATE 25006, and counted by the breaker.
    pub async fn db<T, E>(
        &self,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<DbError> + Outage,
    {
        self.db_within(self.config.db_timeout, op).await
    }

    /// `db` with its own time limit (reads that have a replica to fall back on).
    async fn db_within<T, E>(
        &self,
        limit: Duration,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<DbError> + Outage,
    {
        let open = self.breaker.is_open();
        let result = match self.breaker.check() {
            Err(e) => Err(E::from(e)),
            Ok(()) => failover::run_on(&self.pool, limit, op).await,
        };
        let result = match result {
            Err(e)
                if e.db_error()
                    .is_some_and(|d| matches!(d, DbError::ReadOnly(_))) =>
            {
                self.failover.read_only_closed.inc();
                tracing::warn!(error = %DbErrorDisplay(e.db_error()),
                    "a write hit a read-only server (demoted primary): its connection is closed");
                Err(e)
            }
            // The pool kept refusing standbys until it gave up: say "failing over". Only
            // when nothing was sent: a call that timed out while running stays a timeout
            // (it may have committed), so that `write` never runs it again.
            Err(e)
                if e.db_error().is_some_and(DbError::changed_nothing)
                    && self.failover.refused_recently(self.config.db_timeout * 2) =>
            {
                Err(E::from(DbError::NotPrimary))
            }
            other => other,
        };
        if open {
            return result;
        }
        let outage = matches!(&result, Err(e) if e.is_outage());
        if !outage {
            self.failover.primary_answered();
        }
        if self.breaker.record(outage) {
            tracing::warn!(
                "database unreachable: circuit breaker open, failing fast until a probe succeeds"
            );
        }
        result
    }

    /// A write of a request: `db`, and while no primary can be reached (a failover, a
    /// switchover, a restart) the write is held and run again every `HOLD_RETRY`, for up to
    /// `ARTICLES_WRITE_HOLD_MS`, so that a client sees a slower answer instead of a 503.
    /// Only errors that prove nothing reached the server are retried
    /// (`DbError::changed_nothing`): a write never lands twice.
    pub async fn write<T, E>(
        &self,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E> + Clone,
    ) -> Result<T, E>
    where
        E: From<DbError> + Outage,
    {
        // The hold counts from the first attempt: with the last attempt's own database
        // timeout the whole write stays within the request timeout (checked in `config`).
        let until = Instant::now() + self.config.write_hold;
        let first = self.db(op.clone()).await;
        let retryable = |r: &Result<T, E>| matches!(r, Err(e) if e.db_error().is_some_and(DbError::changed_nothing));
        if !retryable(&first) || self.config.write_hold.is_zero() {
            return first;
        }
        let Ok(_slot) = self.write_holds.try_acquire() else {
            self.held(HeldOutcome::NoSlot);
            return first;
        };
        let mut last = first;
        while Instant::now() + HOLD_RETRY < until {
            tokio::time::sleep(HOLD_RETRY).await;
            last = self.db(op.clone()).await;
            if !retryable(&last) {
                self.held(HeldOutcome::Ran);
                return last;
            }
        }
        self.held(HeldOutcome::Expired);
        last
    }

    fn held(&self, outcome: HeldOutcome) {
        self.metrics
            .writes_held
            .get_or_create(&HeldLabels { outcome })
            .inc();
    }

    /// A read for a reader path (pages, feed, API GETs): from the primary, or, when the
    /// primary fails (unreachable, hung, a standby) and a read replica is configured, from
    /// the replica if it is within `ARTICLES_READ_MAX_LAG_SECONDS`. Never for writes.
    pub async fn read<T, E>(
        &self,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E> + Clone,
    ) -> Result<Sourced<T>, E>
    where
        E: From<DbError> + Outage,
    {
        // A client gives a read about as long as the database timeout. When a replica can
        // take over, the primary gets only part of it, so that a hung primary (frozen, cut
        // off: no error, only silence) still leaves time to answer from the replica.
        let fallback = self.read_pool.is_some() && !self.replica_breaker.is_open();
        let limit = if fallback {
            self.config.db_timeout.mul_f64(PRIMARY_SHARE_OF_READ)
        } else {
            self.config.db_timeout
        };
        let started = Instant::now();
        let primary_error = match self.db_within(limit, op.clone()).await {
            Ok(v) => return Ok(Sourced::primary(v)),
            Err(e) if e.is_outage() => e,
            Err(e) => return Err(e),
        };
        let (Some(read_pool), Some(replica)) = (&self.read_pool, &self.config.read_replica) else {
            return Err(primary_error);
        };
        if self.replica_breaker.is_open() {
            return Err(primary_error);
        }
        let since_primary = self.failover.since_primary_answered();
        let left = self.config.db_timeout.saturating_sub(started.elapsed());
        let result = timed(left, async {
            let mut held = Held::acquire(read_pool)
                .await
                .map_err(|e| E::from(DbError::from(e)))?;
            let status = failover::replica_status(held.conn()).await?;
            let staleness = failover::Staleness::assess(&status, since_primary);
            if !staleness.within(replica.max_lag) {
                held.keep();
                return Err(E::from(DbError::TooStale(staleness)));
            }
            let value = op(held.conn()).await;
            if !matches!(&value, Err(e) if e.db_error().is_some_and(DbError::breaks_connection)) {
                held.keep();
            }
            Ok((value?, staleness))
        })
        .await;
        let too_stale =
            matches!(&result, Err(e) if matches!(e.db_error(), Some(DbError::TooStale(_))));
        let replica_down = matches!(&result, Err(e) if e.is_outage()) && !too_stale;
        if self.replica_breaker.record(replica_down) {
            tracing::warn!("read replica unreachable too: its circuit breaker is open");
        }
        match result {
            Ok((value, staleness)) => {
                self.metrics.replica_reads.inc();
                Ok(Sourced {
                    value,
                    replica: Some(staleness),
                })
            }
            Err(e) if too_stale => {
                self.metrics.replica_refused.inc();
                tracing::warn!(error = %DbErrorDisplay(e.db_error()), "primary unreachable and the replica too stale: read refused");
                Err(e)
            }
            Err(e) => {
                tracing::warn!(error = %DbErrorDisplay(e.db_error()), "primary unreachable and the read replica failed too");
                Err(primary_error)
            }
        }
    }
}

/// Logs the database error inside any error type.
struct DbErrorDisplay<'a>(Option<&'a DbError>);

impl std::fmt::Display for DbErrorDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(e) => e.fmt(f),
            None => f.write_str("not a database error"),
        }
    }
}
