//! Security integration tests against the local control plane: pods pass the `restricted` Pod
//! Security Standard as judged by the API server's own PodSecurity admission, no secret value
//! appears in anything the operator writes, rotation is explicit, and NetworkPolicies isolate
//! sites. Each test has its own namespace and its own operator process.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use common::crd::install_crd;
use common::database::secret_value;
use common::operator::OperatorProcess;
use common::site::{
    IMAGE, condition, message, site, wait_condition, wait_site_ready, wait_warning_event,
};
use common::{ClusterScoped, TestNamespace, client, namespace_with_operator, wait_for};

/// The labels a platform team puts on namespaces that enforce the restricted profile.
const RESTRICTED: [(&str, &str); 2] = [
    ("pod-security.kubernetes.io/enforce", "restricted"),
    ("pod-security.kubernetes.io/enforce-version", "latest"),
];

fn instance(site: &str) -> ListParams {
    ListParams::default().labels(&format!("app.kubernetes.io/instance={site}"))
}

async fn live_pods(client: &Client, ns: &str, site: &str, component: &str) -> Vec<Pod> {
    common::pods::live_pods(&Api::namespaced(client.clone(), ns), site, component)
        .await
        .expect("list pods")
}

/// Asserts the restricted settings on a pod as the API server stored it.
/// Only the database pods (Patroni keeps its lock in the API) mount a token.
fn assert_restricted(pod: &Pod, uid: i64, sa: &str) {
    let name = pod.name_any();
    let spec = pod.spec.as_ref().expect("pod spec");
    assert_eq!(
        spec.automount_service_account_token,
        Some(sa.ends_with("-postgresql")),
        "{name}: SA token"
    );
    assert_eq!(spec.service_account_name.as_deref(), Some(sa), "{name}: SA");
    let psc = spec.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true), "{name}: runAsNonRoot");
    assert_eq!(psc.run_as_user, Some(uid), "{name}: runAsUser");
    assert_eq!(psc.run_as_group, Some(uid), "{name}: runAsGroup");
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{name}: seccomp"
    );
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let sc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{name}/{}",
            c.name
        );
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{name}/{}",
            c.name
        );
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()]),
            "{name}/{}",
            c.name
        );
        assert!(
            sc.capabilities
                .as_ref()
                .and_then(|c| c.add.as_ref())
                .is_none(),
            "{name}/{}: no added capabilities",
            c.name
        );
        assert!(sc.privileged != Some(true), "{name}/{}", c.name);
    }
    // Writable only through emptyDir volumes and the database's claim; no host paths. The
    // database pods also read Patroni's ConfigMap and their token (projected, read-only).
    let database = sa.ends_with("-postgresql");
    for v in spec.volumes.iter().flatten() {
        let read_only = database && (v.config_map.is_some() || v.projected.is_some());
        assert!(
            v.empty_dir.is_some() || v.persistent_volume_claim.is_some() || read_only,
            "{name}: volume {} is neither emptyDir nor PVC",
            v.name
        );
    }
}

