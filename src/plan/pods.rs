//! Pod actions of high availability: what Kubernetes alone would leave broken. The decisions
//! themselves are in `ha`; this picks them for one reconcile.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::crd::ArticleSite;
use crate::ha::{self, Restart, RestartPlan};
use crate::observe::Observed;
use crate::spread::{self, RebalancePlan};

/// The ReplicaSet controller removes pods with the lowest cost first on a scale-down.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost given to the pods a scale-down should remove.
pub const SCALE_DOWN_COST: &str = "-1000";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodActions {
    /// App pods to mark with a low deletion cost before the Deployment scales down, so that the
    /// pods that remain stay spread over zones and nodes.
    pub mark_for_scale_down: Vec<String>,
    /// Marked app pods that are no longer the next to go (autoscaling: the pods changed since
    /// they were marked); their mark is removed.
    pub unmark_for_scale_down: Vec<String>,
    /// Pods bound to a node that no longer exists: only a force delete lets them be replaced.
    pub force_delete: Vec<Orphan>,
    /// At most one app pod to restart through the Eviction API (which honours the disruption
    /// budget): an unhealthy one, or else one that moves to restore the spread.
    pub evict: Option<Eviction>,
}

impl PodActions {
    pub fn is_empty(&self) -> bool {
        self.mark_for_scale_down.is_empty()
            && self.unmark_for_scale_down.is_empty()
            && self.force_delete.is_empty()
            && self.evict.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub pod: String,
    pub node: String,
}

pub type Eviction = Restart;

pub struct PodsPlan {
    pub actions: PodActions,
    pub recheck: Option<Duration>,
}

pub fn is_app_pod(p: &Pod) -> bool {
    p.labels()
        .get("app.kubernetes.io/component")
        .map(String::as_str)
        == Some("app")
}

pub fn plan(site: &ArticleSite, observed: &Observed, now: Timestamp) -> PodsPlan {
    let app_pods: Vec<Pod> = observed
        .pods
        .iter()
        .filter(|p| is_app_pod(p))
        .cloned()
        .collect();
    let deployment = observed.deployment.as_ref();

    let current = deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let (mark_for_scale_down, unmark_for_scale_down) =
        scale_down_marks(site, &app_pods, &observed.nodes, current);

    let force_delete = ha::orphaned(&observed.pods, &observed.nodes)
        .into_iter()
        .map(|p| Orphan {
            pod: p.name_any(),
            node: p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
        })
        .collect();

    let database_ready = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= 1;
    let restarts = site
        .status
        .as_ref()
        .and_then(|s| s.availability.as_ref())
        .map(|a| a.recent_restarts.clone())
        .unwrap_or_default();
    let (evict, recheck) =
        match ha::plan_restart(site, &app_pods, deployment, database_ready, &restarts, now) {
            RestartPlan::Now(restart) => (Some(restart), None),
            // Only a calm site is rebalanced: no pod to restart, none waiting to be.
            // Moves share the restart budget, so a scheduler that keeps placing the
            // replacement on the same node (`Preferred` spreading) cannot cause churn.
            RestartPlan::Later(None) => {
                match spread::rebalance(site, &app_pods, deployment, &observed.node_facts, now) {
                    RebalancePlan::Move(m) => match ha::budget_wait(site, &restarts, now) {
                        None => (Some(m), None),
                        Some(wait) => (None, Some(wait)),
                    },
                    RebalancePlan::Later(recheck) => (None, recheck),
                }
            }
            RestartPlan::Later(recheck) => (None, recheck),
        };
    PodsPlan {
        actions: PodActions {
            mark_for_scale_down,
            unmark_for_scale_down,
            force_delete,
            evict,
        },
        recheck,
    }
}

/// The deletion-cost marks to add and to remove, given the Deployment's replica count.
///
/// Without autoscaling the operator itself lowers the count: the pods it removes are marked
/// just before (and are gone after). With autoscaling the ReplicaSet removes pods whenever the
/// HorizontalPodAutoscaler lowers the count, at most one a minute
/// (`autoscaler::SCALE_DOWN_PODS_PER_MINUTE`), so the operator keeps exactly the next pod to go
/// marked while the site runs above its minimum, and moves the mark when the pods change.
fn scale_down_marks(
    site: &ArticleSite,
    app_pods: &[Pod],
    nodes: &std::collections::BTreeMap<String, String>,
    current: i32,
) -> (Vec<String>, Vec<String>) {
    let is_marked = |p: &Pod| {
        p.annotations()
            .get(DELETION_COST_ANNOTATION)
            .map(String::as_str)
            == Some(SCALE_DOWN_COST)
    };
    // A terminating pod keeps its mark: it is going already.
    let marked: Vec<String> = app_pods
        .iter()
        .filter(|p| is_marked(p) && p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    match site.spec.app.min_replicas() {
        None => {
            let desired = site.spec.app.replicas;
            if desired < 1 || desired >= current {
                return (Vec::new(), Vec::new());
            }
            let keep = usize::try_from(desired).unwrap_or(0);
            let mark = ha::scale_down_victims(app_pods, nodes, keep)
                .into_iter()
                .filter(|name| !marked.contains(name))
                .collect();
            (mark, Vec::new())
        }
        Some(min) => {
            let next = crate::resources::autoscaler::SCALE_DOWN_PODS_PER_MINUTE;
            let victims = if current > min {
                let keep = usize::try_from(current - next).unwrap_or(0);
                ha::scale_down_victims(app_pods, nodes, keep)
            } else {
                Vec::new()
            };
            let mark = victims
                .iter()
                .filter(|name| !marked.contains(name))
                .cloned()
                .collect();
            let unmark = marked
                .into_iter()
                .filter(|name| !victims.contains(name))
                .collect();
            (mark, unmark)
        }
    }
}
