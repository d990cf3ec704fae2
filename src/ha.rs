//! High availability, the pure part: which pod to restart, when to roll back, which pods a
//! scale-down removes, where the ready pods run. `plan` calls these, `act` carries the
//! decisions out (Eviction API, apply), `status` reports them. See docs/high-availability.md.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{ArticleSite, FailedRollout};
use crate::reason::Reason;

/// On the Deployment: hash of the pod template built from the spec (before any rollback).
pub const TEMPLATE_HASH_ANNOTATION: &str = "articlesite.io/template-hash";
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";
const ZONE: &str = "topology.kubernetes.io/zone";
/// The restart budget counts restarts within this window.
pub const RESTART_WINDOW: SignedDuration = SignedDuration::from_secs(3600);

/// Hash of a pod template (canonical JSON, as for the applied-hash annotation).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    crate::diff::desired_hash(&serde_json::to_value(template).unwrap_or_default())
}

/// What the Deployment's pod template should be.
#[derive(Debug, PartialEq)]
pub enum RolloutPlan {
    /// The template built from the spec.
    Spec,
    /// A rollback is in force for this spec: keep the restored template.
    Restored(Box<PodTemplateSpec>, FailedRollout),
    /// The rollout of the spec's template failed: roll back now.
    RollBack(Box<PodTemplateSpec>, FailedRollout),
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn pod_template_hash(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata
        .labels
        .as_ref()?
        .get(POD_TEMPLATE_HASH)
        .map(String::as_str)
}

/// The template of a ReplicaSet as a Deployment template: without `pod-template-hash`, which
/// the deployment controller adds (what `kubectl rollout undo` does).
fn restorable(rs: &ReplicaSet) -> Option<PodTemplateSpec> {
    let mut t = rs.spec.as_ref()?.template.clone()?;
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    Some(t)
}

/// The live Deployment runs the spec's template, has observed it, and its progress deadline
/// passed (the deployment controller's `ProgressDeadlineExceeded`).
fn rollout_failed(live: &Deployment, spec_hash: &str) -> bool {
    let runs_spec = live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION))
        .is_some_and(|h| h == spec_hash);
    let status = live.status.clone().unwrap_or_default();
    let current = status.observed_generation.unwrap_or(0) >= live.metadata.generation.unwrap_or(0);
    let exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    runs_spec && current && exceeded
}

/// Decides the pod template. `replica_sets` are the ReplicaSets of the site's Deployment.
pub fn plan_rollout(
    site: &ArticleSite,
    spec_hash: &str,
    live: Option<&Deployment>,
    replica_sets: &[ReplicaSet],
) -> RolloutPlan {
    let previous = site
        .status
        .as_ref()
        .and_then(|s| s.availability.as_ref())
        .and_then(|a| a.failed_rollout.as_ref());
    if let Some(failed) = previous.filter(|f| f.template_hash == spec_hash) {
        let restored = replica_sets
            .iter()
            .find(|rs| pod_template_hash(rs) == Some(failed.restored_revision.as_str()))
            .and_then(restorable)
            .or_else(|| live.and_then(|d| Some(d.spec.as_ref()?.template.clone())));
        return match restored {
            Some(t) => RolloutPlan::Restored(Box::new(t), failed.clone()),
            None => RolloutPlan::Spec,
        };
    }
    let Some(live) = live else {
        return RolloutPlan::Spec;
    };
    if !site.spec.high_availability.auto_rollback || !rollout_failed(live, spec_hash) {
        return RolloutPlan::Spec;
    }
    let current_revision = live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse::<i64>().ok())
        .unwrap_or(0);
    // The newest older ReplicaSet that still has ready pods: with maxUnavailable 0 a stalled
    // rollout keeps them, so this is the last template that was ready.
    let good = replica_sets
        .iter()
        .filter(|rs| revision(rs) != current_revision)
        .filter(|rs| {
            rs.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
                > 0
        })
        .max_by_key(|rs| revision(rs));
    let Some(good) = good else {
        return RolloutPlan::Spec;
    };
    match (restorable(good), pod_template_hash(good)) {
        (Some(template), Some(hash)) => RolloutPlan::RollBack(
            Box::new(template),
            FailedRollout {
                image: site.spec.app.image.clone(),
                template_hash: spec_hash.to_string(),
                restored_revision: hash.to_string(),
            },
        ),
        _ => RolloutPlan::Spec,
    }
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