/// Pods the operator's controllers create pass the restricted profile, enforced by the API
/// server; a pod template weakened through `spec.app.podSecurityContext` is refused by the same
/// admission and reported in `Degraded`; an allowed id override is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_namespace_admits_every_pod_and_refuses_a_weakened_one() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create_with_labels(&client, "sec-psa", &RESTRICTED).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // The namespace really enforces: an ordinary pod is refused (server-side dry run).
    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let refused = pods
        .create(&dry, &plain)
        .await
        .expect_err("plain pod refused");
    assert!(
        refused.to_string().contains("violates PodSecurity"),
        "{refused}"
    );

    let op = OperatorProcess::in_namespace(&ns.name, &[]);
    op.wait_ready().await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let t0 = Instant::now();
    sites
        .create(
            &PostParams::default(),
            &site("hardened", json!({"app": {"image": IMAGE, "replicas": 2}})),
        )
        .await
        .unwrap();
    wait_site_ready(&sites, "hardened", Duration::from_secs(120)).await;
    eprintln!(
        "site Ready in a restricted namespace after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Every pod exists, so PodSecurity admission accepted it; check what it stored.
    let app = live_pods(&client, &ns.name, "hardened", "app").await;
    let db = live_pods(&client, &ns.name, "hardened", "database").await;
    assert_eq!(
        (app.len(), db.len()),
        (2, 3),
        "a new site gets three instances"
    );
    for p in &app {
        assert_restricted(p, 65532, "hardened");
    }
    for p in &db {
        assert_restricted(p, 999, "hardened-postgresql");
        let psc = p.spec.as_ref().unwrap().security_context.as_ref().unwrap();
        assert_eq!(psc.fs_group, Some(999), "postgres owns its volume");
    }
    eprintln!(
        "{} pods admitted under restricted:latest and checked",
        app.len() + db.len()
    );

    // The site's ServiceAccount mounts no token and no RoleBinding grants it anything.
    let sa: ServiceAccount = Api::namespaced(client.clone(), &ns.name)
        .get("hardened")
        .await
        .unwrap();
    assert_eq!(sa.automount_service_account_token, Some(false));
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        bindings
            .items
            .iter()
            .all(|b| b.subjects.iter().flatten().all(|s| s.name != "hardened")),
        "no RoleBinding for the site's ServiceAccount"
    );

    // Weakened: uid 0 through the only override the spec allows.
    sites
        .patch(
            "hardened",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"app": {"podSecurityContext": {"runAsUser": 0}}}})),
        )
        .await
        .unwrap();
    let t1 = Instant::now();
    let weakened = wait_condition(
        &sites,
        "hardened",
        "Degraded",
        "True",
        Some("PodSecurityRejected"),
        Duration::from_secs(60),
    )
    .await;
    let message = message(&weakened, "Degraded");
    eprintln!(
        "weakened template reported after {:.1} s: {message}",
        t1.elapsed().as_secs_f64()
    );
    assert!(
        message.contains("violates PodSecurity") && message.contains("runAsUser=0"),
        "{message}"
    );
    let s = sites.get("hardened").await.unwrap();
    assert_eq!(condition(&s, "Ready").unwrap().0, "False");
    // No pod with uid 0 exists; the old pods keep serving (surge-only rollout).
    let app = live_pods(&client, &ns.name, "hardened", "app").await;
    assert!(app.iter().all(|p| {
        p.spec
            .as_ref()
            .unwrap()
            .security_context
            .as_ref()
            .unwrap()
            .run_as_user
            == Some(65532)
    }));
    assert_eq!(app.len(), 2);
    wait_warning_event(
        &client,
        &ns.name,
        "PodSecurityRejected",
        Duration::from_secs(15),
    )
    .await;

    // An id the policy allows (a platform-assigned uid) is admitted and rolled out.
    sites
        .patch(
            "hardened",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"app": {"podSecurityContext": {"runAsUser": 20000, "runAsGroup": 20000}}}}),
            ),
        )
        .await
        .unwrap();
    wait_site_ready(&sites, "hardened", Duration::from_secs(120)).await;
    wait_for(
        "app pods running as uid 20000",
        Duration::from_secs(60),
        || async {
            let app = live_pods(&client, &ns.name, "hardened", "app").await;
            let uids: Vec<_> = app
                .iter()
                .map(|p| p.spec.as_ref()?.security_context.as_ref()?.run_as_user)
                .collect();
            if uids.len() == 2 && uids.iter().all(|u| *u == Some(20000)) {
                Ok(())
            } else {
                Err(format!("{uids:?}"))
            }
        },
    )
    .await;
    for p in live_pods(&client, &ns.name, "hardened", "app").await {
        assert_restricted(&p, 20000, "hardened");
    }
    let s = sites.get("hardened").await.unwrap();
    assert_eq!(condition(&s, "Degraded").unwrap().0, "False");
    drop(op);
}

