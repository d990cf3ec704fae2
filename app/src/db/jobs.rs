//! The durable job queue's storage. See `docs/article-server.md` for the design.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use super::DbError;

pub const KIND_PUBLISH_ARTICLE: &str = "publish_article";

/// Takes the next due job and leases it to `worker` for `lease`. `SKIP LOCKED` lets
/// replicas claim side by side without waiting on, or taking, each other's rows.
pub const CLAIM_SQL: &str = "UPDATE jobs SET visible_at = now() + make_interval(secs => $2), \
     attempts = attempts + 1, locked_by = $1 \
     WHERE id = (SELECT id FROM jobs WHERE state = 'pending' AND visible_at <= now() \
                 ORDER BY visible_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
     RETURNING id, kind, payload, attempts, max_attempts";

pub const DEPTH_SQL: &str = "SELECT count(*) AS pending, count(*) FILTER (WHERE visible_at <= now()) AS due FROM jobs WHERE state = 'pending'";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Also the fencing token: a worker whose lease ran out and was retaken sees a
    /// different number and may not complete the job.
    pub attempts: i32,
    pub max_attempts: i32,
}

pub async fn enqueue(
    tx: &mut PgConnection,
    kind: &str,
    payload: &serde_json::Value,
    run_at: DateTime<Utc>,
) -> Result<i64, DbError> {
    let id = sqlx::query_scalar(
        "INSERT INTO jobs (kind, payload, run_at, visible_at) VALUES ($1, $2, $3, $3) RETURNING id",
    )
    .bind(kind)
    .bind(payload)
    .bind(run_at)
    .fetch_one(tx)
    .await?;
    Ok(id)
}

/// Removes an article's pending publication jobs: a new schedule, a manual publication or
/// a delete supersedes them. A job a worker is running holds its row lock, so this waits
/// for it and then finds it done.
pub const CANCEL_FOR_ARTICLE_SQL: &str = "DELETE FROM jobs WHERE kind = 'publish_article' AND state = 'pending' \
     AND (payload->>'article_id')::bigint = $1";

pub async fn cancel_for_article(tx: &mut PgConnection, article_id: i64) -> Result<u64, DbError> {
    let done = sqlx::query(CANCEL_FOR_ARTICLE_SQL)
        .bind(article_id)
        .execute(tx)
        .await?;
    Ok(done.rows_affected())
}

pub async fn claim(
    conn: &mut PgConnection,
    worker: &str,
    lease: Duration,
) -> Result<Option<ClaimedJob>, DbError> {
    Ok(sqlx::query_as(CLAIM_SQL)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .fetch_optional(conn)
        .await?)
}

/// Opens the transaction in which a job's effect and its completion commit together.
/// Returns `None` if the lease was lost (another worker took the job over). The row lock
/// held until commit keeps any other worker from taking it meanwhile.
pub async fn begin_fenced<'c>(
    conn: &'c mut PgConnection,
    job: &ClaimedJob,
) -> Result<Option<Transaction<'c, Postgres>>, DbError> {
    let mut tx = conn.begin().await?;
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE id = $1 AND attempts = $2 AND state = 'pending' FOR UPDATE",
    )
    .bind(job.id)
    .bind(job.attempts)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(held.map(|_| tx))
}

/// Marks the job done and commits its effect.
pub async fn complete(mut tx: Transaction<'_, Postgres>, job: &ClaimedJob) -> Result<(), DbError> {
    sqlx::query("UPDATE jobs SET state = 'done', finished_at = now(), locked_by = NULL, last_error = NULL WHERE id = $1")
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Records a failed attempt: retried after `backoff`, or failed for good once out of attempts.
pub async fn fail(
    conn: &mut PgConnection,
    job: &ClaimedJob,
    error: &str,
    backoff: Duration,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE jobs SET last_error = $3, locked_by = NULL, \
         visible_at = now() + make_interval(secs => $4), \
         state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END, \
         finished_at = CASE WHEN attempts >= max_attempts THEN now() END \
         WHERE id = $1 AND attempts = $2 AND state = 'pending'",
    )
    .bind(job.id)
    .bind(job.attempts)
    .bind(error)
    .bind(backoff.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Depth {
    pub pending: i64,
    pub due: i64,
}

pub async fn depth(conn: &mut PgConnection) -> Result<Depth, DbError> {
    Ok(sqlx::query_as(DEPTH_SQL).fetch_one(conn).await?)
}