pub(crate) fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub(crate) fn crash_looping(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CrashLoopBackOff")
        })
}

/// How long a running pod has been unready, from its Ready condition.
pub(crate) fn unready_for(pod: &Pod, now: Timestamp) -> Option<SignedDuration> {
    let st = pod.status.as_ref()?;
    if st.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = st
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if ready.status == "True" {
        return None;
    }
    let since = ready.last_transition_time.as_ref()?.0;
    Some(now.duration_since(since))
}

/// A pod to restart through the Eviction API, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    pub pod: String,
    pub reason: Reason,
    pub message: String,
}

/// Why no restart now, and when to look again (None: nothing is waiting).
#[derive(Debug, PartialEq)]
pub enum RestartPlan {
    Now(Restart),
    Later(Option<std::time::Duration>),
}

/// Restarts within the window, oldest first.
pub fn recent(restarts: &[Time], now: Timestamp) -> Vec<Time> {
    let mut r: Vec<Time> = restarts
        .iter()
        .filter(|t| now.duration_since(t.0) < RESTART_WINDOW)
        .cloned()
        .collect();
    r.sort_by_key(|t| t.0);
    r
}

/// Backoff after `n` restarts in the window: 10 s, 20 s, 40 s … at most 10 min.
pub fn restart_backoff(n: usize) -> SignedDuration {
    if n == 0 {
        return SignedDuration::ZERO;
    }
    let secs = 10i64 << (n - 1).min(6);
    SignedDuration::from_secs(secs.min(600))
}

fn to_std(d: SignedDuration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs().max(1) as u64)
}

/// Picks at most one app pod to restart: crash-looping, or unready for longer than the
/// threshold, while the database is ready, no rollout is under way, no pod is terminating,
/// and at least one sibling is ready (or the site has one replica). Bounded by the budget
/// per hour and an exponential backoff.
pub fn plan_restart(
    site: &ArticleSite,
    pods: &[Pod],
    deployment: Option<&Deployment>,
    database_ready: bool,
    restarts: &[Time],
    now: Timestamp,
) -> RestartPlan {
    let ha = &site.spec.high_availability;
    if !ha.restart_unhealthy_pods || !database_ready {
        return RestartPlan::Later(None);
    }
    let Some(d) = deployment else {
        return RestartPlan::Later(None);
    };
    let st = d.status.clone().unwrap_or_default();
    let rolled_out = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && st.updated_replicas.unwrap_or(0) == st.replicas.unwrap_or(0);
    if !rolled_out || pods.iter().any(is_terminating) {
        return RestartPlan::Later(None);
    }
    let threshold = SignedDuration::from_secs(ha.unready_restart_seconds);
    let mut wait: Option<SignedDuration> = None;
    let mut candidate = None;
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    for pod in sorted {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let siblings_ready = pods
            .iter()
            .filter(|p| p.metadata.name.as_deref() != Some(name.as_str()))
            .any(is_ready);
        if !(siblings_ready || site.spec.app.replicas == 1) {
            continue;
        }
        if crash_looping(pod) {
            candidate = Some(Restart {
                pod: name,
                reason: Reason::CrashLoopBackOff,
                message: "crash-looping while its siblings are ready".into(),
            });
            break;
        }
        if let Some(for_) = unready_for(pod, now) {
            if for_ >= threshold {
                candidate = Some(Restart {
                    pod: name,
                    reason: Reason::Unready,
                    message: format!(
                        "unready for {}s (threshold {}s) while its siblings are ready",
                        for_.as_secs(),
                        ha.unready_restart_seconds
                    ),
                });
                break;
            }
            let left = threshold - for_;
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
    }
    let Some(restart) = candidate else {
        return RestartPlan::Later(wait.map(to_std));
    };
    match budget_wait(site, restarts, now) {
        Some(wait) => RestartPlan::Later(Some(wait)),
        None => RestartPlan::Now(restart),
    }
}

/// How long until the restart budget allows another eviction (`None`: now): at most
/// `maxRestartsPerHour` in the window, with an exponential backoff between them. Every
/// eviction the operator makes counts, whatever its reason.
pub fn budget_wait(
    site: &ArticleSite,
    restarts: &[Time],
    now: Timestamp,
) -> Option<std::time::Duration> {
    let recent = recent(restarts, now);
    let max = usize::try_from(site.spec.high_availability.max_restarts_per_hour).unwrap_or(0);
    if recent.len() >= max {
        let until = recent
            .first()
            .map(|t| RESTART_WINDOW - now.duration_since(t.0))
            .unwrap_or(RESTART_WINDOW);
        return Some(to_std(until));
    }
    let last = recent.last()?;
    let since = now.duration_since(last.0);
    let backoff = restart_backoff(recent.len());
    (since < backoff).then(|| to_std(backoff - since))
}

/// Pods bound to a node that no longer exists: the kubelet that ran them is gone, so only a
/// force delete lets their controllers replace them.
pub fn orphaned<'a>(pods: &'a [Pod], nodes: &BTreeMap<String, String>) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| !nodes.contains_key(n))
        })
        .collect()
}

