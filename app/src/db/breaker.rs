//! The circuit breaker in front of the database. While the database is down every call
//! would wait up to `ARTICLES_DATABASE_TIMEOUT_MS` for a connection (sqlx retries refused
//! connections until the acquire timeout), holding a request slot all that time. After
//! `FAILURES_TO_OPEN` consecutive outage errors the breaker opens: calls fail at once with
//! `DbError::CircuitOpen` (a 503 within microseconds, or a stale page from the cache), and
//! a background probe (`SELECT 1` every `PROBE_INTERVAL`) closes it when the database answers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use super::DbError;

pub const FAILURES_TO_OPEN: u32 = 2;
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub struct Breaker {
    open: AtomicBool,
    failures: AtomicU32,
}

impl DbError {
    /// Errors that say the database is unreachable or hung, not that a query was wrong.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            DbError::Timeout
                | DbError::Unavailable(_)
                | DbError::NoConnection(_)
                | DbError::CircuitOpen
                | DbError::ReadOnly(_)
                | DbError::NotPrimary
                | DbError::TooStale(_)
        )
    }

    /// Errors after which the connection that saw them must not go back to the pool: it
    /// reaches a demoted server, or it is broken or hung (returning it would make sqlx
    /// ping it without a time limit).
    pub fn breaks_connection(&self) -> bool {
        matches!(self, DbError::Unavailable(_) | DbError::ReadOnly(_))
    }

    /// Errors that prove the call changed nothing on the server: it never got a connection,
    /// was refused before it ran, or was refused by a read-only server. Only these make a
    /// write safe to run again (`AppState::write`).
    pub fn changed_nothing(&self) -> bool {
        matches!(
            self,
            DbError::NoConnection(_)
                | DbError::CircuitOpen
                | DbError::ReadOnly(_)
                | DbError::NotPrimary
        )
    }

    /// The database is changing primaries (as opposed to simply being away).
    pub fn is_failover(&self) -> bool {
        matches!(self, DbError::ReadOnly(_) | DbError::NotPrimary)
    }
}

impl Breaker {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub fn check(&self) -> Result<(), DbError> {
        if self.is_open() {
            Err(DbError::CircuitOpen)
        } else {
            Ok(())
        }
    }

    /// Counts a call's outcome. Returns true if this outcome opened the breaker.
    pub fn record(&self, outage: bool) -> bool {
        if !outage {
            self.failures.store(0, Ordering::Release);
            return false;
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        n >= FAILURES_TO_OPEN && !self.open.swap(true, Ordering::AcqRel)
    }

    /// The probe reached the database.
    pub fn close(&self) -> bool {
        self.failures.store(0, Ordering::Release);
        self.open.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_outages_and_closes_on_probe() {
        let b = Breaker::default();
        assert!(b.check().is_ok());
        assert!(!b.record(true));
        assert!(!b.record(false), "a success resets the count");
        assert!(!b.record(true));
        assert!(b.record(true), "second outage in a row opens it");
        assert!(matches!(b.check(), Err(DbError::CircuitOpen)));
        assert!(b.close());
        assert!(b.check().is_ok());
    }
}
