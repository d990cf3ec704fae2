//! Restoring the spread of the app pods and the database instances, the pure part. The
//! scheduler spreads pods only when it places them: after a node failed and came back, the
//! pods that were replaced elsewhere stay doubled up on the surviving nodes, and nothing in
//! Kubernetes moves them back (the descheduler project exists for this). `pick` chooses one
//! pod to evict, so that its replacement lands on the emptier node; `rebalance` does it for
//! the app pods while every pod is ready and the Deployment is rolled out, one pod per
//! reconcile; `plan::database` for a database replica while every instance serves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{ArticleSite, SpreadPolicy};
use crate::ha::{self, Restart};
use crate::reason::Reason;
use crate::resources::placement;

/// A node must have been Ready this long before pods move to it: a flapping node gets none.
pub const SETTLE: SignedDuration = SignedDuration::from_secs(60);

/// What the plan needs to know of a node to decide whether the scheduler could place an app
/// pod there (observed; the decision is `rebalance`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    /// "" without a zone label.
    pub zone: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// Since when the node is Ready; `None` while it is not.
    pub ready_since: Option<Timestamp>,
}

impl NodeFacts {
    pub fn of(node: &Node) -> Self {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        let ready_since = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
            .map(|c| {
                c.last_transition_time
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
            });
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            zone: ha::zone_of(Some(&labels)),
            labels,
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready_since,
        }
    }
}

/// The decision of one reconcile: a pod to move now, or when to look again.
#[derive(Debug, PartialEq)]
pub enum RebalancePlan {
    Move(Restart),
    Later(Option<Duration>),
}

/// Whether a toleration matches a taint (the scheduler's rule).
fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match t.key.as_deref() {
        None | Some("") => t.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = match t.operator.as_deref() {
        Some("Exists") => true,
        _ => t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    };
    effect_ok && key_ok && value_ok
}

/// Nodes where the scheduler would place an app pod now: Ready, schedulable, matching the
/// site's node selector, every NoSchedule/NoExecute taint tolerated (the spread constraints'
/// `nodeTaintsPolicy: Honor` counts exactly these as domains).
fn eligible<'a>(site: &ArticleSite, nodes: &'a [NodeFacts]) -> Vec<&'a NodeFacts> {
    let selector = placement::node_selector(site).unwrap_or_default();
    let tolerations = placement::tolerations(site);
    nodes
        .iter()
        .filter(|n| n.ready_since.is_some() && !n.unschedulable)
        .filter(|n| selector.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
        .filter(|n| {
            n.taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
        })
        .collect()
}

/// One pod to evict when the app pods are spread unevenly by more than one over the eligible
/// zones or nodes (the spread constraints' `maxSkew: 1`), taken from the fullest zone's
/// fullest node, only while all is calm: the Deployment rolled out, every pod ready and on an
/// eligible node, none terminating, and the emptier node Ready for `SETTLE`.
pub fn rebalance(
    site: &ArticleSite,
    pods: &[Pod],
    deployment: Option<&Deployment>,
    nodes: &[NodeFacts],
    now: Timestamp,
) -> RebalancePlan {
    let calm = RebalancePlan::Later(None);
    let Some(d) = deployment else { return calm };
    let st = d.status.clone().unwrap_or_default();
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let rolled_out = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && st.updated_replicas.unwrap_or(0) == desired
        && st.ready_replicas.unwrap_or(0) == desired
        && st.replicas.unwrap_or(0) == desired;
    let live = usize::try_from(desired).unwrap_or(0);
    if !rolled_out
        || pods.len() != live
        || pods
            .iter()
            .any(|p| !ha::is_ready(p) || ha::is_terminating(p))
    {
        return calm;
    }
    let pods: Vec<&Pod> = pods.iter().collect();
    match pick(site, &pods, |_| true, nodes, now) {
        Pick::Calm => calm,
        Pick::Wait(d) => RebalancePlan::Later(Some(d)),
        Pick::Move { pod, from, counts } => RebalancePlan::Move(Restart {
            pod,
            reason: Reason::Unbalanced,
            message: format!(
                "moved from {from} to restore the spread (app pods per node {counts})"
            ),
        }),
    }
}

