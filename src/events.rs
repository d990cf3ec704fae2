//! Report, the Event half: one function, `transitions`, decides every Event of a reconcile: one
//! per condition transition and one per action the API server accepted. `publish` sends them in
//! the background (Events are best-effort, a reconcile never waits for them). No Event carries
//! a secret value.

use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::act::{EvictionOutcome, ExpansionOutcome, Outcomes};
use crate::backup_report::CONTINUOUS_ARCHIVING;
use crate::crd::{ArticleSite, ArticleSiteStatus};
use crate::diff::Outcome;
use crate::metrics::Metrics;
use crate::observe::Observed;
use crate::plan::{Plan, Rollout};
use crate::reason::Reason;
use crate::secrets::{self, Generated};
use crate::status::{DATABASE_HIGHLY_AVAILABLE, DEGRADED, HIGHLY_AVAILABLE, PROGRESSING, READY};

/// An Event about the site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteEvent {
    pub warning: bool,
    pub reason: Reason,
    pub note: String,
    /// A condition transition (rather than an action).
    condition: bool,
}

impl SiteEvent {
    fn normal(reason: Reason, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
            condition: false,
        }
    }
    fn warning(reason: Reason, note: String) -> Self {
        Self {
            warning: true,
            ..Self::normal(reason, note)
        }
    }
    pub fn is_condition(&self) -> bool {
        self.condition
    }
}

/// The condition's (status, reason) in `status`.
fn state<'a>(status: Option<&'a ArticleSiteStatus>, type_: &str) -> Option<(&'a str, &'a str)> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// The Events of one reconcile: `new` is the status it computed (`site.status` is the old one).
pub fn transitions(
    site: &ArticleSite,
    observed: &Observed,
    plan: &Plan,
    outcomes: &Outcomes,
    new: &ArticleSiteStatus,
) -> Vec<SiteEvent> {
    let mut events = conditions(site.status.as_ref(), new);
    let name = site.name_any();
    for created in &outcomes.secrets_created {
        let secret = created.which.name(&name);
        events.push(
            if created.which == Generated::DatabaseCredentials && observed.statefulset.is_some() {
                SiteEvent::warning(
                    Reason::CredentialsRecreated,
                    format!(
                        "Secret {secret} was missing and has been generated anew; the existing database keeps its old password until it is reset"
                    ),
                )
            } else {
                SiteEvent::normal(
                    Reason::SecretCreated,
                    format!("created Secret {secret} with a generated value"),
                )
            },
        );
    }
    if let Some(request) = &outcomes.rotated {
        events.push(SiteEvent::normal(
            Reason::CredentialsRotated,
            format!(
                "generated a new write token in Secret {} for {} {request:?}; the app pods roll to it",
                Generated::WriteToken.name(&name),
                secrets::ROTATE_ANNOTATION,
            ),
        ));
    }
    for c in &outcomes.children {
        if c.why == Outcome::Restored && c.rejected.is_none() {
            events.push(SiteEvent::normal(
                Reason::DriftCorrected,
                format!(
                    "restored {} {} after a change made outside the operator",
                    c.kind, c.name
                ),
            ));
        }
    }
    if let Some(replicas) = outcomes.handed_over {
        events.push(SiteEvent::normal(
            Reason::AutoscalingEnabled,
            format!("the HorizontalPodAutoscaler scales the app from its {replicas} pods"),
        ));
    }
    if outcomes.autoscaler_deleted.is_some() {
        events.push(SiteEvent::normal(
            Reason::AutoscalingDisabled,
            format!(
                "spec.app.autoscaling was removed: spec.app.replicas ({}) sets the pod count again",
                site.spec.app.replicas
            ),
        ));
    }
    if outcomes.ingress_deleted.is_some() {
        events.push(SiteEvent::normal(
            Reason::IngressDeleted,
            "spec.ingress was removed".into(),
        ));
    }
    for e in &outcomes.expansions {
        if let ExpansionOutcome::Requested(e) = e {
            events.push(SiteEvent::normal(
                Reason::StorageExpanding,
                format!("requested {} for PVC {} (was {})", e.to, e.claim, e.from),
            ));
        }
    }
    if let (true, Rollout::RollBack(failed)) = (outcomes.rolled_back(plan), &plan.rollout) {
        events.push(SiteEvent::warning(
            Reason::RolledBack,
            format!(
                "the rollout of image {} made no progress within {}s; rolled back to the last ready pod template (ReplicaSet {name}-{})",
                failed.image,
                site.spec.high_availability.rollout_deadline_seconds,
                failed.restored_revision
            ),
        ));
    }
    if let Some(EvictionOutcome::Evicted(e)) = &outcomes.eviction {
        events.push(SiteEvent::warning(
            Reason::PodRestarted,
            format!("evicted pod {} ({}): {}", e.pod, e.reason, e.message),
        ));
    }
    events.extend(database(site, plan, outcomes, new));
    events.extend(backups(site, plan, outcomes, new));
    for o in &outcomes.pods_deleted {
        events.push(SiteEvent::warning(
            Reason::OrphanedPodDeleted,
            format!(
                "pod {} was bound to node {}, which no longer exists; deleted it so that it is replaced",
                o.pod, o.node
            ),
        ));
    }
    events
}

