//! State shared by every request handler and background task of one server.

use std::sync::Arc;

use std::future::Future;

use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::cache::Cache;
use crate::config::Config;
use crate::db::breaker::Breaker;
use crate::db::{DbError, Outage, timed};
use crate::metrics::Metrics;
use crate::shutdown::Lifecycle;
use crate::token::TokenDigest;

pub struct AppState {
    pub config: Config,
    pub pool: PgPool,
    pub cache: Cache,
    pub metrics: Metrics,
    pub lifecycle: Lifecycle,
    pub token: TokenDigest,
    /// Requests allowed in flight; past that, new ones are shed.
    pub capacity: Arc<Semaphore>,
    pub breaker: Breaker,
}

impl AppState {
    pub fn new(config: Config, pool: PgPool) -> Self {
        let metrics = Metrics::new();
        metrics.pool_max.set(i64::from(config.pool_size));
        AppState {
            cache: Cache::new(&config.cache),
            token: TokenDigest::new(&config.write_token.0),
            capacity: Arc::new(Semaphore::new(config.max_in_flight())),
            lifecycle: Lifecycle::default(),
            breaker: Breaker::default(),
            metrics,
            pool,
            config,
        }
    }
}

impl AppState {
    pub fn site(&self) -> crate::render::Site<'_> {
        crate::render::Site {
            title: &self.config.site_title,
            public_url: &self.config.public_url,
        }
    }

    /// Every database call of a request or the job worker: refused at once while the
    /// circuit breaker is open, otherwise bounded by the database timeout, and counted by
    /// the breaker.
    pub async fn db<T, E>(&self, call: impl Future<Output = Result<T, E>>) -> Result<T, E>
    where
        E: From<DbError> + Outage,
    {
        self.breaker.check()?;
        let result = timed(self.config.db_timeout, call).await;
        let outage = matches!(&result, Err(e) if e.is_outage());
        if self.breaker.record(outage) {
            tracing::warn!(
                "database unreachable: circuit breaker open, failing fast until a probe succeeds"
            );
        }
        result
    }
}
