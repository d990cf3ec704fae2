//! Report, the backup part: `status.backup`, and the `ContinuousArchiving` and
//! `LastBackupSucceeded` conditions, from the backup Jobs (their pods' termination messages,
//! `backup_job::JobReport`) and the primary's archive report (`archive::ArchiveReport`).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::archive::{ArchiveReport, Archiving};
use crate::backup_job::JobReport;
use crate::crd::{ArticleSite, BackupFailure, BackupRecord, BackupStatus};
use crate::observe::Observed;
use crate::plan::backup::is_active;
use crate::problem::Problem;
use crate::reason::Reason;
use crate::resources::backup::{self as builders, JOB_CONTAINER};

pub const CONTINUOUS_ARCHIVING: &str = "ContinuousArchiving";
pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";

/// A condition's value before its transition time is set: `None` is `Unknown`.
pub struct Verdict {
    pub status: Option<bool>,
    pub reason: Reason,
    pub message: String,
}

pub struct BackupReport {
    pub status: BackupStatus,
    pub archiving: Verdict,
    pub last_backup: Verdict,
    /// Archiving fails or lags: the site is Degraded.
    pub problem: Option<Problem>,
}

/// How a backup Job ended, from its conditions and its pod's termination message.
struct Finished<'a> {
    job: &'a Job,
    at: Timestamp,
    succeeded: bool,
    report: Option<JobReport>,
}

fn finished<'a>(job: &'a Job, pods: &[Pod]) -> Option<Finished<'a>> {
    let condition = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let at = condition
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let name = job.name_any();
    // The newest pod's message: a retry after a failover is the one that counts.
    let report = pods
        .iter()
        .filter(|p| p.labels().get("job-name") == Some(&name))
        .filter_map(|p| {
            let status = p.status.as_ref()?.container_statuses.as_ref()?;
            let c = status.iter().find(|c| c.name == JOB_CONTAINER)?;
            let t = c.state.as_ref()?.terminated.as_ref()?;
            let when = t.finished_at.as_ref().map(|f| f.0);
            Some((when, JobReport::parse(t.message.as_deref()?)?))
        })
        .max_by_key(|(when, _)| *when)
        .map(|(_, r)| r);
    Some(Finished {
        job,
        at,
        succeeded: condition.type_ == "Complete",
        report,
    })
}

fn time(seconds: i64) -> Option<Time> {
    Timestamp::from_second(seconds).ok().map(Time)
}

