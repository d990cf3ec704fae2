//! The plan as a table of inputs and plans: no client, no cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::ha;
use crate::observe::StorageClassSeen;
use crate::reason::Reason;
use crate::resources::testing::site;
use crate::secrets;

fn now() -> Timestamp {
    Timestamp::from_second(10_000).unwrap()
}

fn secret(uid: &str) -> ObjectMeta {
    ObjectMeta {
        uid: Some(uid.into()),
        resource_version: Some("1".into()),
        ..Default::default()
    }
}

/// A cluster where the site's Secrets exist but none of its other children.
fn with_secrets() -> Observed {
    Observed {
        cluster_domain: "cluster.local".into(),
        credentials: Some(secret("c")),
        write_token: Some(secret("t")),
        nodes: [("n1", "zone-a"), ("n2", "zone-b"), ("n3", "zone-c")]
            .into_iter()
            .map(|(n, z)| (n.to_string(), z.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// The cluster after `plan` was applied: its children live as planned, the workloads rolled
/// out with their pods ready.
fn applied(mut observed: Observed, plan: &Plan) -> Observed {
    for a in &plan.applies {
        match a.child.clone() {
            Child::ServiceAccount(o) if o.metadata.name.as_deref() == Some("news") => {
                observed.service_account = Some(o)
            }
            Child::ServiceAccount(o) if o.metadata.name.as_deref() == Some("news-backup") => {
                observed.backup.service_account = Some(o)
            }
            Child::ServiceAccount(o) => observed.database_service_account = Some(o),
            Child::Role(o) if o.metadata.name.as_deref() == Some("news-backup") => {
                observed.backup.role = Some(o)
            }
            Child::Role(o) => observed.database_role = Some(o),
            Child::RoleBinding(o) if o.metadata.name.as_deref() == Some("news-backup") => {
                observed.backup.role_binding = Some(o)
            }
            Child::RoleBinding(o) => observed.database_role_binding = Some(o),
            Child::ConfigMap(o) if o.metadata.name.as_deref() == Some("news-pgbackrest") => {
                observed.backup.config = Some(o)
            }
            Child::ConfigMap(o) => observed.patroni_config = Some(o),
            Child::CronJob(o) => {
                observed
                    .backup
                    .cron_jobs
                    .retain(|c| c.metadata.name != o.metadata.name);
                observed.backup.cron_jobs.push(o)
            }
            Child::Deployment(mut d) => {
                d.metadata.uid = Some("deployment-uid".into());
                d.metadata.generation = Some(1);
                let replicas = d.spec.as_ref().and_then(|s| s.replicas);
                d.status = Some(
                    serde_json::from_value(json!({
                    "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                    "readyReplicas": replicas, "availableReplicas": replicas}))
                    .unwrap(),
                );
                observed.deployment = Some(d);
            }
            Child::StatefulSet(mut s) => {
                s.metadata.generation = Some(1);
                s.status = Some(
                    serde_json::from_value(json!({
                    "observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                    "updatedReplicas": 1, "currentRevision": "r1", "updateRevision": "r1"}))
                    .unwrap(),
                );
                observed.statefulset = Some(s);
            }
            Child::Service(o) => observed.services.push(o),
            Child::PodDisruptionBudget(o) => observed.pdbs.push(o),
            Child::NetworkPolicy(o) => observed.network_policies.push(o),
            Child::Ingress(o) => observed.ingress = Some(o),
            Child::HorizontalPodAutoscaler(o) => observed.autoscaler = Some(o),
        }
    }
    observed
}

/// A site that has converged: planning it again must write nothing.
fn steady(site: &ArticleSite) -> Observed {
    let first = plan(site, &with_secrets(), now());
    applied(with_secrets(), &first)
}

fn kinds(plan: &Plan) -> Vec<(&'static str, String, Outcome)> {
    plan.applies
        .iter()
        .map(|a| (a.child.kind(), a.child.name().to_string(), a.why))
        .collect()
}

fn app_pod(name: &str, node: &str, ready: bool, waiting: Option<&str>) -> Pod {
    let mut status = json!({"phase": "Running", "conditions": [{"type": "Ready",
        "status": if ready { "True" } else { "False" },
        "lastTransitionTime": "1970-01-01T00:00:00Z"}]});
    if let Some(reason) = waiting {
        status["containerStatuses"] = json!([{"name": "article-server", "image": "i",
            "ready": false, "restartCount": 4, "state": {"waiting": {"reason": reason}}}]);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "app",
            "app.kubernetes.io/instance": "news"}},
        "spec": {"nodeName": node, "containers": [{"name": "article-server"}]},
        "status": status,
    }))
    .unwrap()
}

#[test]
fn a_fresh_site_creates_its_secrets_first_and_everything_else_waits() {
    let s = site("news");
    let observed = Observed {
        cluster_domain: "cluster.local".into(),
        ..Default::default()
    };
    let p = plan(&s, &observed, now());
    assert_eq!(
        p.create_secrets,
        [Generated::DatabaseCredentials, Generated::WriteToken]
    );
    assert!(p.waiting_for_secrets);
    // The controller plans again with the created Secrets (the next test's input).
    assert!(p.applies.is_empty(), "{:?}", kinds(&p));
    assert!(p.pods.is_empty() && p.problems.is_empty());
}

#[test]
fn a_fresh_site_creates_every_child_once_its_secrets_exist() {
    let s = site("news");
    let p = plan(&s, &with_secrets(), now());
    let planned = kinds(&p);
    assert_eq!(planned[0].0, "ServiceAccount", "the pods name it: first");
    assert!(planned.iter().all(|(_, _, why)| *why == Outcome::Created));
    let names: Vec<&str> = planned.iter().map(|(k, _, _)| *k).collect();
    assert!(names.contains(&"Deployment") && names.contains(&"StatefulSet"));
    // app, client, headless, replicas, config
    assert_eq!(names.iter().filter(|k| **k == "Service").count(), 5);
    // app, database, primary (a new site gets 3 instances)
    assert_eq!(
        names
            .iter()
            .filter(|k| **k == "PodDisruptionBudget")
            .count(),
        3
    );
    assert_eq!(p.instances, 3);
    for kind in ["Role", "RoleBinding", "ConfigMap"] {
        assert!(names.contains(&kind), "{kind} in {names:?}");
    }
    assert_eq!(names.iter().filter(|k| **k == "ServiceAccount").count(), 2);
    assert_eq!(names.iter().filter(|k| **k == "NetworkPolicy").count(), 2);
}

#[test]
fn with_its_secrets_a_fresh_site_creates_everything_with_final_annotations() {
    let s = site("news");
    let p = plan(&s, &with_secrets(), now());
    assert!(p.create_secrets.is_empty() && !p.waiting_for_secrets);
    let Some(Child::Deployment(d)) = p
        .applies
        .iter()
        .map(|a| &a.child)
        .find(|c| matches!(c, Child::Deployment(_)))
    else {
        panic!("no Deployment in {:?}", kinds(&p));
    };
    let annotations = d.metadata.annotations.as_ref().unwrap();
    assert!(annotations.contains_key(crate::diff::HASH_ANNOTATION));
    assert!(annotations.contains_key(ha::TEMPLATE_HASH_ANNOTATION));
    let template = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
    let version = &template.annotations.as_ref().unwrap()
        [crate::resources::security::CREDENTIALS_VERSION_ANNOTATION];
    assert_eq!(
        version,
        &crate::resources::security::credentials_version(&[Some(&secret("c")), Some(&secret("t"))])
    );
    assert!(kinds(&p).iter().any(|(k, _, _)| *k == "StatefulSet"));
}

#[test]
fn a_steady_site_gets_an_empty_plan() {
    let s = site("news");
    let observed = steady(&s);
    let p = plan(&s, &observed, now());
    assert!(p.is_empty(), "{:?}", kinds(&p));
    assert!(p.problems.is_empty());
    assert_eq!(p.rollout, Rollout::Spec);
}

#[test]
fn a_hand_edit_is_restored_and_a_spec_change_is_an_update() {
    let mut s = site("news");
    let mut observed = steady(&s);
    if let Some(spec) = observed.deployment.as_mut().and_then(|d| d.spec.as_mut()) {
        spec.replicas = Some(7);
    }
    assert_eq!(
        kinds(&plan(&s, &observed, now())),
        [("Deployment", "news".to_string(), Outcome::Restored)]
    );
    let observed = steady(&s);
    s.spec.app.log_level = "debug".into();
    assert_eq!(
        kinds(&plan(&s, &observed, now())),
        [("Deployment", "news".to_string(), Outcome::Updated)]
    );
}

#[test]
fn a_paused_site_plans_nothing() {
    let mut s = site("news");
    s.spec.paused = true;
    let p = plan(&s, &with_secrets(), now());
    assert!(p.paused && p.is_empty());
}

#[test]
fn a_crash_looping_pod_is_evicted() {
    let mut s = site("news");
    s.spec.app.replicas = 3;
    let mut observed = steady(&s);
    observed.pods = vec![
        app_pod("news-a", "n1", true, None),
        app_pod("news-b", "n2", false, Some("CrashLoopBackOff")),
        app_pod("news-c", "n3", true, None),
    ];
    let p = plan(&s, &observed, now());
    let evict = p.pods.evict.as_ref().expect("an eviction");
    assert_eq!(
        (evict.pod.as_str(), evict.reason),
        ("news-b", Reason::CrashLoopBackOff)
    );
    assert!(p.applies.is_empty() && p.pods.force_delete.is_empty());
}

#[test]
fn a_failed_rollout_rolls_back_to_the_last_ready_template() {
    let s = site("news");
    let mut observed = steady(&s);
    let live = observed.deployment.as_mut().unwrap();
    live.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("deployment.kubernetes.io/revision".into(), "2".into());
    live.status.as_mut().unwrap().conditions = Some(vec![
        serde_json::from_value(json!({"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "timed out"}))
        .unwrap(),
    ]);
    let good_template = json!({"metadata": {"labels": {"app": "old", "pod-template-hash": "good"}},
        "spec": {"containers": [{"name": "article-server", "image": "article-server:0.9"}]}});
    let rs = |name: &str, revision: &str, hash: &str, ready: i32| -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"pod-template-hash": hash},
                "annotations": {"deployment.kubernetes.io/revision": revision},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": "news", "uid": "deployment-uid"}]},
            "spec": {"selector": {}, "template": good_template.clone()},
            "status": {"replicas": ready, "readyReplicas": ready},
        }))
        .unwrap()
    };
    observed.replica_sets = vec![
        rs("news-good", "1", "good", 2),
        rs("news-new", "2", "new", 0),
    ];
    let p = plan(&s, &observed, now());
    let Rollout::RollBack(failed) = &p.rollout else {
        panic!("{:?}", p.rollout);
    };
    assert_eq!(failed.restored_revision, "good");
    assert_eq!(failed.image, s.spec.app.image);
    let Some(Child::Deployment(d)) = p.applies.first().map(|a| &a.child) else {
        panic!("{:?}", kinds(&p));
    };
    let labels = d
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref();
    assert_eq!(labels.unwrap().get("app").map(String::as_str), Some("old"));
    assert!(!labels.unwrap().contains_key("pod-template-hash"));
    assert_eq!(p.problems[0].reason, Reason::RolloutFailed);
}

#[test]
fn pods_of_a_deleted_node_are_force_deleted() {
    let s = site("news");
    let mut observed = steady(&s);
    observed.pods = vec![
        app_pod("news-a", "n1", true, None),
        app_pod("news-b", "gone", true, None),
    ];
    let p = plan(&s, &observed, now());
    assert_eq!(
        p.pods.force_delete,
        [Orphan {
            pod: "news-b".into(),
            node: "gone".into()
        }]
    );
}

#[test]
fn a_rotation_request_replaces_the_token_once() {
    let mut s = site("news");
    let observed = steady(&s);
    s.metadata.annotations = Some(BTreeMap::from([(
        secrets::ROTATE_ANNOTATION.to_string(),
        "r1".to_string(),
    )]));
    let p = plan(&s, &observed, now());
    assert_eq!(
        p.rotate_write_token,
        Some(Rotation {
            request: "r1".into(),
            resource_version: "1".into()
        })
    );
    // The pods roll when the new token's version is observed (the next reconcile).
    assert!(p.applies.is_empty(), "{:?}", kinds(&p));

    let mut rotated = observed.clone();
    let token = rotated.write_token.as_mut().unwrap();
    token.resource_version = Some("2".into());
    token.annotations = Some(BTreeMap::from([(
        secrets::HANDLED_ANNOTATION.to_string(),
        "r1".to_string(),
    )]));
    let p = plan(&s, &rotated, now());
    assert_eq!(p.rotate_write_token, None, "handled: no second rotation");
    assert_eq!(
        kinds(&p),
        [("Deployment", "news".to_string(), Outcome::Updated)]
    );
}

#[test]
fn a_larger_storage_size_expands_the_claim() {
    let mut s = site("news");
    let mut observed = steady(&s);
    observed.claims = vec![
        serde_json::from_value::<PersistentVolumeClaim>(json!({
            "metadata": {"name": "data-news-postgresql-0"},
            "spec": {"resources": {"requests": {"storage": "1Gi"}}},
        }))
        .unwrap(),
    ];
    assert!(plan(&s, &observed, now()).expand_claims.is_empty());
    s.spec.database.storage.size = "2Gi".into();
    let p = plan(&s, &observed, now());
    assert_eq!(
        p.expand_claims,
        [Expansion {
            claim: "data-news-postgresql-0".into(),
            from: "1Gi".into(),
            to: "2Gi".into()
        }]
    );
    // The claim template is immutable: the StatefulSet keeps its size.
    assert!(p.applies.is_empty(), "{:?}", kinds(&p));
}

#[test]
fn a_refused_database_pod_degrades_and_is_looked_at_again_soon() {
    let s = site("news");
    let mut observed = steady(&s);
    observed.database_refusal = Some(
        r#"pods "news-postgresql-0" is forbidden: violates PodSecurity "restricted:latest""#.into(),
    );
    let p = plan(&s, &observed, now());
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].reason, Reason::PodSecurityRejected);
    assert!(
        p.problems[0]
            .message
            .starts_with("StatefulSet news-postgresql:")
    );
    assert_eq!(p.recheck, Some(Duration::from_secs(5)));
}

#[test]
fn a_missing_storage_class_holds_the_database_back() {
    let s = site("news");
    let observed = Observed {
        storage_class: StorageClassSeen::NoDefault,
        ..with_secrets()
    };
    let p = plan(&s, &observed, now());
    assert!(!kinds(&p).iter().any(|(k, _, _)| *k == "StatefulSet"));
    assert!(kinds(&p).iter().any(|(k, _, _)| *k == "Deployment"));
    assert_eq!(p.problems[0].reason, Reason::NoDefaultStorageClass);
    assert!(p.problems[0].blocks_database);
}

#[test]
fn a_scale_down_marks_the_pods_to_remove_once() {
    let mut s = site("news");
    s.spec.app.replicas = 4;
    let mut observed = steady(&s);
    observed.pods = vec![
        app_pod("news-a", "n1", true, None),
        app_pod("news-b", "n1", true, None),
        app_pod("news-c", "n2", true, None),
        app_pod("news-d", "n3", true, None),
    ];
    s.spec.app.replicas = 3;
    let p = plan(&s, &observed, now());
    assert_eq!(
        p.pods.mark_for_scale_down,
        ["news-a"],
        "zone-a had two pods"
    );
    assert_eq!(
        kinds(&p),
        [("Deployment", "news".to_string(), Outcome::Updated)]
    );
    // Marked already (a retry): not patched again.
    observed.pods[0]
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DELETION_COST_ANNOTATION.into(), SCALE_DOWN_COST.into());
    assert!(
        plan(&s, &observed, now())
            .pods
            .mark_for_scale_down
            .is_empty()
    );
}

#[test]
fn an_ingress_that_is_no_longer_asked_for_is_deleted_if_it_is_ours() {
    let s = site("news");
    let mut observed = steady(&s);
    let owned = |uid: &str| -> k8s_openapi::api::networking::v1::Ingress {
        serde_json::from_value(json!({"metadata": {"name": "news", "ownerReferences": [{
            "apiVersion": "articlesite.io/v1alpha1", "kind": "ArticleSite", "name": "news",
            "uid": uid}]}}))
        .unwrap()
    };
    observed.ingress = Some(owned(&s.metadata.uid.clone().unwrap_or_default()));
    assert_eq!(
        plan(&s, &observed, now()).delete_ingress.as_deref(),
        Some("news")
    );
    observed.ingress = Some(owned("someone-else"));
    assert_eq!(plan(&s, &observed, now()).delete_ingress, None);
}

// The database: what the operator asks of Patroni.

use crate::plan::database::{SWITCHOVER_ANNOTATION, SwitchoverReason};

/// One of Patroni's Endpoints (Patroni labels its objects with its scope).
fn endpoints(name: &str, annotations: serde_json::Value) -> k8s_openapi::api::core::v1::Endpoints {
    serde_json::from_value(json!({"metadata": {"name": name, "resourceVersion": "42",
        "labels": {"cluster-name": "news-postgresql"}, "annotations": annotations}}))
    .unwrap()
}

/// A member's `status` annotation as Patroni 4 writes it: a streaming replica has `state:
/// running` and `replication_state: streaming`.
fn patroni_status(role: &str, state: &str, xlog: i64) -> serde_json::Value {
    if state == "streaming" {
        json!({"role": role, "state": "running", "replication_state": "streaming",
            "xlog_location": xlog})
    } else {
        json!({"role": role, "state": state, "xlog_location": xlog})
    }
}

fn db_pod(name: &str, node: &str, role: &str, state: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "database",
            "app.kubernetes.io/instance": "news", "role": role, "controller-revision-hash": "r1"},
            "annotations": {"status": patroni_status(role, state, 100).to_string()}},
        "spec": {"nodeName": node, "containers": [{"name": "postgresql"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap()
}

/// Sets whether node `name` is cordoned in the node cache's facts.
fn cordon(o: &mut Observed, name: &str, cordoned: bool) {
    o.node_facts.retain(|n| n.name != name);
    o.node_facts.push(crate::spread::NodeFacts {
        name: name.into(),
        unschedulable: cordoned,
        ..Default::default()
    });
}

/// A steady three-instance site with Patroni running: news-postgresql-0 leads, -1 is in sync.
fn replicated() -> (ArticleSite, Observed) {
    let s = site("news");
    let mut o = steady(&s);
    o.pods = vec![
        db_pod("news-postgresql-0", "n1", "primary", "running"),
        db_pod("news-postgresql-1", "n2", "replica", "streaming"),
        db_pod("news-postgresql-2", "n3", "replica", "streaming"),
    ];
    o.endpoints = vec![
        endpoints("news-postgresql", json!({"leader": "news-postgresql-0"})),
        endpoints(
            "news-postgresql-sync",
            json!({"leader": "news-postgresql-0", "sync_standby": "news-postgresql-1"}),
        ),
        endpoints(
            "news-postgresql-config",
            json!({"config": "{\"ttl\":20,\"synchronous_mode\":\"quorum\"}",
                "initialize": "7300000000000000001"}),
        ),
    ];
    cordon(&mut o, "n1", false);
    (s, o)
}

#[test]
fn patroni_running_steady_plans_nothing() {
    let (s, o) = replicated();
    let p = plan(&s, &o, now());
    assert!(p.is_empty(), "{:?} {:?}", kinds(&p), p.database);
}

#[test]
fn an_upgraded_single_instance_site_keeps_one_instance() {
    let s = site("news");
    let mut o = steady(&s);
    // The StatefulSet of an operator from before `instances`: one replica.
    if let Some(spec) = o.statefulset.as_mut().and_then(|s| s.spec.as_mut()) {
        spec.replicas = Some(1);
    }
    let p = plan(&s, &o, now());
    assert_eq!(p.instances, 1);
    let Some(Child::StatefulSet(sts)) = p
        .applies
        .iter()
        .map(|a| &a.child)
        .find(|c| matches!(c, Child::StatefulSet(_)))
    else {
        panic!(
            "the StatefulSet is applied with one replica: {:?}",
            kinds(&p)
        );
    };
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(1));
    // One instance: no primary budget, and the one the site had is deleted.
    let primary = o
        .pdbs
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("news-postgresql-primary"));
    assert!(primary.is_some());
    assert_eq!(p.delete_pdbs, ["news-postgresql-primary"]);
}