/// Distinct (zones, nodes) of the ready, non-terminating pods. `nodes` maps node → zone.
pub fn placement(pods: &[Pod], nodes: &BTreeMap<String, String>) -> (i32, i32) {
    let on: BTreeSet<&str> = pods
        .iter()
        .filter(|p| is_ready(p) && !is_terminating(p))
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .collect();
    let zones: BTreeSet<&str> = on
        .iter()
        .filter_map(|n| nodes.get(*n))
        .filter(|z| !z.is_empty())
        .map(String::as_str)
        .collect();
    (
        i32::try_from(zones.len()).unwrap_or(i32::MAX),
        i32::try_from(on.len()).unwrap_or(i32::MAX),
    )
}

/// Zone of a node from its labels ("" without one).
pub fn zone_of(labels: Option<&BTreeMap<String, String>>) -> String {
    labels
        .and_then(|l| l.get(ZONE))
        .cloned()
        .unwrap_or_default()
}

/// Pods to remove first when scaling from `pods.len()` down to `keep`, so that the remaining
/// pods stay spread: repeatedly take from the zone, then the node, with the most pods
/// (unready pods first). The ReplicaSet controller deletes pods with the lowest
/// `controller.kubernetes.io/pod-deletion-cost` first.
pub fn scale_down_victims(
    pods: &[Pod],
    nodes: &BTreeMap<String, String>,
    keep: usize,
) -> Vec<String> {
    let mut left: Vec<&Pod> = pods.iter().filter(|p| !is_terminating(p)).collect();
    left.sort_by_key(|p| p.metadata.name.clone());
    let mut victims = Vec::new();
    while left.len() > keep {
        let node_of = |p: &Pod| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default()
        };
        let zone_of = |p: &Pod| nodes.get(&node_of(p)).cloned().unwrap_or_default();
        let count =
            |f: &dyn Fn(&Pod) -> String, key: &str| left.iter().filter(|q| f(q) == key).count();
        let Some((i, _)) = left.iter().enumerate().max_by_key(|(_, p)| {
            (
                !is_ready(p),
                count(&zone_of, &zone_of(p)),
                count(&node_of, &node_of(p)),
                std::cmp::Reverse(p.metadata.name.clone()),
            )
        }) else {
            break;
        };
        victims.push(left.remove(i).metadata.name.clone().unwrap_or_default());
    }
    victims
}

