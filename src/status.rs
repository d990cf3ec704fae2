//! Report: the status of a site, computed from what was observed, what was planned and what the
//! API server answered. One function owns every condition (`Ready`, `Progressing`, `Degraded`,
//! `HighlyAvailable`), each with `observedGeneration`, a typed reason, a message, and one rule
//! for `lastTransitionTime`: it moves only when the condition's status changes.
//!
//! Availability is counted after the actions: pods this reconcile evicted or deleted are not
//! counted as serving.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::act::{EvictionOutcome, ExpansionOutcome, Outcomes};
use crate::admission;
use crate::backup_report;
use crate::crd::{
    AppStatus, ArticleSite, ArticleSiteStatus, AutoscalingStatus, AvailabilityStatus,
    CredentialsStatus, DatabaseStatus,
};
use crate::database_report;
use crate::ha;
use crate::observe::Observed;
use crate::plan::{Plan, is_app_pod};
use crate::problem::Problem;
use crate::reason::Reason;
use crate::resources::{self, Component};
use crate::secrets;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const HIGHLY_AVAILABLE: &str = "HighlyAvailable";
pub const DATABASE_HIGHLY_AVAILABLE: &str = "DatabaseHighlyAvailable";

struct AppRollout {
    status: AppStatus,
    rolled_out: bool,
    stuck: Option<String>,
}

/// The replica count the Deployment should have: `spec.app.replicas`, or with autoscaling
/// the count the autoscaler set on it (within its bounds), the minimum before it did.
fn desired_replicas(site: &ArticleSite, d: Option<&Deployment>) -> i32 {
    match site.spec.app.min_replicas() {
        None => site.spec.app.replicas,
        Some(min) => d
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(min),
    }
}

/// The autoscaler's report, while autoscaling is on.
fn autoscaling_status(
    site: &ArticleSite,
    hpa: Option<&HorizontalPodAutoscaler>,
) -> Option<AutoscalingStatus> {
    let spec = site.spec.app.autoscaling.as_ref()?;
    let min = site.spec.app.min_replicas()?;
    let st = hpa.and_then(|h| h.status.clone()).unwrap_or_default();
    let conditions = st.conditions.unwrap_or_default();
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let limited = find("ScalingLimited");
    // A autoscaler that cannot act says why (no metrics, say); that comes first.
    let inactive = ["AbleToScale", "ScalingActive"]
        .into_iter()
        .filter_map(find)
        .find(|c| c.status == "False");
    let cpu = st.current_metrics.iter().flatten().find_map(|m| {
        m.resource
            .as_ref()
            .filter(|r| r.name == "cpu")
            .and_then(|r| r.current.average_utilization)
    });
    Some(AutoscalingStatus {
        min_replicas: min,
        max_replicas: spec.max_replicas,
        current_replicas: st.current_replicas.unwrap_or(0),
        desired_replicas: st.desired_replicas,
        current_cpu_utilization_percentage: cpu,
        scaling_limited: limited.is_some_and(|c| c.status == "True"),
        reason: inactive.or(limited).and_then(|c| c.reason.clone()),
        message: inactive.or(limited).and_then(|c| c.message.clone()),
    })
}

