//! Backups: the repository's configuration, the backup Jobs' RBAC and CronJobs (applied like
//! every child), a Job outside the schedules (the first full backup once archiving works, or
//! one asked for with the `articlesite.io/backup` annotation), the removal of the CronJobs and
//! the Jobs' RoleBinding when `spec.backup` goes, and the problems only the user can fix.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{Apply, Child};
use crate::archive::ArchiveReport;
use crate::crd::ArticleSite;
use crate::diff::Outcome;
use crate::observe::Observed;
use crate::problem::Problem;
use crate::reason::Reason;
use crate::resources::backup::{self as builders, BackupType};
use crate::resources::{Names, statefulset};

/// The annotation a user sets on the ArticleSite to ask for a backup now: `full`, `diff` or
/// `incr`. The operator starts the Job and removes the annotation.
pub const BACKUP_ANNOTATION: &str = "articlesite.io/backup";

/// What the operator does about backups in one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackupPlan {
    /// A Job to create (it does not exist).
    pub create_job: Option<Job>,
    /// Remove the backup annotation: its Job is created (or the value is not a backup type,
    /// with `refused` saying why).
    pub clear_request: bool,
    pub refused: Option<String>,
    /// Objects of a `spec.backup` that was removed.
    pub delete: Vec<Leftover>,
    /// Look again this soon (a request waits for the running backup).
    pub recheck: Option<Duration>,
}

impl BackupPlan {
    pub fn is_empty(&self) -> bool {
        self.create_job.is_none() && !self.clear_request && self.delete.is_empty()
    }
}

/// An object of the backups that the spec no longer asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leftover {
    CronJob(String),
    RoleBinding(String),
}

/// The backup children to apply (pushed onto `applies`), and the rest of the plan.
pub fn plan(
    site: &ArticleSite,
    observed: &Observed,
    archive: Option<&ArchiveReport>,
    now: Timestamp,
    applies: &mut Vec<Apply>,
) -> BackupPlan {
    let name = site.name_any();
    let seen = &observed.backup;
    let Some(spec) = &site.spec.backup else {
        if !seen.looked {
            return BackupPlan::default();
        }
        let uid = site.uid().unwrap_or_default();
        let ours = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            meta.owner_references.iter().flatten().any(|o| o.uid == uid)
        };
        let mut delete: Vec<Leftover> = seen
            .cron_jobs
            .iter()
            .filter(|c| ours(&c.metadata))
            .map(|c| Leftover::CronJob(c.name_any()))
            .collect();
        // The grant goes with the schedules: the Jobs' Role may exec into the database pods.
        // The Role, ServiceAccount and ConfigMap stay (they grant nothing unbound) until the
        // site is deleted.
        if seen
            .role_binding
            .as_ref()
            .is_some_and(|o| ours(&o.metadata))
        {
            delete.push(Leftover::RoleBinding(Names::backup(&name)));
        }
        return BackupPlan {
            delete,
            ..BackupPlan::default()
        };
    };

    let claim_size = statefulset::claim_size_of(site, observed.statefulset.as_ref());
    let image = &observed.backup_image;
    let mut push = |child: Child, why: Outcome| {
        if why != Outcome::Unchanged {
            applies.push(Apply { child, why });
        }
    };
    let (sa, why) = super::children::compare(
        builders::service_account(site),
        seen.service_account.as_ref(),
    );
    push(Child::ServiceAccount(sa), why);
    let (role, why) = super::children::compare(builders::role(site), seen.role.as_ref());
    push(Child::Role(role), why);
    let (binding, why) =
        super::children::compare(builders::role_binding(site), seen.role_binding.as_ref());
    push(Child::RoleBinding(binding), why);
    let (config, why) = super::children::compare(
        builders::config_map(site, spec, &claim_size),
        seen.config.as_ref(),
    );
    push(Child::ConfigMap(config), why);
    let wanted = builders::cron_jobs(site, spec, image);
    for desired in &wanted {
        let live = seen
            .cron_jobs
            .iter()
            .find(|c| c.name_any() == desired.name_any());
        let (c, why) = super::children::compare(desired.clone(), live);
        push(Child::CronJob(c), why);
    }
    // The differential schedule was emptied.
    let uid = site.uid().unwrap_or_default();
    let delete = seen
        .cron_jobs
        .iter()
        .filter(|c| !wanted.iter().any(|w| w.name_any() == c.name_any()))
        .filter(|c| c.owner_references().iter().any(|o| o.uid == uid))
        .map(|c| Leftover::CronJob(c.name_any()))
        .collect();

    let running = seen.jobs.iter().any(is_active);
    let mut out = BackupPlan {
        delete,
        ..BackupPlan::default()
    };
    if let Some(value) = site.annotations().get(BACKUP_ANNOTATION) {
        match value.parse::<BackupType>() {
            Err(_) => {
                out.clear_request = true;
                out.refused = Some(format!(
                    "annotation {BACKUP_ANNOTATION}={value:?} is not a backup type: use full, diff or incr"
                ));
            }
            // pgBackRest holds one lock per stanza: the request waits for the running backup.
            Ok(_) if running => out.recheck = Some(Duration::from_secs(10)),
            Ok(kind) => {
                let stamp = now.strftime("%Y%m%d%H%M%S").to_string();
                let job_name = format!("{}-{stamp}", Names::backup(&name));
                out.create_job = Some(builders::job(site, job_name, image, kind));
                out.clear_request = true;
            }
        }
    } else if !running && let Some(job_name) = catch_up_backup(site, observed, archive) {
        out.create_job = Some(builders::job(site, job_name, image, BackupType::Full));
    }
    out
}