/// What `pick` found.
#[derive(Debug, PartialEq)]
pub enum Pick {
    /// Spread well enough, or nothing can move.
    Calm,
    /// The node to move to has not been Ready for `SETTLE` yet.
    Wait(Duration),
    Move {
        pod: String,
        from: String,
        /// The pods per node, for the message (`n1: 2, n2: 1, n3: 0`).
        counts: String,
    },
}

/// The pod to move so that `pods` (one component's, all of them counted) spread better over the
/// eligible zones and nodes: one from the fullest zone's fullest node among those `movable`,
/// when that node (or zone) holds at least two more than the emptiest, so that the
/// replacement, placed by the scheduler's spreading, evens them out. The caller decides
/// whether the site is calm enough for a move.
pub fn pick(
    site: &ArticleSite,
    pods: &[&Pod],
    movable: impl Fn(&Pod) -> bool,
    nodes: &[NodeFacts],
    now: Timestamp,
) -> Pick {
    if site.spec.high_availability.spread == SpreadPolicy::None || pods.len() < 2 {
        return Pick::Calm;
    }
    let eligible = eligible(site, nodes);
    let node_of = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let mut per_node: BTreeMap<&str, usize> =
        eligible.iter().map(|n| (n.name.as_str(), 0)).collect();
    for p in pods {
        match per_node.get_mut(node_of(p).as_str()) {
            Some(n) => *n += 1,
            // A pod on a node the scheduler would not use now: a drain or a node loss is in
            // progress, which the other mechanisms handle first.
            None => return Pick::Calm,
        }
    }
    let zone_of: BTreeMap<&str, &str> = eligible
        .iter()
        .map(|n| (n.name.as_str(), n.zone.as_str()))
        .collect();
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for (node, count) in &per_node {
        let zone = zone_of.get(node).copied().unwrap_or_default();
        *per_zone.entry(zone).or_default() += count;
    }
    let zoned = per_zone.keys().any(|z| !z.is_empty());
    let fewest_in_zone = per_zone
        .iter()
        .filter(|(z, _)| !z.is_empty())
        .map(|(_, c)| *c)
        .min()
        .unwrap_or(0);
    let fewest_on_node = per_node.values().copied().min().unwrap_or(0);
    let zone_count = |node: &str| {
        let zone = zone_of.get(node).copied().unwrap_or_default();
        per_zone.get(zone).copied().unwrap_or(0)
    };
    let node_count = |node: &str| per_node.get(node).copied().unwrap_or(0);
    let mut sorted: Vec<&Pod> = pods.iter().copied().filter(|p| movable(p)).collect();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    let Some(victim) = sorted.into_iter().max_by_key(|p| {
        let node = node_of(p);
        (
            zone_count(&node),
            node_count(&node),
            std::cmp::Reverse(p.metadata.name.clone()),
        )
    }) else {
        return Pick::Calm;
    };
    let from = node_of(victim);
    // `maxSkew: 1`: only a difference of two or more is worth a move.
    let uneven = (zoned && zone_count(&from) >= fewest_in_zone + 2)
        || node_count(&from) >= fewest_on_node + 2;
    if !uneven {
        return Pick::Calm;
    }
    // The emptiest node must have settled before a pod moves there.
    let emptiest = per_node
        .iter()
        .min_by_key(|(name, count)| (**count, zone_count(name), **name))
        .map(|(name, _)| *name)
        .unwrap_or_default();
    if let Some(since) = eligible
        .iter()
        .find(|n| n.name == emptiest)
        .and_then(|n| n.ready_since)
    {
        let ready_for = now.duration_since(since);
        if ready_for < SETTLE {
            let left = (SETTLE - ready_for).as_secs().max(1);
            return Pick::Wait(Duration::from_secs(left as u64));
        }
    }
    let counts: BTreeSet<String> = per_node.iter().map(|(n, c)| format!("{n}: {c}")).collect();
    Pick::Move {
        pod: victim.metadata.name.clone().unwrap_or_default(),
        from,
        counts: counts.into_iter().collect::<Vec<_>>().join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;
    use k8s_openapi::jiff::ToSpan;
    use serde_json::json;

    fn node(name: &str, zone: &str, ready_for_secs: Option<i64>, now: Timestamp) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            zone: zone.into(),
            ready_since: ready_for_secs.map(|s| now - s.seconds()),
            ..Default::default()
        }
    }

    fn pod(name: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": []},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn deployment(replicas: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"generation": 2},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": replicas,
                "updatedReplicas": replicas, "readyReplicas": replicas},
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-12-02T02:00:00Z".parse().unwrap()
    }

    fn three_nodes(third_ready_for: Option<i64>) -> Vec<NodeFacts> {
        vec![
            node("n1", "a", Some(3600), now()),
            node("n2", "b", Some(3600), now()),
            node("n3", "c", third_ready_for, now()),
        ]
    }

    #[test]
    fn a_doubled_node_gives_up_one_pod_once_the_empty_node_settled() {
        let s = site("news");
        let pods = [pod("a", "n1"), pod("b", "n1"), pod("c", "n2")];
        let d = deployment(3);
        match rebalance(&s, &pods, Some(&d), &three_nodes(Some(120)), now()) {
            RebalancePlan::Move(r) => {
                assert_eq!(r.reason, Reason::Unbalanced);
                assert!(r.pod == "a" || r.pod == "b", "{r:?}");
                assert!(r.message.contains("from n1"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
        // Back for 10 s only: look again when it has been Ready for a minute.
        assert_eq!(
            rebalance(&s, &pods, Some(&d), &three_nodes(Some(10)), now()),
            RebalancePlan::Later(Some(Duration::from_secs(50)))
        );
        // Still down: no eligible empty node, the skew over the other two is fine.
        assert_eq!(
            rebalance(&s, &pods, Some(&d), &three_nodes(None), now()),
            RebalancePlan::Later(None)
        );
    }

    #[test]
    fn a_spread_site_and_an_unsettled_one_are_left_alone() {
        let s = site("news");
        let d = deployment(3);
        let spread = [pod("a", "n1"), pod("b", "n2"), pod("c", "n3")];
        assert_eq!(
            rebalance(&s, &spread, Some(&d), &three_nodes(Some(3600)), now()),
            RebalancePlan::Later(None)
        );
        // An unready pod: the restart logic's business, not a move.
        let mut doubled = vec![pod("a", "n1"), pod("b", "n1"), pod("c", "n2")];
        doubled[2].status = None;
        assert_eq!(
            rebalance(&s, &doubled, Some(&d), &three_nodes(Some(3600)), now()),
            RebalancePlan::Later(None)
        );
        // A rollout in progress.
        let doubled = [pod("a", "n1"), pod("b", "n1"), pod("c", "n2")];
        let mut rolling = deployment(3);
        rolling.status.as_mut().unwrap().updated_replicas = Some(1);
        assert_eq!(
            rebalance(
                &s,
                &doubled,
                Some(&rolling),
                &three_nodes(Some(3600)),
                now()
            ),
            RebalancePlan::Later(None)
        );
        // Spreading switched off.
        let mut off = site("news");
        off.spec.high_availability.spread = SpreadPolicy::None;
        assert_eq!(
            rebalance(&off, &doubled, Some(&d), &three_nodes(Some(3600)), now()),
            RebalancePlan::Later(None)
        );
    }

    #[test]
    fn cordoned_tainted_and_unselected_nodes_are_not_targets() {
        let s = site("news");
        let d = deployment(3);
        let doubled = [pod("a", "n1"), pod("b", "n1"), pod("c", "n2")];
        let mut nodes = three_nodes(Some(3600));
        nodes[2].unschedulable = true;
        assert_eq!(
            rebalance(&s, &doubled, Some(&d), &nodes, now()),
            RebalancePlan::Later(None)
        );
        let mut nodes = three_nodes(Some(3600));
        nodes[2].taints = vec![Taint {
            key: "dedicated".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }];
        assert_eq!(
            rebalance(&s, &doubled, Some(&d), &nodes, now()),
            RebalancePlan::Later(None)
        );
        // Tolerated by the site's placement: a target again.
        let mut tolerant = site("news");
        tolerant.spec.placement = Some(crate::crd::PlacementSpec {
            node_selector: None,
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
        });
        assert!(matches!(
            rebalance(&tolerant, &doubled, Some(&d), &nodes, now()),
            RebalancePlan::Move(_)
        ));
    }
}
