//! Plan: every decision of a reconcile, as a pure function of the site and what was observed.
//!
//! `plan(site, observed, now)` answers "what will this reconcile write, and why?". Each field
//! of `Plan` is one kind of write; a steady site gets an empty plan (`Plan::is_empty`), which is
//! the zero-write steady state. `act` carries a plan out without deciding anything, and
//! `status` reports from the plan and the API server's answers.
//!
//! The plan is built in this order, because later decisions depend on earlier ones:
//! 1. problems only the user can fix (`environment`): a missing StorageClass keeps the
//!    StatefulSet from being created (its claim template is immutable);
//! 2. the generated Secrets (`secrets`): while one is missing, the plan is only to create it
//!    (the app's pod template carries a version of both); the controller then plans again in
//!    the same reconcile, with the create's answers in `Observed`;
//! 3. the desired children (`children`), each compared with its live object by the zero-write
//!    guard (`diff`); only those that differ are applied;
//! 4. storage expansion, and the pod actions of high availability (`pods`).

pub mod backup;
mod children;
pub mod database;
mod environment;
mod pods;
mod secrets;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{ArticleSite, FailedRollout};
use crate::diff::Outcome;
use crate::observe::Observed;
use crate::problem::Problem;
use crate::secrets::Generated;

pub use pods::{
    DELETION_COST_ANNOTATION, Eviction, Orphan, PodActions, SCALE_DOWN_COST, is_app_pod,
};

/// Everything one reconcile may write, and the decisions the status reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Generated Secrets to create (they do not exist).
    pub create_secrets: Vec<Generated>,
    /// A new write token for a rotation request.
    pub rotate_write_token: Option<Rotation>,
    /// Children to server-side apply, each with the reason it differs from its live object.
    /// The ServiceAccount comes first: the pods name it.
    pub applies: Vec<Apply>,
    /// Name of an Ingress the spec no longer asks for (the operator's own).
    pub delete_ingress: Option<String>,
    /// Budgets the spec no longer asks for (the primary's, after going back to one instance).
    pub delete_pdbs: Vec<String>,
    /// The operator's HorizontalPodAutoscaler, once `spec.app.autoscaling` is removed. Deleted
    /// before the Deployment takes its `replicas` back, so the two never fight.
    pub delete_autoscaler: Option<String>,
    /// Autoscaling was turned on: the Deployment's live replica count, applied under a field
    /// manager of its own before the operator's apply leaves `replicas` out (server-side apply
    /// removes a field its only owner stops sending: the Deployment would fall to 1 pod).
    pub handover_replicas: Option<i32>,
    /// What the operator asks of Patroni, and stale EndpointSlices to delete.
    pub database: database::DatabasePlan,
    /// Backup Jobs to start, the backup annotation to clear, leftovers of a removed `spec.backup`.
    pub backup: backup::BackupPlan,
    /// `spec.database.instances`, resolved (the live count when unset).
    pub instances: i32,
    /// Data claims to grow to a larger `storage.size`.
    pub expand_claims: Vec<Expansion>,
    pub pods: PodActions,

    // Decisions that are not writes of their own, for the status.
    /// The Deployment runs a restored template instead of the spec's.
    pub rollout: Rollout,
    /// Problems only the user can fix, found while planning.
    pub problems: Vec<Problem>,
    /// Only the missing generated Secrets are created; everything else waits for them.
    pub waiting_for_secrets: bool,
    /// `spec.paused`: nothing is written but the status.
    pub paused: bool,
    /// Look again this soon even without a change (a pod nearing its restart threshold, a
    /// backoff ending, a database pod that admission refused).
    pub recheck: Option<Duration>,
}

/// One child to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Apply {
    /// The desired object, final: the applied-hash annotation (and, for the Deployment, the
    /// template hash and credentials version) already stamped.
    pub child: Child,
    /// Created, Updated (the spec changed) or Restored (a hand edit is undone).
    pub why: Outcome,
}

/// A desired child of a site. (Unboxed: a plan holds at most a dozen, once per reconcile.)
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Child {
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
    ConfigMap(ConfigMap),
    Deployment(Deployment),
    StatefulSet(StatefulSet),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
    NetworkPolicy(NetworkPolicy),
    Ingress(Ingress),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    CronJob(CronJob),
}