/// The Job of the first full backup.
pub fn first_job_name(site: &str) -> String {
    format!("{}-first", Names::backup(site))
}

/// A full backup the schedules would start too late, by Job name:
/// - the first: a repository without a backup cannot restore anything, whatever WAL it holds,
///   so it runs as soon as the primary archives, not at the first scheduled time;
/// - after a gap (segments pgBackRest dropped because the queue was full): no restore can
///   cross it, so the next backup starts as soon as archiving works again.
fn catch_up_backup(
    site: &ArticleSite,
    observed: &Observed,
    archive: Option<&ArchiveReport>,
) -> Option<String> {
    let archive = archive.filter(|a| a.stanza_ok() && a.last_archived_wal.is_some())?;
    let last = site
        .status
        .as_ref()
        .and_then(|s| s.backup.as_ref())
        .and_then(|b| b.last_backup.as_ref());
    let name = match last {
        None => first_job_name(&site.name_any()),
        Some(b) => {
            let gap = archive.uncovered_gap(Some(b.started.0))?;
            // Not while the repository still fails: the backup would fail the same way.
            if !matches!(
                archive.archiving(Some(b.started.0)),
                crate::archive::Archiving::Gap(_)
            ) {
                return None;
            }
            format!(
                "{}-gap-{}",
                Names::backup(&site.name_any()),
                gap.as_second()
            )
        }
    };
    (!observed.backup.jobs.iter().any(|j| j.name_any() == name)).then_some(name)
}

/// A Job that has not finished (no Complete or Failed condition).
pub fn is_active(job: &Job) -> bool {
    !job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// Problems with the spec that only the user can fix.
pub fn problems(site: &ArticleSite, observed: &Observed, now: Timestamp) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(spec) = &site.spec.backup else {
        return problems;
    };
    if observed.backup.looked && !observed.backup.credentials_exist {
        problems.push(Problem::new(
            Reason::BackupCredentialsNotFound,
            format!(
                "spec.backup.s3.credentialsSecret: Secret {} (keys {} and {}) does not exist: nothing can be archived",
                spec.s3.credentials_secret,
                builders::ACCESS_KEY_ID_KEY,
                builders::SECRET_ACCESS_KEY_KEY
            ),
        ));
    }
    if observed.backup.ca_exists == Some(false)
        && let Some(ca) = &spec.s3.ca_secret
    {
        problems.push(Problem::new(
            Reason::BackupCaNotFound,
            format!(
                "spec.backup.s3.caSecret: Secret {} does not exist: the repository's certificate cannot be verified",
                ca.name
            ),
        ));
    }
    // Only before the database exists: a restore happens once, at creation.
    if observed.statefulset.is_none()
        && let Some(boot) = &site.spec.database.bootstrap
        && let Some(t) = &boot.recovery.target_time
    {
        match t.parse::<Timestamp>() {
            Ok(target) if target > now => problems.push(Problem::blocking_database(
                Reason::RecoveryTargetInFuture,
                format!(
                    "spec.database.bootstrap.recovery.targetTime {t} is in the future (now {now}): a restore can only reach a point that was archived"
                ),
            )),
            Ok(_) => {}
            Err(e) => problems.push(Problem::blocking_database(
                Reason::RecoveryTargetInvalid,
                format!("spec.database.bootstrap.recovery.targetTime {t}: {e}"),
            )),
        }
    }
    problems
}