pub fn report(
    site: &ArticleSite,
    observed: &Observed,
    archive: Option<&ArchiveReport>,
) -> Option<BackupReport> {
    let spec = site.spec.backup.as_ref()?;
    let previous = site.status.as_ref().and_then(|s| s.backup.as_ref());
    let mut ended: Vec<Finished> = observed
        .backup
        .jobs
        .iter()
        .filter_map(|j| finished(j, &observed.pods))
        .collect();
    ended.sort_by_key(|f| f.at);
    let success = ended
        .iter()
        .rev()
        .find(|f| f.succeeded && f.report.as_ref().is_some_and(|r| r.backup.is_some()));
    let failure = ended.iter().rev().find(|f| !f.succeeded);

    let mut status = BackupStatus {
        repository: builders::repository_url(site, spec),
        ..previous.cloned().unwrap_or_default()
    };
    if let Some(s) = success
        && let Some(r) = &s.report
        && let Some(b) = &r.backup
    {
        status.last_backup = Some(BackupRecord {
            label: b.label.clone(),
            kind: b.kind.clone(),
            started: time(b.started).unwrap_or(Time(Timestamp::UNIX_EPOCH)),
            finished: time(b.finished).unwrap_or(Time(Timestamp::UNIX_EPOCH)),
            database_bytes: b.database_bytes,
            repository_bytes: b.repository_bytes,
        });
        status.backups = r.backups;
        status.first_recoverable_point = r.first_recoverable.and_then(time);
    }
    let newer_than_success = |f: &Finished| success.is_none_or(|s| f.at > s.at);
    status.last_failure = match failure {
        Some(f) if newer_than_success(f) => Some(BackupFailure {
            job: f.job.name_any(),
            at: Time(f.at),
            message: f
                .report
                .as_ref()
                .and_then(|r| r.error.clone())
                .unwrap_or_else(|| job_failure_message(f.job)),
        }),
        Some(_) => None,
        // Jobs past the history limit are gone: a failure stays until a success replaces it.
        None => status.last_failure.filter(|_| success.is_none()),
    };
    if let Some(a) = archive
        && a.last_archived_wal.is_some()
    {
        status.last_archived_wal = a.last_archived_wal.clone();
        status.last_archived_at = a.last_archived().map(Time);
    }
    // What a restore can reach: the last archived segment, or the end of the last backup.
    let backup_end = status.last_backup.as_ref().map(|b| b.finished.clone());
    status.last_recoverable_point = match (&status.last_archived_at, backup_end) {
        (Some(a), Some(b)) => Some(if a.0 > b.0 { a.clone() } else { b }),
        (a, b) => a.clone().or(b),
    }
    .filter(|_| status.last_backup.is_some());
    status.restored_from = site.spec.database.bootstrap.as_ref().map(|b| {
        let r = &b.recovery;
        let point = match (&r.target_time, &r.backup_set) {
            (Some(t), _) => format!("to {t}"),
            (None, Some(s)) => format!("backup {s}"),
            (None, None) => "to the latest point".into(),
        };
        format!(
            "s3://{}{} {point}",
            spec.s3.bucket,
            builders::recovery_path(site, r)
        )
    });

    let running = observed.backup.jobs.iter().any(is_active);
    let backup_started = status.last_backup.as_ref().map(|b| b.started.0);
    let archiving = match archive.map(|a| a.archiving(backup_started)) {
        None | Some(Archiving::Unknown) => Verdict {
            status: None,
            reason: Reason::ArchiveStatusUnknown,
            message: "no report from the primary's backup agent yet".into(),
        },
        Some(Archiving::Working) => Verdict {
            status: Some(true),
            reason: Reason::Archiving,
            message: match (&status.last_archived_wal, &status.last_archived_at) {
                (Some(w), Some(at)) => format!("last archived WAL {w} at {}", at.0),
                _ => "the repository is ready; no WAL segment was due yet".into(),
            },
        },
        Some(Archiving::Lagging(n)) => Verdict {
            status: Some(false),
            reason: Reason::ArchiveLagging,
            message: format!(
                "{n} WAL segments wait to be archived: the repository takes them slower than they are written"
            ),
        },
        Some(Archiving::Gap(wal)) => Verdict {
            status: Some(false),
            reason: Reason::ArchiveGap,
            message: format!(
                "pgBackRest dropped WAL up to {wal} (the queue exceeded spec.backup.archiveQueueMax): no restore can cross that gap; a full backup is started to close it"
            ),
        },
        Some(Archiving::Failing(reason, text)) => Verdict {
            status: Some(false),
            reason,
            message: format!("archiving to {} fails: {text}", status.repository),
        },
    };
    let problem = (archiving.status == Some(false)).then(|| {
        Problem::new(
            archiving.reason,
            format!(
                "{} (writes go on; WAL waits on the primary's volume up to spec.backup.archiveQueueMax)",
                archiving.message
            ),
        )
    });
    let last_backup = match (&status.last_failure, &status.last_backup) {
        (Some(f), _) => Verdict {
            status: Some(false),
            reason: Reason::BackupFailed,
            message: format!("backup Job {} failed at {}: {}", f.job, f.at.0, f.message),
        },
        (None, Some(b)) => Verdict {
            status: Some(true),
            reason: Reason::BackupSucceeded,
            message: format!("{} backup {} finished at {}", b.kind, b.label, b.finished.0),
        },
        (None, None) => Verdict {
            status: None,
            reason: Reason::NoBackupYet,
            message: if running {
                "the first backup is running".into()
            } else {
                "no backup yet: the first full backup starts once the primary archives".into()
            },
        },
    };
    Some(BackupReport {
        status,
        archiving,
        last_backup,
        problem,
    })
}

/// The Job's own reason when its pod left no message (deadline exceeded, pods deleted).
fn job_failure_message(job: &Job) -> String {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Failed")
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or("Failed"),
                c.message.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_else(|| "the Job failed".into())
}