impl Child {
    pub fn kind(&self) -> &'static str {
        use k8s_openapi::Resource as _;
        match self {
            Child::ServiceAccount(_) => ServiceAccount::KIND,
            Child::Role(_) => Role::KIND,
            Child::RoleBinding(_) => RoleBinding::KIND,
            Child::ConfigMap(_) => ConfigMap::KIND,
            Child::Deployment(_) => Deployment::KIND,
            Child::StatefulSet(_) => StatefulSet::KIND,
            Child::Service(_) => Service::KIND,
            Child::PodDisruptionBudget(_) => PodDisruptionBudget::KIND,
            Child::NetworkPolicy(_) => NetworkPolicy::KIND,
            Child::Ingress(_) => Ingress::KIND,
            Child::HorizontalPodAutoscaler(_) => HorizontalPodAutoscaler::KIND,
            Child::CronJob(_) => CronJob::KIND,
        }
    }

    pub fn name(&self) -> &str {
        let meta = match self {
            Child::ServiceAccount(o) => &o.metadata,
            Child::Role(o) => &o.metadata,
            Child::RoleBinding(o) => &o.metadata,
            Child::ConfigMap(o) => &o.metadata,
            Child::Deployment(o) => &o.metadata,
            Child::StatefulSet(o) => &o.metadata,
            Child::Service(o) => &o.metadata,
            Child::PodDisruptionBudget(o) => &o.metadata,
            Child::NetworkPolicy(o) => &o.metadata,
            Child::Ingress(o) => &o.metadata,
            Child::HorizontalPodAutoscaler(o) => &o.metadata,
            Child::CronJob(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }
}

/// A write token rotation: the request it answers and the version it replaces (an update with
/// this resourceVersion, so a concurrent change is refused instead of overwritten).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub request: String,
    pub resource_version: String,
}

/// A data claim to grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expansion {
    pub claim: String,
    pub from: String,
    pub to: String,
}

/// Which pod template the Deployment gets.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Rollout {
    /// The template built from the spec.
    #[default]
    Spec,
    /// A rollback is in force for this spec: the restored template is kept.
    Restored(FailedRollout),
    /// The rollout of the spec's template failed: roll back now.
    RollBack(FailedRollout),
}

impl Rollout {
    pub fn failed(&self) -> Option<&FailedRollout> {
        match self {
            Rollout::Spec => None,
            Rollout::Restored(f) | Rollout::RollBack(f) => Some(f),
        }
    }
}

impl Plan {
    /// Whether the plan writes nothing (status aside): the steady state.
    pub fn is_empty(&self) -> bool {
        self.create_secrets.is_empty()
            && self.rotate_write_token.is_none()
            && self.applies.is_empty()
            && self.delete_ingress.is_none()
            && self.delete_pdbs.is_empty()
            && self.delete_autoscaler.is_none()
            && self.handover_replicas.is_none()
            && self.database.is_empty()
            && self.backup.is_empty()
            && self.expand_claims.is_empty()
            && self.pods.is_empty()
    }
}

/// The plan for `site` given `observed`, at `now`.
pub fn plan(site: &ArticleSite, observed: &Observed, now: Timestamp) -> Plan {
    if site.spec.paused {
        return Plan {
            paused: true,
            ..Plan::default()
        };
    }
    let mut problems = environment::problems(site, observed);
    problems.extend(backup::problems(site, observed, now));
    let secrets = secrets::plan(site, observed);
    if secrets.waiting {
        return Plan {
            // A rotation waits for the second plan, which sees the token as created.
            create_secrets: secrets.create,
            problems,
            waiting_for_secrets: true,
            ..Plan::default()
        };
    }
    let mut children = children::plan(site, observed, &problems);
    problems.extend(children.problems);
    let archive = observed.archive_report(site);
    let backup = backup::plan(site, observed, archive.as_ref(), now, &mut children.applies);
    let expand_claims = children::expansions(site, observed, &problems);
    let pods = pods::plan(site, observed, now);
    let patroni = observed.patroni(site);
    let database = database::plan(site, observed, &patroni, now);
    let recheck = [
        pods.recheck,
        // A refused database pod shows only in an Event, which triggers no reconcile.
        observed
            .database_refusal
            .is_some()
            .then_some(Duration::from_secs(5)),
        // A pending switchover is looked at again until it happened or timed out.
        database::pending(site, now).map(|_| Duration::from_secs(5)),
        database.recheck,
        backup.recheck,
    ]
    .into_iter()
    .flatten()
    .min();
    Plan {
        create_secrets: secrets.create,
        rotate_write_token: secrets.rotate,
        applies: children.applies,
        delete_ingress: children.delete_ingress,
        delete_pdbs: children.delete_pdbs,
        delete_autoscaler: children.delete_autoscaler,
        handover_replicas: children.handover_replicas,
        database,
        backup,
        instances: children.instances,
        expand_claims,
        pods: pods.actions,
        rollout: children.rollout,
        problems,
        waiting_for_secrets: false,
        paused: false,
        recheck,
    }
}

#[cfg(test)]
mod tests;
