//! The Argo CD health check (`docs/gitops/argocd-health.lua`), run by a real Lua 5.1 interpreter
//! against status samples of every kind the operator writes (docs/operator-design.md, Status).
//! A live site is checked in tests/helm.rs; re-applying a manifest with server-side apply is a
//! no-op (tests/operator.rs, `reapplying_a_manifest_changes_nothing`).

mod common;

use serde_json::{Value, json};

use common::gitops::argocd_health;

fn cond(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

fn site(spec: Value, status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "articlesite.io/v1alpha1", "kind": "ArticleSite",
        "metadata": {"name": "news", "namespace": "default", "generation": 3},
        "spec": spec,
    });
    if let Some(s) = status {
        obj["status"] = s;
    }
    obj
}

fn status(observed: i64, conditions: Vec<Value>) -> Option<Value> {
    Some(
        json!({"observedGeneration": observed, "conditions": conditions,
                "app": {"replicas": 3, "readyReplicas": 3, "ready": "3/3"}}),
    )
}

#[test]
fn argocd_health_check_follows_the_conditions() {
    let spec = json!({"app": {"image": "articlesite/article-server:0.1.0", "replicas": 3}});
    let ready = |g| {
        cond(
            "Ready",
            "True",
            "SiteReady",
            "3 app pods ready, database ready",
            g,
        )
    };
    let reconciled = |g| {
        cond(
            "Progressing",
            "False",
            "Reconciled",
            "all owned objects are up to date",
            g,
        )
    };
    let fine = |g| cond("Degraded", "False", "AsExpected", "no problems found", g);
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "no status yet",
            site(spec.clone(), None),
            "Progressing",
            "Waiting for the operator to observe generation 3",
        ),
        (
            "status of an older generation",
            site(
                spec.clone(),
                status(2, vec![ready(2), reconciled(2), fine(2)]),
            ),
            "Progressing",
            "Waiting for the operator to observe generation 3",
        ),
        (
            "ready",
            site(
                spec.clone(),
                status(3, vec![ready(3), reconciled(3), fine(3)]),
            ),
            "Healthy",
            "SiteReady: 3 app pods ready, database ready",
        ),
        (
            "Ready condition of an older generation",
            site(
                spec.clone(),
                status(3, vec![ready(2), reconciled(3), fine(3)]),
            ),
            "Progressing",
            "Waiting for the Ready condition",
        ),
        (
            "rolling out",
            site(
                spec.clone(),
                status(
                    3,
                    vec![
                        cond(
                            "Ready",
                            "False",
                            "AppNotReady",
                            "1/3 app pods ready and up to date",
                            3,
                        ),
                        cond(
                            "Progressing",
                            "True",
                            "RollingOut",
                            "app 1/3 ready, database Ready",
                            3,
                        ),
                        fine(3),
                    ],
                ),
            ),
            "Progressing",
            "RollingOut: app 1/3 ready, database Ready",
        ),
        (
            "a problem only the user can fix",
            site(
                spec.clone(),
                status(
                    3,
                    vec![
                        cond(
                            "Ready",
                            "False",
                            "DatabaseNotReady",
                            "database is Provisioning",
                            3,
                        ),
                        cond(
                            "Progressing",
                            "False",
                            "Blocked",
                            "blocked by the problems reported in the Degraded condition",
                            3,
                        ),
                        cond(
                            "Degraded",
                            "True",
                            "StorageClassNotFound",
                            "spec.database.storage.storageClass: StorageClass \"fast\" does not exist",
                            3,
                        ),
                    ],
                ),
            ),
            "Degraded",
            "StorageClassNotFound: spec.database.storage.storageClass: StorageClass \"fast\" does not exist",
        ),
        (
            "ready, yet a problem",
            site(
                spec.clone(),
                status(
                    3,
                    vec![
                        ready(3),
                        reconciled(3),
                        cond(
                            "Degraded",
                            "True",
                            "TLSSecretNotFound",
                            "spec.ingress.tls.secretName: Secret \"c\" does not exist",
                            3,
                        ),
                    ],
                ),
            ),
            "Degraded",
            "TLSSecretNotFound: spec.ingress.tls.secretName: Secret \"c\" does not exist",
        ),
        (
            "not ready after the rollout",
            site(
                spec.clone(),
                status(
                    3,
                    vec![
                        cond(
                            "Ready",
                            "False",
                            "DatabaseNotReady",
                            "database is NotReady",
                            3,
                        ),
                        reconciled(3),
                        fine(3),
                    ],
                ),
            ),
            "Degraded",
            "DatabaseNotReady: database is NotReady",
        ),
        (
            "paused",
            site(
                json!({"paused": true, "app": {"image": "x:1"}}),
                status(
                    3,
                    vec![
                        ready(3),
                        cond(
                            "Progressing",
                            "False",
                            "Paused",
                            "spec.paused is true: owned objects are not reconciled",
                            3,
                        ),
                        fine(3),
                    ],
                ),
            ),
            "Suspended",
            "Paused: spec.paused is true: owned objects are not reconciled",
        ),
        (
            "scaled to zero",
            site(
                spec.clone(),
                status(
                    3,
                    vec![
                        cond(
                            "Ready",
                            "False",
                            "ScaledToZero",
                            "spec.app.replicas is 0: the site serves no requests",
                            3,
                        ),
                        reconciled(3),
                        fine(3),
                    ],
                ),
            ),
            "Suspended",
            "ScaledToZero: spec.app.replicas is 0: the site serves no requests",
        ),
        (
            "non-ASCII message",
            site(
                spec.clone(),
                status(
                    3,
                    vec![
                        cond(
                            "Ready",
                            "False",
                            "AppNotReady",
                            "pods \u{e9}chou\u{e9}s \\ \"quoted\"\nline",
                            3,
                        ),
                        cond("Progressing", "False", "Reconciled", "", 3),
                        fine(3),
                    ],
                ),
            ),
            "Degraded",
            "AppNotReady: pods \u{e9}chou\u{e9}s \\ \"quoted\"\nline",
        ),
    ];
    let mut failures = Vec::new();
    for (what, obj, status, message) in &cases {
        let got = argocd_health(obj);
        if got != (status.to_string(), message.to_string()) {
            failures.push(format!(
                "{what}: expected ({status}, {message:?}), got {got:?}"
            ));
        }
    }
    println!(
        "Argo CD health check: {} samples evaluated by lua5.1",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