/// The backups' Events: a Job started, a backup that succeeded or failed (seen once, when
/// the status first records it), a request that was not a backup type.
fn backups(
    site: &ArticleSite,
    plan: &Plan,
    outcomes: &Outcomes,
    new: &ArticleSiteStatus,
) -> Vec<SiteEvent> {
    let mut events = Vec::new();
    if let Some(job) = &outcomes.backup_job_created {
        events.push(SiteEvent::normal(
            Reason::BackupStarted,
            format!("started backup Job {job}"),
        ));
    }
    if let (true, Some(why)) = (outcomes.backup_request_cleared, &plan.backup.refused) {
        events.push(SiteEvent::warning(
            Reason::BackupRequestRefused,
            why.clone(),
        ));
    }
    let old = site.status.as_ref().and_then(|s| s.backup.as_ref());
    let Some(now) = new.backup.as_ref() else {
        return events;
    };
    if let Some(b) = &now.last_backup
        && old.and_then(|o| o.last_backup.as_ref()).map(|o| &o.label) != Some(&b.label)
    {
        let seconds = b.finished.0.as_second() - b.started.0.as_second();
        events.push(SiteEvent::normal(
            Reason::BackupSucceeded,
            format!(
                "{} backup {} took {seconds}s: {} MiB of database, {} MiB in {}",
                b.kind,
                b.label,
                b.database_bytes >> 20,
                b.repository_bytes >> 20,
                now.repository
            ),
        ));
    }
    if let Some(f) = &now.last_failure
        && old.and_then(|o| o.last_failure.as_ref()).map(|o| &o.job) != Some(&f.job)
    {
        events.push(SiteEvent::warning(
            Reason::BackupFailed,
            format!("backup Job {} failed: {}", f.job, f.message),
        ));
    }
    events
}

/// The database's Events: a change of primary (a failover is a Warning), a switchover asked
/// for, refused, or not carried out in time.
fn database(
    site: &ArticleSite,
    plan: &Plan,
    outcomes: &Outcomes,
    new: &ArticleSiteStatus,
) -> Vec<SiteEvent> {
    let mut events = Vec::new();
    let old = site.status.as_ref().and_then(|s| s.database.as_ref());
    let Some(now) = new.database.as_ref() else {
        return events;
    };
    if let Some(change) = &now.last_leader_change
        && old.and_then(|o| o.last_leader_change.as_ref()) != Some(change)
    {
        let note = format!("the primary moved from {} to {}", change.from, change.to);
        events.push(if change.kind == crate::database_report::FAILOVER {
            SiteEvent::warning(
                Reason::DatabaseFailover,
                format!("{note}: Patroni promoted a standby after the primary failed"),
            )
        } else {
            SiteEvent::normal(Reason::DatabaseSwitchover, note)
        });
    } else if let Some(pending) = old.and_then(|o| o.pending_switchover.as_ref())
        && now.pending_switchover.is_none()
    {
        events.push(SiteEvent::warning(
            Reason::SwitchoverFailed,
            format!(
                "the switchover from {} asked for at {} did not happen within {}s; {} is still the primary",
                pending.from,
                pending.requested_at.0,
                crate::plan::database::SWITCHOVER_TIMEOUT.as_secs(),
                now.primary.as_deref().unwrap_or("no instance"),
            ),
        ));
    }
    if let Some(sw) = &outcomes.switchover {
        events.push(SiteEvent::normal(
            Reason::SwitchoverRequested,
            format!(
                "asked Patroni to switch over from {} to {} ({})",
                sw.leader,
                sw.member.as_deref().unwrap_or("a replica it chooses"),
                match sw.reason {
                    crate::plan::database::SwitchoverReason::Requested =>
                        "annotation articlesite.io/switchover",
                    crate::plan::database::SwitchoverReason::NodeDrain =>
                        "the primary's node is cordoned or out of service",
                    crate::plan::database::SwitchoverReason::Restart =>
                        "the primary is restarted last onto the new pod template",
                }
            ),
        ));
    }
    if let Some(pod) = &outcomes.database_pod_restarted {
        events.push(SiteEvent::normal(
            Reason::DatabaseInstanceRestarted,
            format!(
                "deleted {pod} so that it restarts with the new pod template (replicas first, the primary after a switchover)"
            ),
        ));
    }
    if let Some(r) = &outcomes.standby_rebuilt {
        events.push(SiteEvent::warning(
            Reason::DatabaseStandbyRebuilt,
            format!(
                "deleted the volume and pod of {} to clone it from the primary again: {}",
                r.pod, r.why
            ),
        ));
    }
    if let Some(m) = &outcomes.instance_moved {
        events.push(SiteEvent::normal(
            Reason::DatabaseInstanceMoved,
            format!(
                "evicted replica {} from {} to restore the spread (instances per node {}); the StatefulSet places it anew",
                m.pod, m.from, m.counts
            ),
        ));
    }
    if let (Some(why), true) = (&plan.database.refused, outcomes.annotation_cleared) {
        events.push(SiteEvent::warning(
            Reason::SwitchoverRefused,
            format!("switchover not asked for: {why}"),
        ));
    }
    events
}