fn app_rollout(site: &ArticleSite, d: Option<&Deployment>) -> AppRollout {
    let desired = desired_replicas(site, d);
    let selector = resources::selector_string(&resources::selector_labels(site, Component::App));
    let Some(d) = d else {
        return AppRollout {
            status: AppStatus {
                replicas: 0,
                ready_replicas: 0,
                desired_replicas: desired,
                ready: format!("0/{desired}"),
                selector,
                autoscaling: None,
            },
            rolled_out: false,
            stuck: None,
        };
    };
    let s = d.status.clone().unwrap_or_default();
    let replicas = s.replicas.unwrap_or(0);
    let ready = s.ready_replicas.unwrap_or(0);
    let updated = s.updated_replicas.unwrap_or(0);
    let available = s.available_replicas.unwrap_or(0);
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let current = s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let rolled_out = current
        && spec_replicas == desired
        && updated == desired
        && replicas == desired
        && available == desired
        && ready == desired;
    let stuck = s.conditions.iter().flatten().find_map(|c| {
        let deadline = c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded");
        let failure = c.type_ == "ReplicaFailure" && c.status == "True";
        (deadline || failure).then(|| {
            format!(
                "Deployment {}: {}",
                d.name_any(),
                c.message.clone().unwrap_or_default()
            )
        })
    });
    AppRollout {
        status: AppStatus {
            replicas,
            ready_replicas: ready,
            desired_replicas: desired,
            ready: format!("{ready}/{desired}"),
            selector,
            autoscaling: None,
        },
        rolled_out,
        stuck,
    }
}

fn database_state(
    sts: Option<&StatefulSet>,
    problems: &[Problem],
    previous: Option<&ArticleSiteStatus>,
    paused: bool,
    instances: i32,
    leader_ok: bool,
) -> (DatabaseStatus, bool) {
    let ready_replicas = sts
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let rolled_out = sts.is_some_and(|s| {
        let st = s.status.clone().unwrap_or_default();
        // Not `currentRevision == updateRevision`: with `OnDelete` the StatefulSet controller
        // never advances `currentRevision`; the operator restarts the pods itself.
        st.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0)
            && st.updated_replicas.unwrap_or(0) >= 1
    });
    let ready = ready_replicas >= 1 && rolled_out && leader_ok;
    let was_ready_once = previous
        .and_then(|p| p.database.as_ref())
        .is_some_and(|d| d.state != "Provisioning");
    let state = if problems.iter().any(|p| p.blocks_database) {
        "Failed"
    } else if ready {
        "Ready"
    } else if paused && sts.is_none() {
        "Unknown"
    } else if sts.is_none() || !was_ready_once {
        "Provisioning"
    } else {
        "NotReady"
    };
    (
        DatabaseStatus {
            state: state.into(),
            ready_replicas,
            desired_replicas: instances,
            ..Default::default()
        },
        ready,
    )
}

fn condition(type_: &str, ok: bool, reason: Reason, message: String, generation: i64) -> Condition {
    tri_condition(type_, Some(ok), reason, message, generation)
}