/// Ready pods among `pods`.
pub fn ready_count(pods: &[Pod]) -> i32 {
    let n = pods
        .iter()
        .filter(|p| is_ready(p) && !is_terminating(p))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;
    use serde_json::json;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn pod(name: &str, node: &str, ready: bool, extra: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "conditions": [{
                "type": "Ready", "status": if ready { "True" } else { "False" },
                "lastTransitionTime": "1970-01-01T00:16:40Z"
            }]},
        }))
        .unwrap();
        if !extra.is_null() {
            p.status.as_mut().unwrap().container_statuses =
                Some(serde_json::from_value(extra).unwrap());
        }
        p
    }

    fn crash() -> serde_json::Value {
        json!([{"name": "c", "image": "i", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}])
    }

    fn deployment(updated: i32, replicas: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "news", "generation": 1},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": updated},
        }))
        .unwrap()
    }

    #[test]
    fn crash_looping_pod_is_restarted_when_siblings_are_ready() {
        let s = site("news");
        let pods = [
            pod("a", "n1", true, serde_json::Value::Null),
            pod("b", "n2", false, crash()),
            pod("c", "n3", true, serde_json::Value::Null),
        ];
        let d = deployment(3, 3);
        let plan = plan_restart(&s, &pods, Some(&d), true, &[], ts(1000));
        match plan {
            RestartPlan::Now(r) => {
                assert_eq!(r.pod, "b");
                assert_eq!(r.reason, Reason::CrashLoopBackOff);
            }
            other => panic!("{other:?}"),
        }
        // Not while the database is down, a rollout runs, or the budget is spent.
        assert_eq!(
            plan_restart(&s, &pods, Some(&d), false, &[], ts(1000)),
            RestartPlan::Later(None)
        );
        assert_eq!(
            plan_restart(&s, &pods, Some(&deployment(1, 3)), true, &[], ts(1000)),
            RestartPlan::Later(None)
        );
        let spent: Vec<Time> = (0..5).map(|i| Time(ts(900 + i))).collect();
        assert!(matches!(
            plan_restart(&s, &pods, Some(&d), true, &spent, ts(1000)),
            RestartPlan::Later(Some(_))
        ));
        // Backoff: one restart 5 s ago waits 10 s.
        assert_eq!(
            plan_restart(&s, &pods, Some(&d), true, &[Time(ts(995))], ts(1000)),
            RestartPlan::Later(Some(std::time::Duration::from_secs(5)))
        );
    }

    #[test]
    fn unready_pod_waits_for_the_threshold_and_needs_ready_siblings() {
        let s = site("news");
        let d = deployment(3, 3);
        let pods = [
            pod("a", "n1", true, serde_json::Value::Null),
            pod("b", "n2", false, serde_json::Value::Null),
        ];
        // Unready since t=1000; the threshold is 120 s.
        assert_eq!(
            plan_restart(&s, &pods, Some(&d), true, &[], ts(1100)),
            RestartPlan::Later(Some(std::time::Duration::from_secs(20)))
        );
        assert!(matches!(
            plan_restart(&s, &pods, Some(&d), true, &[], ts(1121)),
            RestartPlan::Now(Restart {
                reason: Reason::Unready,
                ..
            })
        ));
        // All unready: a shared cause (not this pod), so no restart.
        let all = [
            pod("a", "n1", false, serde_json::Value::Null),
            pod("b", "n2", false, serde_json::Value::Null),
        ];
        assert_eq!(
            plan_restart(&s, &all, Some(&d), true, &[], ts(5000)),
            RestartPlan::Later(None)
        );
    }

    fn rs(hash: &str, revision: &str, ready: i32, image: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": format!("news-{hash}"),
                "labels": {"pod-template-hash": hash},
                "annotations": {"deployment.kubernetes.io/revision": revision}},
            "spec": {"selector": {}, "template": {
                "metadata": {"labels": {"app": "x", "pod-template-hash": hash}},
                "spec": {"containers": [{"name": "c", "image": image}]}}},
            "status": {"replicas": ready, "readyReplicas": ready},
        }))
        .unwrap()
    }

    #[test]
    fn failed_rollout_rolls_back_to_the_last_ready_template() {
        let mut s = site("news");
        let live: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "news", "generation": 2, "annotations": {
                "articlesite.io/template-hash": "bad", "deployment.kubernetes.io/revision": "2"}},
            "status": {"observedGeneration": 2, "conditions": [{"type": "Progressing",
                "status": "False", "reason": "ProgressDeadlineExceeded"}]},
        }))
        .unwrap();
        let sets = [rs("good1", "1", 3, "img:1"), rs("bad1", "2", 0, "img:2")];
        let plan = plan_rollout(&s, "bad", Some(&live), &sets);
        let RolloutPlan::RollBack(template, failed) = plan else {
            panic!("expected a rollback: {plan:?}");
        };
        assert_eq!(failed.restored_revision, "good1");
        assert_eq!(failed.template_hash, "bad");
        let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert!(!labels.contains_key("pod-template-hash"));
        // Another spec: no rollback.
        assert_eq!(
            plan_rollout(&s, "other", Some(&live), &sets),
            RolloutPlan::Spec
        );
        // Recorded: the restored template stays until the spec changes.
        s.status = Some(crate::crd::ArticleSiteStatus {
            availability: Some(crate::crd::AvailabilityStatus {
                failed_rollout: Some(failed.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(
            plan_rollout(&s, "bad", None, &sets),
            RolloutPlan::Restored(..)
        ));
        assert_eq!(plan_rollout(&s, "new", None, &sets), RolloutPlan::Spec);
        // Disabled: never.
        s.status = None;
        s.spec.high_availability.auto_rollback = false;
        assert_eq!(
            plan_rollout(&s, "bad", Some(&live), &sets),
            RolloutPlan::Spec
        );
    }

    #[test]
    fn placement_counts_ready_pods_and_orphans_are_found() {
        let nodes = BTreeMap::from([
            ("n1".to_string(), "zone-a".to_string()),
            ("n2".to_string(), "zone-a".to_string()),
            ("n3".to_string(), "zone-b".to_string()),
        ]);
        let same_zone = [
            pod("a", "n1", true, serde_json::Value::Null),
            pod("b", "n2", true, serde_json::Value::Null),
        ];
        assert_eq!(placement(&same_zone, &nodes), (1, 2));
        let one_node = [
            pod("a", "n1", true, serde_json::Value::Null),
            pod("b", "n1", true, serde_json::Value::Null),
        ];
        assert_eq!(placement(&one_node, &nodes), (1, 1));
        let spread = [
            pod("a", "n1", true, serde_json::Value::Null),
            pod("b", "n3", true, serde_json::Value::Null),
            pod("c", "n2", false, serde_json::Value::Null),
        ];
        assert_eq!(placement(&spread, &nodes), (2, 2));
        assert_eq!(ready_count(&spread), 2);
        let gone = orphaned(&spread, &BTreeMap::from([("n1".into(), "zone-a".into())]));
        assert_eq!(gone.len(), 2);
    }

    #[test]
    fn scale_down_keeps_zones_balanced() {
        let nodes: BTreeMap<String, String> = [
            ("a1", "zone-a"),
            ("a2", "zone-a"),
            ("b1", "zone-b"),
            ("b2", "zone-b"),
            ("c1", "zone-c"),
            ("c2", "zone-c"),
        ]
        .into_iter()
        .map(|(n, z)| (n.to_string(), z.to_string()))
        .collect();
        let pods: Vec<Pod> = ["a1", "a2", "b1", "b2", "c1", "c2"]
            .iter()
            .map(|n| pod(&format!("p-{n}"), n, true, serde_json::Value::Null))
            .collect();
        let victims = scale_down_victims(&pods, &nodes, 3);
        assert_eq!(victims.len(), 3);
        let kept: Vec<String> = pods
            .iter()
            .filter(|p| !victims.contains(p.metadata.name.as_ref().unwrap()))
            .map(|p| nodes[p.spec.as_ref().unwrap().node_name.as_ref().unwrap()].clone())
            .collect();
        let zones: BTreeSet<_> = kept.iter().collect();
        assert_eq!(zones.len(), 3, "one pod per zone left: {kept:?}");
    }
}