/// Every place a secret value could leak, as JSON text.
async fn everything_written(
    client: &Client,
    ns: &str,
    site_name: &str,
    log: &std::path::Path,
) -> Vec<(String, String)> {
    async fn all<K>(client: &Client, ns: &str, lp: &ListParams) -> Vec<(String, String)>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::<K>::namespaced(client.clone(), ns)
            .list(lp)
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|o| {
                (
                    format!("{} {}", K::kind(&Default::default()), o.name_any()),
                    serde_json::to_string(&o).expect("json"),
                )
            })
            .collect()
    }
    let mine = instance(site_name);
    let every = ListParams::default();
    let mut out = Vec::new();
    out.extend(all::<ArticleSite>(client, ns, &every).await);
    out.extend(all::<Deployment>(client, ns, &every).await);
    out.extend(all::<ReplicaSet>(client, ns, &every).await);
    out.extend(all::<StatefulSet>(client, ns, &every).await);
    out.extend(all::<ControllerRevision>(client, ns, &every).await);
    out.extend(all::<Pod>(client, ns, &every).await);
    out.extend(all::<Service>(client, ns, &every).await);
    out.extend(all::<ServiceAccount>(client, ns, &mine).await);
    out.extend(all::<PodDisruptionBudget>(client, ns, &every).await);
    out.extend(all::<NetworkPolicy>(client, ns, &every).await);
    out.extend(all::<PersistentVolumeClaim>(client, ns, &every).await);
    out.extend(all::<Event>(client, ns, &every).await);
    out.extend(all::<CoreEvent>(client, ns, &every).await);
    // The Secrets' metadata (annotations, labels, managed fields), without their data.
    for s in Api::<Secret>::namespaced(client.clone(), ns)
        .list(&every)
        .await
        .unwrap()
        .items
    {
        out.push((
            format!("Secret {} metadata", s.name_any()),
            serde_json::to_string(&s.metadata).unwrap(),
        ));
    }
    out.push((
        "operator log".into(),
        std::fs::read_to_string(log).expect("operator log"),
    ));
    out
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Explicit rotation of the write token (once per annotation value, pods roll, the database
/// password stays), then a scan of every object, Event, status and log line of the site for
/// every secret value it ever had, raw and base64-encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_leaks_and_rotation_is_explicit() {
    let (client, ns, op, sites) =
        namespace_with_operator("sec-secrets", &RESTRICTED, &["--resync-seconds", "2"]).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    sites
        .create(
            &PostParams::default(),
            &site("vault", json!({"app": {"image": IMAGE, "replicas": 2}})),
        )
        .await
        .unwrap();
    wait_site_ready(&sites, "vault", Duration::from_secs(120)).await;

    let db_secret = secrets.get("vault-postgresql-credentials").await.unwrap();
    let password = secret_value(&db_secret, "password");
    let token0 = secret_value(&secrets.get("vault-write-token").await.unwrap(), "token");
    for v in [&password, &token0] {
        assert_eq!(v.len(), 64, "32 random bytes, hex");
        assert!(v.chars().all(|c| c.is_ascii_hexdigit()));
    }
    let version = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["articlesite.io/credentials-version"]
            .clone()
    };
    let version0 = version(&deployments.get("vault").await.unwrap());
    // Credentials reach the pods only through secretKeyRef.
    for p in live_pods(&client, &ns.name, "vault", "app")
        .await
        .iter()
        .chain(&live_pods(&client, &ns.name, "vault", "database").await)
    {
        for c in &p.spec.as_ref().unwrap().containers {
            for e in c.env.iter().flatten() {
                if e.name.contains("PASSWORD")
                    || e.name.contains("TOKEN")
                    || e.name.ends_with("_USER")
                {
                    assert!(e.value.is_none(), "{} is a literal", e.name);
                    assert!(
                        e.value_from
                            .as_ref()
                            .and_then(|v| v.secret_key_ref.as_ref())
                            .is_some(),
                        "{} is not a secretKeyRef",
                        e.name
                    );
                }
            }
        }
    }

    // Rotate: a new annotation value, handled once.
    let rotate = |value: &str| json!({"metadata": {"annotations": {"articlesite.io/rotate-credentials": value}}});
    let t0 = Instant::now();
    sites
        .patch(
            "vault",
            &PatchParams::default(),
            &Patch::Merge(&rotate("r1")),
        )
        .await
        .unwrap();
    wait_for("rotation r1 in status", Duration::from_secs(30), || async {
        let s = sites.get("vault").await.map_err(|e| e.to_string())?;
        let handled = s
            .status
            .as_ref()
            .and_then(|st| st.credentials.as_ref())
            .and_then(|c| c.write_token_rotation.clone());
        (handled.as_deref() == Some("r1"))
            .then_some(())
            .ok_or(format!("{handled:?}"))
    })
    .await;
    let token_secret = secrets.get("vault-write-token").await.unwrap();
    let token1 = secret_value(&token_secret, "token");
    assert_ne!(token1, token0, "a new write token");
    assert_eq!(token1.len(), 64);
    assert_eq!(
        secret_value(
            &secrets.get("vault-postgresql-credentials").await.unwrap(),
            "password"
        ),
        password,
        "the database password is not rotated with the write token"
    );
    // The pods roll to the new version.
    let version1 = version(&deployments.get("vault").await.unwrap());
    assert_ne!(version1, version0);
    wait_for(
        "app pods on the new credentials",
        Duration::from_secs(120),
        || async {
            let s = sites.get("vault").await.map_err(|e| e.to_string())?;
            let ready = condition(&s, "Ready").map(|c| c.0);
            let pods = live_pods(&client, &ns.name, "vault", "app").await;
            let versions: Vec<_> = pods
                .iter()
                .map(|p| {
                    p.annotations()
                        .get("articlesite.io/credentials-version")
                        .cloned()
                })
                .collect();
            if ready.as_deref() == Some("True")
                && versions.len() == 2
                && versions
                    .iter()
                    .all(|v| v.as_deref() == Some(version1.as_str()))
            {
                Ok(())
            } else {
                Err(format!("Ready={ready:?}, pod versions {versions:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "rotation r1: new token and rolled pods after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Reconciles after that (2 s resync, plus a metadata change) never rotate again.
    let rv = token_secret.resource_version();
    let before = op
        .metric("articlesite_operator_reconciles_total")
        .await
        .expect("operator metrics");
    sites
        .patch(
            "vault",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"touched": "1"}}})),
        )
        .await
        .unwrap();
    let reconciles = wait_for("3 more reconciles", Duration::from_secs(30), || async {
        let n = op.metric("articlesite_operator_reconciles_total").await? - before;
        if n >= 3.0 { Ok(n) } else { Err(format!("{n}")) }
    })
    .await;
    assert_eq!(
        secrets
            .get("vault-write-token")
            .await
            .unwrap()
            .resource_version(),
        rv,
        "no second rotation for the same value over {reconciles} reconciles"
    );

    // A second value rotates once more.
    sites
        .patch(
            "vault",
            &PatchParams::default(),
            &Patch::Merge(&rotate("r2")),
        )
        .await
        .unwrap();
    let token2 = wait_for("rotation r2", Duration::from_secs(30), || async {
        let t = secret_value(
            &secrets
                .get("vault-write-token")
                .await
                .map_err(|e| e.to_string())?,
            "token",
        );
        if t != token1 {
            Ok(t)
        } else {
            Err("same token".into())
        }
    })
    .await;
    wait_site_ready(&sites, "vault", Duration::from_secs(120)).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let rotated = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("CredentialsRotated"))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum::<i32>();
    assert_eq!(rotated, 2, "one CredentialsRotated event per request");

    // The scan: every value the site ever had, raw and as the API server encodes it.
    let values = [
        ("database password", password),
        ("write token (initial)", token0),
        ("write token (r1)", token1),
        ("write token (r2)", token2),
    ];
    // Control: the scan finds a value where it is stored (the API returns data base64-encoded).
    let stored = serde_json::to_string(&secrets.get("vault-write-token").await.unwrap()).unwrap();
    assert!(stored.contains(&base64(values[3].1.as_bytes())));
    let scanned = everything_written(&client, &ns.name, "vault", &op.log).await;
    let bytes: usize = scanned.iter().map(|(_, t)| t.len()).sum();
    let mut leaks = Vec::new();
    for (what, text) in &scanned {
        for (secret, v) in &values {
            if text.contains(v.as_str()) || text.contains(&base64(v.as_bytes())) {
                leaks.push(format!("{secret} in {what}"));
            }
        }
    }
    eprintln!(
        "secret scan: {} objects, events and the operator log ({} bytes) searched for {} values: {} found",
        scanned.len(),
        bytes,
        values.len(),
        leaks.len()
    );
    assert!(scanned.len() > 20, "the scan saw the site's objects");
    assert!(leaks.is_empty(), "secret values leaked: {leaks:?}");
    drop(op);
}