#[test]
fn a_switchover_request_is_handed_to_patroni_once() {
    let (mut s, o) = replicated();
    s.metadata.annotations = Some(
        [(
            SWITCHOVER_ANNOTATION.to_string(),
            "news-postgresql-1".to_string(),
        )]
        .into(),
    );
    let p = plan(&s, &o, now()).database;
    let sw = p.switchover.expect("a switchover");
    assert_eq!(
        (sw.leader.as_str(), sw.member.as_deref()),
        ("news-postgresql-0", Some("news-postgresql-1"))
    );
    assert_eq!(sw.reason, SwitchoverReason::Requested);
    assert!(!sw.object_exists);
    assert!(p.clear_annotation && p.refused.is_none());

    // `any` lets Patroni choose; a non-synchronous, unknown or primary target is refused.
    for (value, member, refused) in [
        ("any", None, None),
        ("news-postgresql-2", None, Some("not a synchronous standby")),
        ("news-postgresql-7", None, Some("not an instance")),
        ("news-postgresql-0", None, Some("already the primary")),
    ] {
        s.metadata.annotations =
            Some([(SWITCHOVER_ANNOTATION.to_string(), value.to_string())].into());
        let p = plan(&s, &o, now()).database;
        assert!(p.clear_annotation, "{value}");
        match refused {
            None => assert_eq!(p.switchover.unwrap().member, member, "{value}"),
            Some(why) => {
                assert!(p.switchover.is_none(), "{value}");
                assert!(
                    p.refused.as_deref().unwrap().contains(why),
                    "{value}: {:?}",
                    p.refused
                );
            }
        }
    }
}