/// Events for condition transitions. Not-ready on creation is expected: only a loss of
/// readiness (or of high availability) is a warning.
fn conditions(old: Option<&ArticleSiteStatus>, new: &ArticleSiteStatus) -> Vec<SiteEvent> {
    let mut events = Vec::new();
    for type_ in [
        READY,
        DEGRADED,
        PROGRESSING,
        HIGHLY_AVAILABLE,
        DATABASE_HIGHLY_AVAILABLE,
        CONTINUOUS_ARCHIVING,
    ] {
        let before = state(old, type_);
        let Some(c) = new.conditions.iter().find(|c| c.type_ == type_) else {
            continue;
        };
        if before == Some((c.status.as_str(), c.reason.as_str())) {
            continue;
        }
        let was_true = before.is_some_and(|(s, _)| s == "True");
        // Written by `status::compute` from a `Reason`, so it always parses.
        let Ok(reason) = c.reason.parse::<Reason>() else {
            continue;
        };
        let message = c.message.clone();
        match (type_, c.status.as_str()) {
            (READY, "True") => events.push(SiteEvent::normal(reason, message)),
            (READY, _) if was_true => events.push(SiteEvent::warning(reason, message)),
            (DEGRADED, "True") => events.push(SiteEvent::warning(reason, message)),
            (DEGRADED, _) if was_true => events.push(SiteEvent::normal(
                Reason::Recovered,
                "the reported problems are resolved".into(),
            )),
            (PROGRESSING, _) if reason == Reason::Paused => {
                events.push(SiteEvent::normal(Reason::Paused, message))
            }
            (PROGRESSING, _) if before.is_some_and(|(_, r)| r == Reason::Paused.as_str()) => events
                .push(SiteEvent::normal(
                    Reason::Resumed,
                    "reconciliation resumed".into(),
                )),
            (HIGHLY_AVAILABLE, "True") => {
                events.push(SiteEvent::normal(Reason::HighlyAvailable, message))
            }
            (HIGHLY_AVAILABLE, _) if was_true => events.push(SiteEvent::warning(reason, message)),
            (DATABASE_HIGHLY_AVAILABLE, "True") => events.push(SiteEvent::normal(reason, message)),
            (DATABASE_HIGHLY_AVAILABLE, _) if was_true => {
                events.push(SiteEvent::warning(reason, message))
            }
            (CONTINUOUS_ARCHIVING, "True") => events.push(SiteEvent::normal(reason, message)),
            (CONTINUOUS_ARCHIVING, _) if was_true => {
                events.push(SiteEvent::warning(reason, message))
            }
            _ => {}
        }
    }
    for e in &mut events {
        e.condition = true;
    }
    events
}

/// Publishes `events` on the site in the background.
pub fn publish(recorder: &Recorder, metrics: &Metrics, site: &ArticleSite, events: Vec<SiteEvent>) {
    for e in events {
        let ev = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.as_str().into(),
            note: Some(e.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        metrics.write("create", "Event");
        let recorder = recorder.clone();
        let object = site.object_ref(&());
        tokio::spawn(async move {
            if let Err(err) = recorder.publish(&ev, &object).await {
                warn!(error = %err, reason = %e.reason, "could not publish event");
            }
        });
    }
}