fn labels_match(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "the operator's selectors use matchLabels only"
    );
    selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
}

/// Whether `policies` (one namespace, podSelector peers only, as the operator writes them) let
/// `from` open a TCP connection to `to` on `port`, by the NetworkPolicy rules: a pod selected by
/// a policy of a type is isolated for that direction and then needs a rule that allows it.
fn allowed(
    policies: &[Value],
    from: &BTreeMap<String, String>,
    to: &BTreeMap<String, String>,
    port: i64,
) -> bool {
    let direction = |pod: &BTreeMap<String, String>,
                     kind: &str,
                     rules: &str,
                     peers: &str,
                     other: &BTreeMap<String, String>| {
        let selecting: Vec<_> = policies
            .iter()
            .filter(|p| labels_match(&p["podSelector"], pod))
            .filter(|p| {
                p["policyTypes"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == kind))
            })
            .collect();
        selecting.is_empty()
            || selecting.iter().any(|p| {
                p[rules].as_array().into_iter().flatten().any(|rule| {
                    let peer_ok = match rule[peers].as_array() {
                        None => true,
                        Some(list) => list.iter().any(|peer| {
                            assert!(
                                peer.get("namespaceSelector").is_none()
                                    && peer.get("ipBlock").is_none()
                            );
                            labels_match(&peer["podSelector"], other)
                        }),
                    };
                    let port_ok = match rule["ports"].as_array() {
                        None => true,
                        Some(ports) => ports.iter().any(|p| {
                            p["protocol"].as_str().unwrap_or("TCP") == "TCP"
                                && p["port"].as_i64() == Some(port)
                        }),
                    };
                    peer_ok && port_ok
                })
            })
    };
    direction(from, "Egress", "egress", "to", to)
        && direction(to, "Ingress", "ingress", "from", from)
}

