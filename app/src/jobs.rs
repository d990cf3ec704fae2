//! The job worker every replica runs. Jobs are claimed one at a time with
//! `FOR UPDATE SKIP LOCKED` under a lease; a job's effect and its completion commit in one
//! transaction that first checks the lease is still ours, so a job takes effect once even
//! if a slow replica's lease ran out and another took it over.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::watch;

use crate::db::{DbError, articles, jobs, jobs::ClaimedJob};
use crate::metrics::JobLabels;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("unknown job kind {0:?}")]
    UnknownKind(String),
    #[error("bad payload: {0}")]
    BadPayload(#[from] serde_json::Error),
    #[error("gave up after {0} attempts whose leases ran out")]
    LeaseExhausted(i32),
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The lease ran out and another worker holds the job now.
    LeaseLost,
}

#[derive(Deserialize)]
struct PublishPayload {
    article_id: i64,
    scheduled_at: DateTime<Utc>,
}

/// A name unique to this worker: the pod name (HOSTNAME in Kubernetes), the process, and a
/// counter for several servers in one process.
pub fn worker_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    format!(
        "{host}/{}/{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Retry delay after a failed attempt: 2^attempts seconds, at most five minutes.
pub fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 8)).min(Duration::from_secs(300))
}

async fn execute(state: &AppState, job: &ClaimedJob) -> Result<Outcome, JobError> {
    if job.attempts > job.max_attempts {
        return Err(JobError::LeaseExhausted(job.attempts));
    }
    match job.kind.as_str() {
        jobs::KIND_PUBLISH_ARTICLE => {
            let p: PublishPayload = serde_json::from_value(job.payload.clone())?;
            // The fence, the effect and the completion: one transaction on one connection.
            let ran = state
                .db(async |conn| {
                    let Some(mut tx) = jobs::begin_fenced(conn, job).await? else {
                        return Ok::<_, DbError>(None);
                    };
                    let changed =
                        articles::publish_scheduled(&mut tx, p.article_id, p.scheduled_at).await?;
                    jobs::complete(tx, job).await?;
                    Ok(Some(changed))
                })
                .await?;
            let Some(changed) = ran else {
                return Ok(Outcome::LeaseLost);
            };
            if let Some(slug) = &changed {
                state.cache.invalidate_article(slug);
            }
            tracing::info!(
                job_id = job.id,
                article_id = p.article_id,
                published = changed.is_some(),
                "scheduled publication ran"
            );
            Ok(Outcome::Done)
        }
        other => Err(JobError::UnknownKind(other.to_owned())),
    }
}

fn count(state: &AppState, kind: &str, outcome: &'static str) {
    state
        .metrics
        .jobs_processed
        .get_or_create(&JobLabels {
            kind: kind.to_owned(),
            outcome,
        })
        .inc();
}

/// Claims and runs due jobs until none is left or `stop` is set. Returns how many ran.
pub async fn drain_queue(
    state: &AppState,
    worker: &str,
    stop: &watch::Receiver<bool>,
) -> Result<u64, DbError> {
    let mut ran = 0;
    while !*stop.borrow() {
        let claimed = state
            .db(async |c| jobs::claim(c, worker, state.config.job_lease).await)
            .await?;
        let Some(job) = claimed else { break };
        ran += 1;
        match execute(state, &job).await {
            Ok(Outcome::Done) => count(state, &job.kind, "done"),
            Ok(Outcome::LeaseLost) => count(state, &job.kind, "lease_lost"),
            Err(e) => {
                count(state, &job.kind, "error");
                tracing::warn!(job_id = job.id, kind = %job.kind, attempts = job.attempts, error = %e, "job failed");
                let retry = backoff(job.attempts);
                if let Err(e) = state
                    .db(async |c| jobs::fail(c, &job, &e.to_string(), retry).await)
                    .await
                {
                    // The lease runs out and another attempt follows.
                    tracing::warn!(job_id = job.id, error = %e, "could not record job failure");
                }
            }
        }
    }
    Ok(ran)
}

/// The worker loop: waits for migrations, then polls every `job_poll_interval`.
pub async fn run_worker(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let worker = worker_id();
    let mut tick = tokio::time::interval(state.config.job_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        if !state.lifecycle.migrated() {
            continue;
        }
        if let Err(e) = drain_queue(&state, &worker, &stop).await {
            tracing::warn!(error = %e, "job queue unavailable");
        }
    }
    tracing::info!(worker = %worker, "job worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(8), Duration::from_secs(256));
        assert_eq!(backoff(50), Duration::from_secs(256));
        assert_eq!(backoff(-1), Duration::from_secs(1));
    }
}
