//! The desired children, each compared with its live object: only those that differ are
//! applied (the zero-write guard, `diff`).

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use super::{Apply, Child, Expansion, Rollout};
use crate::crd::ArticleSite;
use crate::diff::{self, Outcome};
use crate::ha::{self, RolloutPlan};
use crate::observe::Observed;
use crate::problem::Problem;
use crate::quantity;
use crate::reason::Reason;
use crate::resources::{self, Names, security, statefulset};

pub struct ChildrenPlan {
    pub applies: Vec<Apply>,
    pub delete_ingress: Option<String>,
    pub delete_pdbs: Vec<String>,
    pub delete_autoscaler: Option<String>,
    pub handover_replicas: Option<i32>,
    /// `spec.database.instances`, resolved (`statefulset::instances`).
    pub instances: i32,
    pub rollout: Rollout,
    pub problems: Vec<Problem>,
}

/// `problems` are those found so far (a missing StorageClass holds the StatefulSet back).
pub fn plan(site: &ArticleSite, observed: &Observed, problems: &[Problem]) -> ChildrenPlan {
    let mut applies = Vec::new();
    let mut push = |child: Child, why: Outcome| {
        if why != Outcome::Unchanged {
            applies.push(Apply { child, why });
        }
    };

    // First: the pods name the ServiceAccounts.
    let (sa, why) = compare(
        resources::security::service_account(site),
        observed.service_account.as_ref(),
    );
    push(Child::ServiceAccount(sa), why);
    let (sa, why) = compare(
        resources::rbac::service_account(site),
        observed.database_service_account.as_ref(),
    );
    push(Child::ServiceAccount(sa), why);
    let (role, why) = compare(resources::rbac::role(site), observed.database_role.as_ref());
    push(Child::Role(role), why);
    let (binding, why) = compare(
        resources::rbac::role_binding(site),
        observed.database_role_binding.as_ref(),
    );
    push(Child::RoleBinding(binding), why);
    let initialized = observed.patroni(site).initialized;
    let instances = statefulset::instances(site, observed.statefulset.as_ref(), initialized);
    let claim_size = statefulset::claim_size_of(site, observed.statefulset.as_ref());
    let (config, why) = compare(
        resources::patroni_config::build(site, &claim_size),
        observed.patroni_config.as_ref(),
    );
    push(Child::ConfigMap(config), why);

    let (deployment, rollout) = deployment(site, observed);
    let (d, why) = compare(deployment, observed.deployment.as_ref());
    let handover_replicas = handover(site, observed.deployment.as_ref(), why);
    push(Child::Deployment(d), why);
    if !problems.iter().any(|p| p.blocks_database) {
        let (s, why) = compare(
            statefulset::build(site, &claim_size, instances),
            observed.statefulset.as_ref(),
        );
        push(Child::StatefulSet(s), why);
    }
    for desired in [
        resources::service::app(site),
        resources::service::database_headless(site),
        resources::service::database_client(site),
        resources::service::database_replicas(site),
        resources::service::database_config(site),
    ] {
        let live = named(&observed.services, &desired.name_any());
        let (s, why) = compare(desired, live);
        push(Child::Service(s), why);
    }
    let primary_pdb = resources::pdb::database_primary(site, instances);
    let uid = site.uid().unwrap_or_default();
    // Back to one instance: the primary's budget would block every drain.
    let delete_pdbs: Vec<String> = match &primary_pdb {
        Some(_) => Vec::new(),
        None => named(
            &observed.pdbs,
            &Names::database_primary_pdb(&site.name_any()),
        )
        .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
        .map(|p| p.name_any())
        .into_iter()
        .collect(),
    };
    for desired in [
        Some(resources::pdb::app(site)),
        Some(resources::pdb::database(site, instances)),
        primary_pdb,
    ]
    .into_iter()
    .flatten()
    {
        let live = named(&observed.pdbs, &desired.name_any());
        let (p, why) = compare(desired, live);
        push(Child::PodDisruptionBudget(p), why);
    }
    for desired in [
        resources::network_policy::database(site),
        resources::network_policy::app(site),
    ] {
        let live = named(&observed.network_policies, &desired.name_any());
        let (p, why) = compare(desired, live);
        push(Child::NetworkPolicy(p), why);
    }
    let mut delete_ingress = None;
    match resources::ingress::build(site) {
        Some(desired) => {
            let (i, why) = compare(desired, observed.ingress.as_ref());
            push(Child::Ingress(i), why);
        }
        None => {
            delete_ingress = observed
                .ingress
                .as_ref()
                .filter(|i| i.owner_references().iter().any(|o| o.uid == uid))
                .map(|i| i.name_any());
        }
    }

    let mut delete_autoscaler = None;
    match resources::autoscaler::build(site) {
        Some(desired) => {
            let (h, why) = compare(desired, observed.autoscaler.as_ref());
            push(Child::HorizontalPodAutoscaler(h), why);
        }
        None => {
            delete_autoscaler = observed
                .autoscaler
                .as_ref()
                .filter(|h| h.owner_references().iter().any(|o| o.uid == uid))
                .map(|h| h.name_any());
        }
    }

    let problems = rollout
        .failed()
        .map(|failed| {
            Problem::new(
                Reason::RolloutFailed,
                format!(
                    "the rollout of image {} never became ready and was rolled back; change spec.app to roll out again",
                    failed.image
                ),
            )
        })
        .into_iter()
        .collect();
    ChildrenPlan {
        applies,
        delete_ingress,
        delete_pdbs,
        delete_autoscaler,
        handover_replicas,
        instances,
        rollout,
        problems,
    }
}