fn component_labels(site: &str, name: &str, component: &str) -> Value {
    json!({"matchLabels": {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": site,
        "app.kubernetes.io/component": component,
    }})
}

/// The stored NetworkPolicies of two sites in one namespace, field by field, then evaluated
/// against the labels of the real pods: each site's app reaches its own database and nothing
/// else of the other site. (No CNI enforces them on simulated nodes; this checks the rules.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_isolate_two_sites() {
    let (client, ns, op, sites) = namespace_with_operator("sec-netpol", &RESTRICTED, &[]).await;
    for (name, port) in [("alpha", 8080), ("beta", 9090)] {
        let mut s = site(
            name,
            json!({"app": {"image": IMAGE, "replicas": 1, "port": port}}),
        );
        if name == "beta" {
            // A rotation requested at creation is answered by the first token.
            s.metadata.annotations = Some(BTreeMap::from([(
                "articlesite.io/rotate-credentials".to_string(),
                "initial".to_string(),
            )]));
        }
        sites.create(&PostParams::default(), &s).await.unwrap();
    }
    for name in ["alpha", "beta"] {
        wait_site_ready(&sites, name, Duration::from_secs(120)).await;
    }
    let beta = sites.get("beta").await.unwrap();
    let handled = beta
        .status
        .and_then(|s| s.credentials)
        .and_then(|c| c.write_token_rotation);
    assert_eq!(handled.as_deref(), Some("initial"));
    let events = Api::<Event>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        !events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CredentialsRotated")),
        "no rotation on top of the first token"
    );

    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let mut specs = Vec::new();
    for (name, port) in [("alpha", 8080), ("beta", 9090)] {
        let app = component_labels(name, "article-server", "app");
        let db = component_labels(name, "postgresql", "database");
        // PostgreSQL from the app and the instances, Patroni's API from the instances;
        // out: DNS, the instances, the API server (Patroni's store).
        let expected_db = json!({
            "podSelector": db,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": app}, {"podSelector": db}], "ports": [{"port": 5432, "protocol": "TCP"}]},
                {"from": [{"podSelector": db}], "ports": [{"port": 8008, "protocol": "TCP"}]},
            ],
            "egress": [
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                {"to": [{"podSelector": db}], "ports": [{"port": 5432, "protocol": "TCP"}, {"port": 8008, "protocol": "TCP"}]},
                {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
            ],
        });
        let expected_app = json!({
            "podSelector": app,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": port, "protocol": "TCP"}]}],
            "egress": [
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                {"to": [{"podSelector": db}], "ports": [{"port": 5432, "protocol": "TCP"}]},
            ],
        });
        for (np_name, expected) in [
            (format!("{name}-postgresql"), expected_db),
            (name.to_string(), expected_app),
        ] {
            let np = nps
                .get(&np_name)
                .await
                .unwrap_or_else(|e| panic!("NetworkPolicy {np_name}: {e}"));
            let mut stored = serde_json::to_value(np.spec.as_ref().unwrap()).unwrap();
            // No egress rule at all and an empty list mean the same: nothing goes out.
            if stored["egress"] == json!([]) {
                stored.as_object_mut().unwrap().remove("egress");
            }
            assert_eq!(stored, expected, "NetworkPolicy {np_name}");
            specs.push(stored);
        }
    }
    assert_eq!(
        nps.list(&ListParams::default()).await.unwrap().items.len(),
        4,
        "two policies per site, nothing else"
    );

    let labels_of = |p: &Pod| p.labels().clone();
    let mut pods = BTreeMap::new();
    for name in ["alpha", "beta"] {
        for component in ["app", "database"] {
            let list = live_pods(&client, &ns.name, name, component).await;
            // One app pod; three database instances (the default).
            let want = if component == "app" { 1 } else { 3 };
            assert_eq!(list.len(), want, "{name} {component} pods");
            pods.insert(format!("{name}-{component}"), labels_of(&list[0]));
        }
    }
    let check = |from: &str, to: &str, port: i64, want: bool| {
        let got = allowed(&specs, &pods[from], &pods[to], port);
        eprintln!(
            "{from:>14} -> {to:<14} :{port:<5} {}",
            if got { "allowed" } else { "denied" }
        );
        assert_eq!(got, want, "{from} -> {to}:{port}");
    };
    check("alpha-app", "alpha-database", 5432, true);
    check("beta-app", "beta-database", 5432, true);
    check("alpha-app", "beta-database", 5432, false);
    check("beta-app", "alpha-database", 5432, false);
    check("alpha-app", "alpha-database", 22, false);
    check("alpha-database", "alpha-app", 8080, false);
    check("alpha-database", "beta-database", 5432, false);
    // Patroni's API: from the site's own instances only.
    check("alpha-app", "alpha-database", 8008, false);
    check("beta-database", "alpha-database", 8008, false);
    check("alpha-app", "beta-app", 9090, false);
    check("beta-app", "alpha-app", 8080, false);
    drop(op);
}

