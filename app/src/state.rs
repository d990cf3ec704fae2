//! State shared by every request handler and background task of one server.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::auth::TokenDigest;
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shutdown::Lifecycle;

pub struct AppState {
    pub config: Config,
    pub pool: PgPool,
    pub cache: Cache,
    pub metrics: Metrics,
    pub lifecycle: Lifecycle,
    pub token: TokenDigest,
    /// Requests allowed in flight; past that, new ones are shed.
    pub capacity: Arc<Semaphore>,
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
            metrics,
            pool,
            config,
        }
    }
}