/// The live replica count to hand over, when this apply is the one that stops sending
/// `replicas` while the operator's own apply still owns the field. Only the field's other
/// owners keep it through an apply that leaves it out; the HorizontalPodAutoscaler's writes
/// (scale subresource updates) then take it from the handover manager.
fn handover(site: &ArticleSite, live: Option<&Deployment>, why: Outcome) -> Option<i32> {
    if site.spec.app.autoscaling.is_none() || why == Outcome::Unchanged {
        return None;
    }
    let live = live?;
    let replicas = live.spec.as_ref()?.replicas?;
    owns_replicas(live, crate::MANAGER).then_some(replicas)
}

/// Whether `manager`'s apply owns the Deployment's `spec.replicas` (its managed fields).
pub fn owns_replicas(d: &Deployment, manager: &str) -> bool {
    d.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|spec| spec.get("f:replicas"))
                .is_some()
    })
}

/// The Deployment with its final annotations: the credentials version on the pod template
/// (a new version of either Secret rolls the pods), the hash of the spec's template, and the
/// restored template when a rollout of this spec failed.
fn deployment(site: &ArticleSite, observed: &Observed) -> (Deployment, Rollout) {
    let mut desired = resources::deployment::build(site, &observed.cluster_domain);
    let Some(spec) = desired.spec.as_mut() else {
        return (desired, Rollout::Spec);
    };
    // A Deployment created for an autoscaled site starts at the minimum, not at the API
    // server's default of 1; the next reconcile hands the count over (`handover`).
    if observed.deployment.is_none() {
        spec.replicas = spec.replicas.or(site.spec.app.min_replicas());
    }
    let version = security::credentials_version(&[
        observed.credentials.as_ref(),
        observed.write_token.as_ref(),
    ]);
    security::set_credentials_version(&mut spec.template, &version);
    let spec_hash = ha::template_hash(&spec.template);
    let live = observed.deployment.as_ref();
    let owned: Vec<ReplicaSet> = match live.and_then(|d| d.uid()) {
        Some(uid) => observed
            .replica_sets
            .iter()
            .filter(|rs| rs.owner_references().iter().any(|o| o.uid == uid))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let rollout = match ha::plan_rollout(site, &spec_hash, live, &owned) {
        RolloutPlan::Spec => Rollout::Spec,
        RolloutPlan::Restored(template, failed) => {
            spec.template = *template;
            Rollout::Restored(failed)
        }
        RolloutPlan::RollBack(template, failed) => {
            spec.template = *template;
            Rollout::RollBack(failed)
        }
    };
    desired
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ha::TEMPLATE_HASH_ANNOTATION.into(), spec_hash);
    (desired, rollout)
}

/// Stamps the applied-hash annotation on `desired` and compares it with `live`.
pub(super) fn compare<K: Resource + Serialize>(mut desired: K, live: Option<&K>) -> (K, Outcome) {
    // Serialising a k8s-openapi object cannot fail (no maps with non-string keys); should it
    // ever, applying is the safe choice: the API server validates the object.
    let Ok((body, hash)) = diff::stamp(&mut desired) else {
        return (desired, Outcome::Updated);
    };
    let live = live.and_then(|l| serde_json::to_value(l).ok());
    let why = diff::decide(&body, &hash, live.as_ref());
    (desired, why)
}

fn named<'a, K: Resource>(objects: &'a [K], name: &str) -> Option<&'a K> {
    objects
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
}

/// Claim templates are immutable, so a larger `storage.size` is applied to the claims
/// themselves (when their StorageClass allows expansion; the API server says otherwise).
pub fn expansions(site: &ArticleSite, observed: &Observed, problems: &[Problem]) -> Vec<Expansion> {
    let Some(sts) = &observed.statefulset else {
        return Vec::new();
    };
    if problems.iter().any(|p| p.blocks_database) {
        return Vec::new();
    }
    let wanted = &site.spec.database.storage.size;
    let bigger = |than: &str| quantity::compare(wanted, than) == Some(Ordering::Greater);
    let template = statefulset::claim_template_size(sts).unwrap_or_default();
    if !bigger(&template) {
        return Vec::new();
    }
    observed
        .claims
        .iter()
        .filter_map(|claim| {
            let current = statefulset::claim_size(claim)?;
            bigger(&current).then(|| Expansion {
                claim: claim.name_any(),
                from: current,
                to: wanted.clone(),
            })
        })
        .collect()
}