/// A condition that may be `Unknown` (`None`).
fn tri_condition(
    type_: &str,
    ok: Option<bool>,
    reason: Reason,
    message: String,
    generation: i64,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
        .into(),
        reason: reason.as_str().into(),
        message,
        observed_generation: Some(generation),
        // Set by `transition_times`.
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// The one rule for `lastTransitionTime`: kept while a condition's status stays the same,
/// `now` when it changes (or the condition is new).
fn transition_times(
    conditions: &mut [Condition],
    previous: Option<&ArticleSiteStatus>,
    now: &Time,
) {
    for c in conditions {
        c.last_transition_time = previous
            .into_iter()
            .flat_map(|p| &p.conditions)
            .find(|o| o.type_ == c.type_ && o.status == c.status)
            .map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
    }
}

/// Every problem the user has to fix: found by the plan, refused by the API server, or
/// reported by the Deployment.
fn problems(plan: &Plan, outcomes: &Outcomes, app: &AppRollout) -> Vec<Problem> {
    let mut all = plan.problems.clone();
    for c in &outcomes.children {
        if let Some(message) = &c.rejected {
            all.push(Problem::new(
                Reason::ChildRejected,
                format!("{} {} was rejected: {message}", c.kind, c.name),
            ));
        }
    }
    for e in &outcomes.expansions {
        if let ExpansionOutcome::Refused(e, message) = e {
            all.push(Problem::new(
                Reason::StorageExpansionFailed,
                format!(
                    "spec.database.storage.size: PVC {} cannot grow to {}: {message}",
                    e.claim, e.to
                ),
            ));
        }
    }
    if let Some(stuck) = &app.stuck {
        let reason = admission::refusal_reason(stuck).unwrap_or(Reason::RolloutStuck);
        all.push(Problem::new(reason, stuck.clone()));
    }
    all
}

/// The app pods that serve after this reconcile's actions.
fn serving_pods(observed: &Observed, outcomes: &Outcomes) -> Vec<Pod> {
    let removed: BTreeSet<&str> = outcomes
        .pods_deleted
        .iter()
        .map(|o| o.pod.as_str())
        .chain(outcomes.eviction.iter().filter_map(|e| match e {
            EvictionOutcome::Evicted(e) => Some(e.pod.as_str()),
            EvictionOutcome::Refused(_) => None,
        }))
        .collect();
    observed
        .pods
        .iter()
        .filter(|p| is_app_pod(p) && !removed.contains(p.name_any().as_str()))
        .cloned()
        .collect()
}

/// `HighlyAvailable`: False when a site with several replicas has its ready pods on one node,
/// or in one zone of a cluster that has several.
fn highly_available(
    site: &ArticleSite,
    desired: i32,
    ready: i32,
    zones: i32,
    nodes: i32,
    cluster_zones: usize,
) -> (bool, Reason, String) {
    if let Some(min) = site.spec.app.min_replicas().filter(|&m| m < 2) {
        // Honest at every size the autoscaler may choose, not only at the current one.
        (
            false,
            Reason::SingleReplica,
            format!(
                "autoscaling may scale down to {min} pod: then one node failure stops the site"
            ),
        )
    } else if site.spec.app.autoscaling.is_none() && desired < 2 {
        (
            false,
            Reason::SingleReplica,
            format!("spec.app.replicas is {desired}: one node failure stops the site"),
        )
    } else if ready < 2 {
        (
            false,
            Reason::TooFewReadyReplicas,
            format!("{ready} of {desired} app pods ready"),
        )
    } else if nodes < 2 {
        (
            false,
            Reason::SingleNode,
            format!("all {ready} ready app pods run on one node"),
        )
    } else if zones < 2 && cluster_zones >= 2 {
        (
            false,
            Reason::SingleZone,
            format!("all {ready} ready app pods run in one zone of a cluster with {cluster_zones}"),
        )
    } else {
        (
            true,
            Reason::Spread,
            format!("{ready} ready app pods on {nodes} nodes in {zones} zones"),
        )
    }
}

/// The new status. `now` becomes `lastTransitionTime` of conditions whose status changed and
/// the time of a restart done now.
pub fn compute(
    site: &ArticleSite,
    observed: &Observed,
    plan: &Plan,
    outcomes: &Outcomes,
    now: &Time,
) -> ArticleSiteStatus {
    let generation = site.metadata.generation.unwrap_or(0);
    let previous = site.status.as_ref();
    let deployment = outcomes
        .deployment
        .as_ref()
        .or(observed.deployment.as_ref());
    let statefulset = outcomes
        .statefulset
        .as_ref()
        .or(observed.statefulset.as_ref());
    let mut app = app_rollout(site, deployment);
    app.status.autoscaling = autoscaling_status(site, observed.autoscaler.as_ref());
    let mut problems = problems(plan, outcomes, &app);
    let archive = observed.archive_report(site);
    let backup = backup_report::report(site, observed, archive.as_ref());
    problems.extend(backup.as_ref().and_then(|b| b.problem.clone()));
    let patroni = observed.patroni(site);
    // A paused site plans nothing: the instance count as last reported, else as observed.
    let instances = if plan.paused {
        resources::statefulset::instances(site, statefulset, patroni.initialized)
    } else {
        plan.instances
    };
    let (mut database, db_ready) = database_state(
        statefulset,
        &problems,
        previous,
        plan.paused,
        instances,
        database_report::leader_ok(&patroni),
    );
    database_report::fill(
        &mut database,
        &patroni,
        previous.and_then(|p| p.database.as_ref()),
        outcomes,
        now,
    );
    let (db_ha, db_ha_reason, db_ha_message) = database_report::highly_available(
        instances,
        site.spec.database.synchronous_mode,
        &patroni,
        &database,
    );
    let desired = app.status.desired_replicas;

    let (ready, ready_reason, ready_message) = if desired == 0 {
        (
            false,
            Reason::ScaledToZero,
            "spec.app.replicas is 0: the site serves no requests".to_string(),
        )
    } else if !db_ready {
        (
            false,
            Reason::DatabaseNotReady,
            format!("database is {}", database.state),
        )
    } else if !app.rolled_out {
        (
            false,
            Reason::AppNotReady,
            format!("{} app pods ready and up to date", app.status.ready),
        )
    } else {
        (
            true,
            Reason::SiteReady,
            format!("{} app pods ready, database ready", app.status.ready),
        )
    };

    let degraded = !problems.is_empty();
    let (degraded_reason, degraded_message) = match problems.first() {
        Some(first) => (
            first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => (Reason::AsExpected, "no problems found".into()),
    };

    let (progressing, progressing_reason, progressing_message) = if plan.paused {
        (
            false,
            Reason::Paused,
            "spec.paused is true: owned objects are not reconciled".to_string(),
        )
    } else if degraded {
        (
            false,
            Reason::Blocked,
            "blocked by the problems reported in the Degraded condition".to_string(),
        )
    } else if ready || (desired == 0 && db_ready && app.rolled_out) {
        (
            false,
            Reason::Reconciled,
            "all owned objects are up to date".to_string(),
        )
    } else {
        (
            true,
            Reason::RollingOut,
            format!(
                "app {} ready, database {}",
                app.status.ready, database.state
            ),
        )
    };

    let pods = serving_pods(observed, outcomes);
    let (zones, nodes) = ha::placement(&pods, &observed.nodes);
    let cluster_zones = observed
        .nodes
        .values()
        .filter(|z| !z.is_empty())
        .collect::<BTreeSet<_>>()
        .len();
    let (ha_ok, ha_reason, ha_message) = highly_available(
        site,
        desired,
        ha::ready_count(&pods),
        zones,
        nodes,
        cluster_zones,
    );

    let mut conditions = vec![
        condition(READY, ready, ready_reason, ready_message, generation),
        condition(
            PROGRESSING,
            progressing,
            progressing_reason,
            progressing_message,
            generation,
        ),
        condition(
            DEGRADED,
            degraded,
            degraded_reason,
            degraded_message,
            generation,
        ),
        condition(HIGHLY_AVAILABLE, ha_ok, ha_reason, ha_message, generation),
        condition(
            DATABASE_HIGHLY_AVAILABLE,
            db_ha,
            db_ha_reason,
            db_ha_message,
            generation,
        ),
    ];
    if let Some(b) = &backup {
        for (type_, v) in [
            (backup_report::CONTINUOUS_ARCHIVING, &b.archiving),
            (backup_report::LAST_BACKUP_SUCCEEDED, &b.last_backup),
        ] {
            conditions.push(tri_condition(
                type_,
                v.status,
                v.reason,
                v.message.clone(),
                generation,
            ));
        }
    }
    transition_times(&mut conditions, previous, now);

    let prev = previous
        .and_then(|p| p.availability.clone())
        .unwrap_or_default();
    let restarted = matches!(outcomes.eviction, Some(EvictionOutcome::Evicted(_)));
    let mut recent_restarts = ha::recent(&prev.recent_restarts, now.0);
    if restarted {
        recent_restarts.push(now.clone());
    }
    let availability = AvailabilityStatus {
        zones,
        nodes,
        pod_restarts: prev.pod_restarts + i32::from(restarted),
        recent_restarts,
        rollbacks: prev.rollbacks + i32::from(outcomes.rolled_back(plan)),
        // A paused site plans nothing: the rollback in force stays recorded.
        failed_rollout: if plan.paused {
            prev.failed_rollout
        } else {
            plan.rollout.failed().cloned()
        },
    };

    // The rotation the app's pod template is rolled to: the write token as observed, whose
    // version the applied Deployment carries (a rotation done now shows on the next reconcile,
    // together with the roll).
    let credentials = observed
        .write_token
        .as_ref()
        .and_then(|t| {
            t.annotations
                .as_ref()?
                .get(secrets::HANDLED_ANNOTATION)
                .cloned()
        })
        .map(|r| CredentialsStatus {
            write_token_rotation: Some(r),
        })
        .or_else(|| previous.and_then(|p| p.credentials.clone()));

    ArticleSiteStatus {
        observed_generation: Some(generation),
        conditions,
        app: Some(app.status),
        database: Some(database),
        url: Some(resources::in_cluster_url(site, &observed.cluster_domain)),
        credentials,
        availability: Some(availability),
        backup: backup.map(|b| b.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Rollout;
    use crate::resources::testing::site;
    use k8s_openapi::api::apps::v1::{DeploymentStatus, StatefulSetStatus};

    fn now(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn deployment(site: &ArticleSite, ready: i32) -> Deployment {
        let mut d = resources::deployment::build(site, "cluster.local");
        d.metadata.generation = Some(1);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(3),
            ready_replicas: Some(ready),
            updated_replicas: Some(3),
            available_replicas: Some(ready),
            ..Default::default()
        });
        d
    }

    fn statefulset(site: &ArticleSite, ready: i32) -> StatefulSet {
        let mut s = resources::statefulset::build(site, "1Gi", 1);
        s.metadata.generation = Some(1);
        s.status = Some(StatefulSetStatus {
            observed_generation: Some(1),
            replicas: 1,
            ready_replicas: Some(ready),
            updated_replicas: Some(1),
            current_revision: Some("r1".into()),
            update_revision: Some("r1".into()),
            ..Default::default()
        });
        s
    }

    fn observed(d: Option<Deployment>, s: Option<StatefulSet>) -> Observed {
        Observed {
            cluster_domain: "cluster.local".into(),
            deployment: d,
            statefulset: s,
            ..Default::default()
        }
    }

    fn get<'a>(s: &'a ArticleSiteStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    fn site3() -> ArticleSite {
        let mut s = site("news");
        s.spec.app.replicas = 3;
        s
    }

    #[test]
    fn ready_when_everything_is_rolled_out() {
        let site = site3();
        let obs = observed(Some(deployment(&site, 3)), Some(statefulset(&site, 1)));
        let st = compute(
            &site,
            &obs,
            &Plan::default(),
            &Outcomes::default(),
            &now(100),
        );
        assert_eq!(get(&st, READY).status, "True");
        assert_eq!(get(&st, PROGRESSING).status, "False");
        assert_eq!(get(&st, DEGRADED).status, "False");
        assert_eq!(st.observed_generation, Some(1));
        assert_eq!(st.app.as_ref().unwrap().ready, "3/3");
        assert_eq!(st.database.as_ref().unwrap().state, "Ready");
        assert!(
            st.conditions
                .iter()
                .all(|c| c.observed_generation == Some(1))
        );
    }

    #[test]
    fn progressing_while_pods_start_and_transition_time_is_kept() {
        let mut site = site3();
        let obs = observed(Some(deployment(&site, 1)), Some(statefulset(&site, 0)));
        let first = compute(
            &site,
            &obs,
            &Plan::default(),
            &Outcomes::default(),
            &now(100),
        );
        assert_eq!(get(&first, READY).status, "False");
        assert_eq!(get(&first, READY).reason, "DatabaseNotReady");
        assert_eq!(get(&first, PROGRESSING).status, "True");
        assert_eq!(first.database.as_ref().unwrap().state, "Provisioning");
        site.status = Some(first.clone());
        let second = compute(
            &site,
            &obs,
            &Plan::default(),
            &Outcomes::default(),
            &now(200),
        );
        assert_eq!(
            first, second,
            "same observation, same status: no status write"
        );
        // A status change moves only the changed condition's time.
        let ready = observed(Some(deployment(&site, 3)), Some(statefulset(&site, 1)));
        let third = compute(
            &site,
            &ready,
            &Plan::default(),
            &Outcomes::default(),
            &now(300),
        );
        assert_eq!(get(&third, READY).last_transition_time, now(300));
        assert_eq!(get(&third, DEGRADED).last_transition_time, now(100));
    }

    #[test]
    fn user_problems_degrade() {
        let site = site3();
        let plan = Plan {
            problems: vec![Problem::blocking_database(
                Reason::StorageClassNotFound,
                "StorageClass \"fast\" does not exist",
            )],
            ..Plan::default()
        };
        let obs = observed(Some(deployment(&site, 3)), None);
        let st = compute(&site, &obs, &plan, &Outcomes::default(), &now(100));
        let deg = get(&st, DEGRADED);
        assert_eq!(deg.status, "True");
        assert_eq!(deg.reason, "StorageClassNotFound");
        assert!(deg.message.contains("fast"));
        assert_eq!(st.database.as_ref().unwrap().state, "Failed");
    }

    #[test]
    fn rejected_children_and_refused_expansions_degrade() {
        let site = site3();
        let obs = observed(Some(deployment(&site, 3)), Some(statefulset(&site, 1)));
        let outcomes = Outcomes {
            children: vec![crate::act::ChildOutcome {
                kind: "Deployment",
                name: "news".into(),
                why: crate::diff::Outcome::Updated,
                rejected: Some(
                    "spec.template.spec.tolerations[0].operator: Unsupported value".into(),
                ),
            }],
            expansions: vec![ExpansionOutcome::Refused(
                crate::plan::Expansion {
                    claim: "data-news-postgresql-0".into(),
                    from: "1Gi".into(),
                    to: "2Gi".into(),
                },
                "only dynamically provisioned pvc can be resized".into(),
            )],
            ..Outcomes::default()
        };
        let st = compute(&site, &obs, &Plan::default(), &outcomes, &now(100));
        let deg = get(&st, DEGRADED);
        assert_eq!(deg.reason, "ChildRejected");
        assert!(
            deg.message.contains("Deployment news was rejected"),
            "{}",
            deg.message
        );
        assert!(
            deg.message.contains("cannot grow to 2Gi"),
            "{}",
            deg.message
        );
        assert_eq!(get(&st, PROGRESSING).reason, "Blocked");
    }

    #[test]
    fn availability_counts_pods_after_the_actions() {
        use k8s_openapi::api::core::v1::Pod;
        let site = site3();
        let pod = |name: &str, node: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "app"}},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .unwrap()
        };
        let mut obs = observed(Some(deployment(&site, 3)), Some(statefulset(&site, 1)));
        obs.pods = vec![pod("a", "n1"), pod("b", "n2"), pod("c", "n3")];
        obs.nodes = [("n1", "zone-a"), ("n2", "zone-b"), ("n3", "zone-c")]
            .into_iter()
            .map(|(n, z)| (n.to_string(), z.to_string()))
            .collect();
        let before = compute(
            &site,
            &obs,
            &Plan::default(),
            &Outcomes::default(),
            &now(100),
        );
        assert_eq!(before.availability.as_ref().unwrap().zones, 3);
        assert_eq!(get(&before, HIGHLY_AVAILABLE).status, "True");
        // Two of them were removed by this reconcile: one force-deleted, one evicted.
        let outcomes = Outcomes {
            pods_deleted: vec![crate::plan::Orphan {
                pod: "a".into(),
                node: "n1".into(),
            }],
            eviction: Some(EvictionOutcome::Evicted(crate::ha::Restart {
                pod: "b".into(),
                reason: Reason::CrashLoopBackOff,
                message: "crash-looping".into(),
            })),
            ..Outcomes::default()
        };
        let after = compute(&site, &obs, &Plan::default(), &outcomes, &now(100));
        let a = after.availability.as_ref().unwrap();
        assert_eq!((a.zones, a.nodes, a.pod_restarts), (1, 1, 1));
        assert_eq!(a.recent_restarts, vec![now(100)]);
        let ha = get(&after, HIGHLY_AVAILABLE);
        assert_eq!(
            (ha.status.as_str(), ha.reason.as_str()),
            ("False", "TooFewReadyReplicas")
        );
    }

    #[test]
    fn a_paused_site_keeps_its_recorded_rollback() {
        let mut site = site3();
        let failed = crate::crd::FailedRollout {
            image: "bad:1".into(),
            template_hash: "h".into(),
            restored_revision: "abc".into(),
        };
        site.status = Some(ArticleSiteStatus {
            availability: Some(AvailabilityStatus {
                failed_rollout: Some(failed.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let obs = observed(Some(deployment(&site, 3)), Some(statefulset(&site, 1)));
        let paused = Plan {
            paused: true,
            ..Plan::default()
        };
        let st = compute(&site, &obs, &paused, &Outcomes::default(), &now(100));
        assert_eq!(
            st.availability.unwrap().failed_rollout,
            Some(failed.clone())
        );
        assert_eq!(
            get(
                &compute(&site, &obs, &paused, &Outcomes::default(), &now(1)),
                PROGRESSING
            )
            .reason,
            "Paused"
        );
        let restored = Plan {
            rollout: Rollout::Restored(failed.clone()),
            ..Plan::default()
        };
        let st = compute(&site, &obs, &restored, &Outcomes::default(), &now(100));
        assert_eq!(st.availability.unwrap().failed_rollout, Some(failed));
    }

    #[test]
    fn autoscaling_reports_the_autoscalers_view_and_stays_honest() {
        let mut site = site3();
        site.spec.app.autoscaling = Some(
            serde_json::from_value(serde_json::json!({"minReplicas": 1, "maxReplicas": 5}))
                .unwrap(),
        );
        // The autoscaler set 5 on the Deployment; all 5 pods are up.
        let mut d = deployment(&site, 5);
        d.spec.as_mut().unwrap().replicas = Some(5);
        let st = d.status.as_mut().unwrap();
        st.replicas = Some(5);
        st.updated_replicas = Some(5);
        let mut obs = observed(Some(d), Some(statefulset(&site, 1)));
        obs.autoscaler = Some(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "news"},
                "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "news"}, "maxReplicas": 5},
                "status": {"currentReplicas": 5, "desiredReplicas": 5,
                    "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu",
                        "current": {"averageUtilization": 240}}}],
                    "conditions": [
                        {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
                        {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"},
                        {"type": "ScalingLimited", "status": "True", "reason": "TooManyReplicas",
                         "message": "the desired replica count is more than the maximum replica count"}]},
            }))
            .unwrap(),
        );
        let st = compute(
            &site,
            &obs,
            &Plan::default(),
            &Outcomes::default(),
            &now(100),
        );
        let app = st.app.as_ref().unwrap();
        assert_eq!((app.desired_replicas, app.ready.as_str()), (5, "5/5"));
        let a = app.autoscaling.as_ref().unwrap();
        assert!(a.scaling_limited);
        assert_eq!(a.reason.as_deref(), Some("TooManyReplicas"));
        assert_eq!(
            (
                a.min_replicas,
                a.max_replicas,
                a.current_replicas,
                a.desired_replicas
            ),
            (1, 5, 5, 5)
        );
        assert_eq!(a.current_cpu_utilization_percentage, Some(240));
        assert_eq!(
            get(&st, READY).status,
            "True",
            "5 of the 5 the autoscaler wants"
        );
        let ha = get(&st, HIGHLY_AVAILABLE);
        assert_eq!(
            (ha.status.as_str(), ha.reason.as_str()),
            ("False", "SingleReplica"),
            "minReplicas 1 is allowed, and reported: {}",
            ha.message
        );
    }
}