#[test]
fn a_cordoned_primary_node_asks_for_exactly_one_switchover() {
    let (mut s, mut o) = replicated();
    cordon(&mut o, "n1", true);
    let p = plan(&s, &o, now()).database;
    let sw = p.switchover.expect("a switchover before the drain");
    assert_eq!(
        sw.member.as_deref(),
        Some("news-postgresql-1"),
        "the synchronous standby"
    );
    assert_eq!(sw.reason, SwitchoverReason::NodeDrain);
    assert!(!p.clear_annotation);

    // Recorded as pending in the status: no second request while it is.
    let requested = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now());
    s.status = Some(crate::crd::ArticleSiteStatus {
        database: Some(crate::crd::DatabaseStatus {
            pending_switchover: Some(sw.request(&requested)),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(plan(&s, &o, now()).database.switchover.is_none());
    // Nor while Patroni's failover object holds one.
    s.status = None;
    o.endpoints.push(endpoints(
        "news-postgresql-failover",
        json!({"leader": "news-postgresql-0"}),
    ));
    assert!(plan(&s, &o, now()).database.switchover.is_none());
    // A pending request times out: one more may be asked for.
    o.endpoints.pop();
    let later = now() + crate::plan::database::SWITCHOVER_TIMEOUT;
    s.status = Some(crate::crd::ArticleSiteStatus {
        database: Some(crate::crd::DatabaseStatus {
            pending_switchover: Some(sw.request(&requested)),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(plan(&s, &o, later).database.switchover.is_some());
}

#[test]
fn no_switchover_without_a_healthy_synchronous_standby() {
    let (s, mut o) = replicated();
    cordon(&mut o, "n1", true);
    o.pods[1] = db_pod("news-postgresql-1", "n2", "replica", "starting");
    assert!(plan(&s, &o, now()).database.switchover.is_none());
}

#[test]
fn a_changed_synchronous_mode_is_written_into_patronis_configuration() {
    let (mut s, o) = replicated();
    s.spec.database.synchronous_mode = crate::crd::SynchronousMode::Strict;
    let p = plan(&s, &o, now()).database.config.expect("a config patch");
    assert_eq!(p.resource_version, "42");
    assert_eq!(p.config["synchronous_mode_strict"], true);
    assert_eq!(p.config["ttl"], 20);
}

#[test]
fn a_cluster_bootstrapped_with_one_named_standby_moves_to_quorum_commit() {
    // Sites bootstrapped before quorum commit stored `synchronous_mode: true`.
    let (s, mut o) = replicated();
    o.endpoints[2] = endpoints(
        "news-postgresql-config",
        json!({"config": "{\"ttl\":20,\"synchronous_mode\":true}",
            "initialize": "7300000000000000001"}),
    );
    let p = plan(&s, &o, now()).database.config.expect("a config patch");
    assert_eq!(
        (
            &p.config["synchronous_mode"],
            &p.config["synchronous_mode_strict"]
        ),
        (&json!("quorum"), &json!(false))
    );
}

#[test]
fn stale_endpoint_slices_go_once_the_service_has_no_selector() {
    let (s, mut o) = replicated();
    o.stale_endpoint_slices = vec!["news-postgresql-abcde".into()];
    assert_eq!(
        plan(&s, &o, now()).database.delete_endpoint_slices,
        ["news-postgresql-abcde"]
    );
    // Before the apply removed the selector, the controller still owns them.
    for svc in o.services.iter_mut() {
        if svc.metadata.name.as_deref() == Some("news-postgresql") {
            svc.spec.as_mut().unwrap().selector = Some(BTreeMap::from([("a".into(), "b".into())]));
        }
    }
    assert!(
        plan(&s, &o, now())
            .database
            .delete_endpoint_slices
            .is_empty()
    );
}

#[test]
fn the_endpoints_controllers_leftover_goes_and_growth_waits_for_patroni() {
    // An upgraded single-instance site: the client Service just lost its selector, its old
    // Endpoints (the endpoints controller's, without Patroni's label) is still there, and
    // Patroni on pod 0 has not recorded the cluster yet.
    let (mut s, mut o) = replicated();
    let leftover: k8s_openapi::api::core::v1::Endpoints =
        serde_json::from_value(json!({"metadata": {"name": "news-postgresql"}})).unwrap();
    o.endpoints = vec![leftover];
    statefulset_replicas(&mut o, 1);
    s.spec.database.instances = Some(3);
    let p = plan(&s, &o, now());
    assert_eq!(
        p.database.delete_endpoints.as_deref(),
        Some("news-postgresql")
    );
    assert_eq!(
        p.instances, 1,
        "no new pod before Patroni took pod 0's data over"
    );
    // Patroni's own object is never deleted, and once the cluster is initialized it grows.
    let (_, o) = replicated();
    let p = plan(&s, &o, now());
    assert_eq!(p.database.delete_endpoints, None);
    assert_eq!(p.instances, 3);
}

/// The StatefulSet of `replicated()` after a template change: its pods run revision r1, the
/// update revision is r2; `updated` pods are already on r2.
fn template_changed(o: &mut Observed, updated: &[&str]) {
    let sts = o.statefulset.as_mut().unwrap();
    sts.spec.as_mut().unwrap().replicas = Some(3);
    let st = sts.status.as_mut().unwrap();
    st.replicas = 3;
    st.update_revision = Some("r2".into());
    for p in o.pods.iter_mut() {
        if updated.contains(&p.metadata.name.as_deref().unwrap()) {
            p.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("controller-revision-hash".into(), "r2".into());
        }
    }
}

#[test]
fn a_new_template_restarts_replicas_first_then_switches_over_then_the_primary() {
    let (s, mut o) = replicated();
    template_changed(&mut o, &[]);
    // The replicas first, highest ordinal first, one at a time.
    assert_eq!(
        plan(&s, &o, now()).database.restart_pod.as_deref(),
        Some("news-postgresql-2")
    );
    template_changed(&mut o, &["news-postgresql-2"]);
    assert_eq!(
        plan(&s, &o, now()).database.restart_pod.as_deref(),
        Some("news-postgresql-1")
    );
    // Not while a restarted pod is not ready again.
    let mut starting = o.clone();
    starting.pods[2] = db_pod("news-postgresql-2", "n3", "replica", "starting");
    starting.pods[2].status = serde_json::from_value(json!({"phase": "Running",
        "conditions": [{"type": "Ready", "status": "False"}]}))
    .unwrap();
    starting.pods[2]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("controller-revision-hash".into(), "r2".into());
    let p = plan(&s, &starting, now()).database;
    assert_eq!((p.restart_pod, p.switchover), (None, None));
    // Only the primary is left: a switchover to the synchronous standby, not a deletion.
    template_changed(&mut o, &["news-postgresql-2", "news-postgresql-1"]);
    let p = plan(&s, &o, now()).database;
    assert_eq!(p.restart_pod, None);
    let sw = p
        .switchover
        .expect("a switchover before the primary's restart");
    assert_eq!(
        (sw.member.as_deref(), sw.reason),
        (Some("news-postgresql-1"), SwitchoverReason::Restart)
    );
    // After it, the old primary is a replica: deleted.
    o.endpoints[0] = endpoints("news-postgresql", json!({"leader": "news-postgresql-1"}));
    assert_eq!(
        plan(&s, &o, now()).database.restart_pod.as_deref(),
        Some("news-postgresql-0")
    );
    // Everything on r2: nothing.
    template_changed(
        &mut o,
        &[
            "news-postgresql-2",
            "news-postgresql-1",
            "news-postgresql-0",
        ],
    );
    assert!(plan(&s, &o, now()).database.is_empty());
}

/// The StatefulSet's replica count as the operator last applied it.
fn statefulset_replicas(o: &mut Observed, n: i32) {
    o.statefulset
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .replicas = Some(n);
}

#[test]
fn a_single_instance_or_a_database_without_patroni_is_simply_restarted() {
    let (s, mut o) = replicated();
    o.endpoints.clear();
    template_changed(&mut o, &["news-postgresql-2", "news-postgresql-1"]);
    // No Patroni has ever published a leader: nobody to switch over to.
    assert_eq!(
        plan(&s, &o, now()).database.restart_pod.as_deref(),
        Some("news-postgresql-0")
    );
    // A leader race in progress: wait for it.
    o.endpoints = vec![endpoints("news-postgresql", json!({"leader": ""}))];
    assert_eq!(plan(&s, &o, now()).database.restart_pod, None);
    // One instance: restarted even with a leader object.
    o.pods.truncate(1);
    statefulset_replicas(&mut o, 1);
    let mut one = s.clone();
    one.spec.database.instances = Some(1);
    assert_eq!(
        plan(&one, &o, now()).database.restart_pod.as_deref(),
        Some("news-postgresql-0")
    );
}

/// `pod` unready since `since` (seconds since the epoch; `now()` is 10,000), crash-looping
/// or with Patroni reporting `state`.
fn failing(o: &mut Observed, pod: &str, since: i64, crash_looping: bool, state: &str) {
    let p = o
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some(pod))
        .unwrap();
    let at = Timestamp::from_second(since).unwrap().to_string();
    let mut status = json!({"phase": "Running", "conditions": [{"type": "Ready",
        "status": "False", "lastTransitionTime": at}]});
    if crash_looping {
        status["containerStatuses"] = json!([{"name": "postgresql", "image": "i",
            "ready": false, "restartCount": 9,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]);
    }
    p.status = serde_json::from_value(status).unwrap();
    p.metadata.annotations.as_mut().unwrap().insert(
        "status".into(),
        json!({"role": "replica", "state": state}).to_string(),
    );
}

#[test]
fn a_standby_that_keeps_failing_is_rebuilt_from_the_primary() {
    let (s, mut o) = replicated();
    // Crash-looping for 400 s (the default threshold is 300 s).
    failing(&mut o, "news-postgresql-2", 9_600, true, "stopped");
    let r = plan(&s, &o, now()).database.rebuild.expect("a rebuild");
    assert_eq!(
        (r.pod.as_str(), r.claim.as_str()),
        ("news-postgresql-2", "data-news-postgresql-2")
    );
    assert!(r.why.contains("crash-looping"), "{}", r.why);
    // Patroni cannot start PostgreSQL (a diverged timeline pg_rewind could not mend, say).
    let (s2, mut o2) = replicated();
    failing(&mut o2, "news-postgresql-1", 9_000, false, "start failed");
    let r = plan(&s2, &o2, now()).database.rebuild.expect("a rebuild");
    assert_eq!(r.pod, "news-postgresql-1");
    assert!(r.why.contains("start failed"), "{}", r.why);
}

#[test]
fn a_standby_is_not_rebuilt_when_that_could_cost_data_or_loop() {
    let rebuild_of = |s: &ArticleSite, o: &Observed| plan(s, o, now()).database.rebuild;
    // Failing, but not for long enough.
    let (s, mut o) = replicated();
    failing(&mut o, "news-postgresql-2", 9_900, true, "stopped");
    assert_eq!(rebuild_of(&s, &o), None, "100 s < 300 s");
    // Unready for long, but Patroni is cloning it (not a failure).
    let (s, mut o) = replicated();
    failing(
        &mut o,
        "news-postgresql-2",
        9_000,
        false,
        "creating replica",
    );
    assert_eq!(rebuild_of(&s, &o), None, "a long clone");
    // Never the primary.
    let (s, mut o) = replicated();
    failing(&mut o, "news-postgresql-0", 9_000, true, "stopped");
    assert_eq!(rebuild_of(&s, &o), None, "the primary");
    // Not on another pod template than the primary's: the template may be what fails.
    let (s, mut o) = replicated();
    failing(&mut o, "news-postgresql-2", 9_000, true, "stopped");
    template_changed(&mut o, &["news-postgresql-2"]);
    let p = plan(&s, &o, now()).database;
    assert_eq!(p.rebuild, None, "a new template");
    assert_eq!(p.restart_pod, None, "and the restart order waits for it");
    // Turned off.
    let (mut s, mut o) = replicated();
    failing(&mut o, "news-postgresql-2", 9_000, true, "stopped");
    s.spec.database.rebuild_failing_standby_seconds = 0;
    assert_eq!(rebuild_of(&s, &o), None, "turned off");
    // Not again within 30 minutes of the last rebuild.
    let (mut s, mut o) = replicated();
    failing(&mut o, "news-postgresql-2", 9_000, true, "stopped");
    s.status = Some(crate::crd::ArticleSiteStatus {
        database: Some(crate::crd::DatabaseStatus {
            last_rebuild: Some(crate::crd::StandbyRebuild {
                instance: "news-postgresql-1".into(),
                at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::from_second(9_000).unwrap(),
                ),
                reason: "r".into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(rebuild_of(&s, &o), None, "rebuilt 1,000 s ago");
    // Not while the primary does not serve (nothing to clone from).
    let (s, mut o) = replicated();
    failing(&mut o, "news-postgresql-2", 9_000, true, "stopped");
    failing(&mut o, "news-postgresql-0", 9_000, false, "running");
    assert_eq!(rebuild_of(&s, &o), None, "no serving primary");
}

/// An autoscaled site that has converged: created at its minimum, then handed over.
fn steady_autoscaled(site: &ArticleSite) -> Observed {
    let created = steady(site);
    let handed_over = plan(site, &created, now());
    applied(created, &handed_over)
}

fn autoscaled(mut s: ArticleSite, spec: serde_json::Value) -> ArticleSite {
    s.spec.app.autoscaling = Some(serde_json::from_value(spec).unwrap());
    s
}

/// The live Deployment as the operator's apply left it: its manager owns `spec.replicas`.
fn owned_by_operator(observed: &mut Observed) {
    let d = observed.deployment.as_mut().unwrap();
    d.metadata.managed_fields = Some(vec![
        serde_json::from_value(json!({
            "manager": crate::MANAGER, "operation": "Apply", "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
        }))
        .unwrap(),
    ]);
}

#[test]
fn turning_autoscaling_on_hands_the_replica_count_over_once() {
    let s = site("news");
    let mut observed = steady(&s);
    owned_by_operator(&mut observed);
    let on = autoscaled(s, json!({"maxReplicas": 6}));
    let p = plan(&on, &observed, now());
    assert_eq!(p.handover_replicas, Some(3), "the live count, no jump");
    let planned = kinds(&p);
    assert!(planned.contains(&("Deployment", "news".to_string(), Outcome::Updated)));
    assert!(planned.contains(&(
        "HorizontalPodAutoscaler",
        "news".to_string(),
        Outcome::Created
    )));
    let deployment = p
        .applies
        .iter()
        .find_map(|a| match &a.child {
            Child::Deployment(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, None);

    // Applied: the operator's apply no longer owns replicas, and the autoscaler changed it.
    let mut after = applied(observed, &p);
    if let Some(spec) = after.deployment.as_mut().and_then(|d| d.spec.as_mut()) {
        spec.replicas = Some(5);
    }
    let again = plan(&on, &after, now());
    assert!(
        again.is_empty(),
        "the autoscaler's count is never fought: {:?}",
        kinds(&again)
    );
}

#[test]
fn turning_autoscaling_off_deletes_the_autoscaler_and_takes_replicas_back() {
    let on = autoscaled(site("news"), json!({"maxReplicas": 6}));
    let mut observed = steady_autoscaled(&on);
    assert!(observed.autoscaler.is_some());
    observed
        .autoscaler
        .as_mut()
        .unwrap()
        .metadata
        .owner_references = Some(vec![crate::resources::owner_reference(&on)]);
    let off = site("news");
    let p = plan(&off, &observed, now());
    assert_eq!(p.delete_autoscaler.as_deref(), Some("news"));
    assert_eq!(p.handover_replicas, None);
    let replicas = p.applies.iter().find_map(|a| match &a.child {
        Child::Deployment(d) => d.spec.as_ref().and_then(|s| s.replicas),
        _ => None,
    });
    assert_eq!(replicas, Some(3), "spec.app.replicas sets the count again");
}

#[test]
fn autoscaling_keeps_the_next_pod_to_go_marked() {
    let s = autoscaled(site("news"), json!({"minReplicas": 2, "maxReplicas": 6}));
    let mut observed = steady_autoscaled(&s);
    if let Some(spec) = observed.deployment.as_mut().and_then(|d| d.spec.as_mut()) {
        spec.replicas = Some(4);
    }
    observed.pods = vec![
        app_pod("news-a", "n1", true, None),
        app_pod("news-b", "n1", true, None),
        app_pod("news-c", "n2", true, None),
        app_pod("news-d", "n3", true, None),
    ];
    // Marked earlier, when it was the next to go; now zone-a has two pods.
    observed.pods[2]
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DELETION_COST_ANNOTATION.into(), SCALE_DOWN_COST.into());
    let p = plan(&s, &observed, now());
    assert_eq!(
        p.pods.mark_for_scale_down,
        ["news-a"],
        "zone-a had two pods"
    );
    assert_eq!(p.pods.unmark_for_scale_down, ["news-c"]);
    assert!(p.applies.is_empty(), "{:?}", kinds(&p));

    // At the minimum nothing can go: no mark is kept.
    if let Some(spec) = observed.deployment.as_mut().and_then(|d| d.spec.as_mut()) {
        spec.replicas = Some(2);
    }
    observed.pods.truncate(2);
    observed.pods[0]
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DELETION_COST_ANNOTATION.into(), SCALE_DOWN_COST.into());
    let p = plan(&s, &observed, now());
    assert!(p.pods.mark_for_scale_down.is_empty());
    assert_eq!(p.pods.unmark_for_scale_down, ["news-a"]);
}

#[test]
fn a_site_created_with_autoscaling_starts_at_its_minimum_then_hands_over() {
    let s = autoscaled(site("news"), json!({"maxReplicas": 6}));
    let p = plan(&s, &with_secrets(), now());
    let replicas = p.applies.iter().find_map(|a| match &a.child {
        Child::Deployment(d) => d.spec.as_ref().and_then(|s| s.replicas),
        _ => None,
    });
    assert_eq!(replicas, Some(3), "not the API server's default of 1");
    let mut created = applied(with_secrets(), &p);
    owned_by_operator(&mut created);
    let next = plan(&s, &created, now());
    assert_eq!(next.handover_replicas, Some(3));
    let replicas = next.applies.iter().find_map(|a| match &a.child {
        Child::Deployment(d) => Some(d.spec.as_ref().and_then(|s| s.replicas)),
        _ => None,
    });
    assert_eq!(replicas, Some(None), "then replicas is left out");
}

/// `replicated()` on three nodes in three zones, Ready for an hour, the StatefulSet at three.
fn replicated_on_three_nodes() -> (ArticleSite, Observed) {
    let (s, mut o) = replicated();
    o.node_facts = [("n1", "a"), ("n2", "b"), ("n3", "c")]
        .into_iter()
        .map(|(name, zone)| crate::spread::NodeFacts {
            name: name.into(),
            zone: zone.into(),
            ready_since: Some(Timestamp::from_second(10_000 - 3_600).unwrap()),
            ..Default::default()
        })
        .collect();
    statefulset_replicas(&mut o, 3);
    (s, o)
}

fn place(o: &mut Observed, pod: &str, node: &str) {
    let p = o
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some(pod))
        .unwrap();
    p.spec.as_mut().unwrap().node_name = Some(node.into());
}

fn last_move(s: &mut ArticleSite, instance: &str, from: &str, secs_ago: i64) {
    let status = s.status.get_or_insert_with(Default::default);
    let db = status.database.get_or_insert_with(Default::default);
    db.last_move = Some(crate::crd::InstanceMoved {
        instance: instance.into(),
        from: from.into(),
        at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::from_second(10_000 - secs_ago).unwrap(),
        ),
    });
}

#[test]
fn a_replica_beside_the_primary_moves_to_the_free_node_once_every_instance_serves() {
    let (s, mut o) = replicated_on_three_nodes();
    assert!(plan(&s, &o, now()).database.is_empty(), "one per node");
    // Recreated after its node was away, -2 landed beside the primary.
    place(&mut o, "news-postgresql-2", "n1");
    let m = plan(&s, &o, now()).database.move_instance.expect("a move");
    // Never the primary (-0, first by name).
    assert_eq!(
        (m.pod.as_str(), m.from.as_str()),
        ("news-postgresql-2", "n1")
    );
    assert!(
        m.counts.contains("n1: 2") && m.counts.contains("n3: 0"),
        "{}",
        m.counts
    );

    // Not while an instance does not serve: -1 is still catching up.
    let mut catching_up = o.clone();
    let p = catching_up
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("news-postgresql-1"))
        .unwrap();
    p.metadata.annotations.as_mut().unwrap().insert(
        "status".into(),
        patroni_status("replica", "starting", 90).to_string(),
    );
    assert_eq!(plan(&s, &catching_up, now()).database.move_instance, None);
    // Not to a node back for 10 s only: looked at again when it has settled.
    let mut back = o.clone();
    back.node_facts[2].ready_since = Some(Timestamp::from_second(9_990).unwrap());
    let p = plan(&s, &back, now());
    assert_eq!(p.database.move_instance, None);
    assert_eq!(p.recheck, Some(std::time::Duration::from_secs(50)));
    // Not within a minute of the last move.
    let mut moved = s.clone();
    last_move(&mut moved, "news-postgresql-1", "n2", 30);
    let p = plan(&moved, &o, now());
    assert_eq!(p.database.move_instance, None);
    assert_eq!(p.recheck, Some(std::time::Duration::from_secs(30)));
    // Spreading switched off.
    let mut off = s.clone();
    off.spec.high_availability.spread = crate::crd::SpreadPolicy::None;
    assert_eq!(plan(&off, &o, now()).database.move_instance, None);
}

/// Sets when `pod` was created, `secs_ago` before `now()`.
fn created(o: &mut Observed, pod: &str, secs_ago: i64) {
    let p = o
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some(pod))
        .unwrap();
    p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(10_000 - secs_ago).unwrap(),
    ));
}

#[test]
fn a_replica_held_on_its_node_by_its_volume_is_rebuilt_elsewhere_once() {
    let (mut s, mut o) = replicated_on_three_nodes();
    place(&mut o, "news-postgresql-2", "n1");
    // Moved off n1 two minutes ago, and its replacement (made 20 s after) is on n1 again.
    last_move(&mut s, "news-postgresql-2", "n1", 120);
    created(&mut o, "news-postgresql-2", 100);
    let p = plan(&s, &o, now()).database;
    assert_eq!(p.move_instance, None);
    let r = p.rebuild.expect("a rebuild on a new volume");
    assert_eq!(
        (r.pod.as_str(), r.claim.as_str()),
        ("news-postgresql-2", "data-news-postgresql-2")
    );
    assert!(r.why.contains("came back to n1"), "{}", r.why);
    // After that rebuild, a scheduler that still insists is left alone.
    s.status
        .as_mut()
        .unwrap()
        .database
        .as_mut()
        .unwrap()
        .last_rebuild = Some(crate::crd::StandbyRebuild {
        instance: "news-postgresql-2".into(),
        at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::from_second(9_900).unwrap(),
        ),
        reason: r.why,
    });
    assert!(plan(&s, &o, now()).database.is_empty());
    // A move long ago says nothing of this one: a plain move.
    let (mut s, _) = replicated_on_three_nodes();
    last_move(&mut s, "news-postgresql-2", "n1", 3_600);
    assert!(plan(&s, &o, now()).database.move_instance.is_some());
    // Nor does a recent move whose replacement went elsewhere: this pod was made minutes
    // later (after another fault), so a plain move again (seen on three real nodes).
    let (mut s, _) = replicated_on_three_nodes();
    last_move(&mut s, "news-postgresql-2", "n1", 400);
    let mut later = o.clone();
    created(&mut later, "news-postgresql-2", 60);
    let p = plan(&s, &later, now()).database;
    assert_eq!(p.rebuild, None);
    assert!(p.move_instance.is_some());
}

#[test]
fn in_synchronous_modes_the_only_standby_stays_where_it_is() {
    let (s, mut o) = replicated_on_three_nodes();
    // Two instances, both on n1: moving the replica would leave the primary without a standby.
    o.pods.truncate(2);
    place(&mut o, "news-postgresql-1", "n1");
    statefulset_replicas(&mut o, 2);
    let mut two = s.clone();
    two.spec.database.instances = Some(2);
    assert_eq!(plan(&two, &o, now()).database.move_instance, None);
    // Asynchronous: no standby is waited for, so it may move.
    two.spec.database.synchronous_mode = crate::crd::SynchronousMode::Asynchronous;
    let m = plan(&two, &o, now())
        .database
        .move_instance
        .expect("a move in asynchronous mode");
    assert_eq!(m.pod, "news-postgresql-1");
}