/// A database pod refused by admission shows in the site's `Degraded` condition, although the
/// StatefulSet reports it only in a `FailedCreate` Event. The refusal comes from a
/// ValidatingAdmissionPolicy bound to this test's namespace only (the database pod has no
/// override that Pod Security could refuse). Removing the policy lets the pod in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_database_pod_is_reported() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "sec-dbrefused").await;
    let name = format!("articlesite-test-{}", ns.name);
    // Two guards: the binding goes before the end of the test.
    let mut policy = ClusterScoped::default();
    policy
        .apply::<ValidatingAdmissionPolicy>(
        &client,
        json!({
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE"], "resources": ["pods"],
                }]},
                "validations": [{
                    "expression": "!has(object.metadata.labels) || !('app.kubernetes.io/component' in object.metadata.labels) || object.metadata.labels['app.kubernetes.io/component'] != 'database'",
                    "message": "database pods are frozen by the test policy",
                }],
            },
        }),
    )
    .await;
    let mut binding = ClusterScoped::default();
    binding
        .apply::<ValidatingAdmissionPolicyBinding>(
            &client,
            json!({
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": ns.name,
                    }}},
                },
            }),
        )
        .await;
    // The API server loads policies asynchronously: wait until it refuses a database pod.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "labels": {"app.kubernetes.io/component": "database"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for("policy in force", Duration::from_secs(30), || async {
        match pods.create(&dry, &probe).await {
            Err(e) if e.to_string().contains("frozen by the test policy") => Ok(()),
            other => Err(format!("{:?}", other.map(|p| p.name_any()))),
        }
    })
    .await;

    let op = OperatorProcess::in_namespace(&ns.name, &[]);
    op.wait_ready().await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    sites
        .create(
            &PostParams::default(),
            &site("frozen", json!({"app": {"image": IMAGE, "replicas": 1}})),
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    let frozen = wait_condition(
        &sites,
        "frozen",
        "Degraded",
        "True",
        Some("PodCreationFailed"),
        Duration::from_secs(60),
    )
    .await;
    let message = message(&frozen, "Degraded");
    eprintln!(
        "refused database pod reported after {:.1} s: {message}",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        message.contains("StatefulSet frozen-postgresql")
            && message.contains("frozen by the test policy"),
        "{message}"
    );
    let s = sites.get("frozen").await.unwrap();
    assert_eq!(condition(&s, "Ready").unwrap().0, "False");

    drop(binding);
    let t1 = Instant::now();
    wait_site_ready(&sites, "frozen", Duration::from_secs(120)).await;
    let s = sites.get("frozen").await.unwrap();
    assert_eq!(condition(&s, "Degraded").unwrap().0, "False");
    eprintln!(
        "policy removed: site Ready and not Degraded after {:.1} s",
        t1.elapsed().as_secs_f64()
    );
    drop(op);
}
