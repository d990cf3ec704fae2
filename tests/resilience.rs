//! Resilience tests: operator crashes, an API server outage, etcd compaction (410 on watches),
//! an API server that answers with errors, and unreadable objects.
//!
//! DISRUPTIVE: these tests stop and start the local cluster's kube-apiserver, compact its etcd
//! and swap the ArticleSite CRD. They run in their own test binary (cargo runs test binaries
//! one after another) and one at a time (`SERIAL`), and only against a cluster started from
//! this repository's scripts (`own_cluster`). Never point them at a cluster others are using.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use common::audit::{audit_events, audit_log, by_operator, file_len, in_namespace};
use common::crd::{apply_crd, install_crd};
use common::http::{free_port, http_request, metric_in};
use common::operator::OperatorProcess;
use common::site::{IMAGE, site, site_ready};
use common::{
    ClusterScoped, TestNamespace, block_on_own_runtime, client, kubeconfig_path,
    service_account_kubeconfig, wait_for,
};

/// One disruptive test at a time (tests of one binary otherwise run in parallel).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// the cluster under test

/// The local cluster these tests may disrupt: the directory of the kubeconfig, which must hold
/// the ports.env that up.sh writes, so that `hack/cluster/component.sh` acts on exactly this
/// cluster with its own ports.
fn own_cluster() -> PathBuf {
    let dir = common::cluster_dir();
    let dir = dir.canonicalize().unwrap_or(dir);
    assert!(
        dir.join("ports.env").is_file(),
        "{} has no ports.env: the resilience tests restart the API server and need a cluster \
         started by hack/cluster/up.sh from this repository (make cluster-up)",
        dir.display()
    );
    dir
}

/// `own_cluster`, checked before an outage: its API server runs from its pid file.
fn own_running_cluster() -> PathBuf {
    let dir = own_cluster();
    assert!(
        dir.join("pids/kube-apiserver.pid").is_file(),
        "{} has no pids/kube-apiserver.pid: its API server was not started by hack/cluster",
        dir.display()
    );
    dir
}

/// `hack/cluster/component.sh <action> <component>` on the cluster under test.
fn component(action: &str, name: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/cluster/component.sh");
    let out = Command::new(script)
        .args([action, name])
        .env("CLUSTER_DIR", own_cluster())
        .stdin(Stdio::null())
        .output()
        .expect("run hack/cluster/component.sh");
    assert!(
        out.status.success(),
        "component.sh {action} {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stopped component of the cluster under test; started again when dropped, also when the
/// test fails, so that an outage never outlives its test.
struct Stopped(&'static str);

impl Stopped {
    fn stop(name: &'static str) -> Self {
        own_running_cluster();
        component("stop", name);
        Self(name)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // No second panic from a failing start: report it instead.
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/cluster/component.sh");
            let ok = Command::new(script)
                .args(["start", self.0])
                .env("CLUSTER_DIR", own_cluster())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("could not start {} again", self.0);
            }
        } else {
            component("start", self.0);
        }
    }
}

/// A port of the cluster under test, from its ports.env.
fn cluster_port(var: &str) -> u16 {
    let text = std::fs::read_to_string(own_cluster().join("ports.env")).expect("read ports.env");
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == var)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("{var} missing from ports.env"))
}

/// Waits until the API server's /readyz says ok (a restarted one serves /version earlier).
async fn wait_apiserver_ready(client: &Client, timeout: Duration) {
    wait_for("kube-apiserver /readyz", timeout, || async {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// etcd's current revision and a physical compaction up to it, through etcd's HTTP gateway.
async fn compact_etcd() -> i64 {
    let port = cluster_port("ETCD_PORT");
    let (_, body) = http_request(port, "POST", "/v3/kv/range", r#"{"key":"AA=="}"#)
        .await
        .expect("etcd range");
    let v: Value = serde_json::from_str(&body).expect("etcd range json");
    let revision: i64 = v["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {body}"));
    let (code, body) = http_request(
        port,
        "POST",
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    )
    .await
    .expect("etcd compaction");
    assert_eq!(code, 200, "compaction: {body}");
    revision
}

/// Sum of an API server metric over the series whose labels contain `label`.
async fn apiserver_metric(client: &Client, name: &str, label: &str) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client
        .request_text(req)
        .await
        .expect("GET /metrics of the API server");
    metric_in(&text, name, label).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// the operator process

/// The operator binary limited to one namespace, logging text; every run of a test appends to
/// one log (`restart`), printed when the test fails.
fn operator(ns: &str, kubeconfig: &Path) -> OperatorProcess {
    OperatorProcess::start(ns, kubeconfig, &["--namespace", ns, "--log-format", "text"])
}

/// A metric of the operator, summed over the series whose labels contain `label`.
async fn metric(op: &OperatorProcess, name: &str, label: &str) -> f64 {
    op.metric_with(name, label).await.expect("GET /metrics")
}

// ---------------------------------------------------------------------------------------------
// sites

async fn create_sites(api: &Api<ArticleSite>, names: &[String], replicas: i32) {
    let creates = names.iter().map(|n| {
        let api = api.clone();
        // One database instance: these tests are about the operator's convergence, and 50
        // sites of three instances would triple the simulated pods (as the bench pins it).
        let s = site(
            n,
            json!({"app": {"image": IMAGE, "replicas": replicas}, "database": {"instances": 1}}),
        );
        async move {
            api.create(&PostParams::default(), &s)
                .await
                .unwrap_or_else(|e| panic!("create site {}: {e}", s.name_any()))
        }
    });
    futures::future::join_all(creates).await;
}

/// Waits until every listed site is Ready for its current generation and passes `extra`.
async fn wait_all_ready(
    api: &Api<ArticleSite>,
    names: &[String],
    timeout: Duration,
    extra: impl Fn(&ArticleSite) -> bool,
) {
    let what = format!("{} sites Ready", names.len());
    // Listed as JSON and read one by one: an unreadable site must not hide the others.
    let ar = ApiResource::erase::<ArticleSite>(&());
    let dynamic: Api<DynamicObject> =
        Api::namespaced_with(api.clone().into_client(), &namespace_of(api), &ar);
    wait_for(&what, timeout, || async {
        let list = dynamic
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let list = kube::core::ObjectList::<ArticleSite> {
            types: Default::default(),
            metadata: list.metadata,
            items: list
                .items
                .into_iter()
                .filter_map(|o| serde_json::from_value(serde_json::to_value(o).ok()?).ok())
                .collect(),
        };
        let ready: BTreeSet<String> = list
            .items
            .iter()
            .filter(|s| site_ready(s) && extra(s))
            .map(|s| s.name_any())
            .collect();
        let missing: Vec<_> = names.iter().filter(|n| !ready.contains(*n)).collect();
        let example = list
            .items
            .iter()
            .find(|s| missing.first().is_some_and(|m| **m == s.name_any()))
            .map(|s| serde_json::to_string(&s.status).unwrap_or_default());
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} not ready, e.g. {:?}; status of the first: {example:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ))
        }
    })
    .await;
}

/// The namespace of a namespaced Api (from its request path `/apis/…/namespaces/<ns>/…`).
fn namespace_of(api: &Api<ArticleSite>) -> String {
    let url = api.resource_url();
    url.split('/')
        .skip_while(|p| *p != "namespaces")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// A random number below `n`.
fn rand_below(n: u64) -> u64 {
    common::random_u64() % n.max(1)
}

/// (kind, name, owner uid) of every object of the kinds the operator creates in `ns`.
async fn owned_objects(client: &Client, ns: &str) -> BTreeSet<(String, String, String)> {
    async fn of<K>(client: &Client, ns: &str, out: &mut BTreeSet<(String, String, String)>)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let kind = K::kind(&Default::default()).to_string();
        let list = Api::<K>::namespaced(client.clone(), ns)
            .list_metadata(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list {kind}: {e}"));
        for o in list.items {
            let owners: Vec<_> = o.owner_references().iter().map(|r| r.uid.clone()).collect();
            assert!(
                owners.len() <= 1,
                "{kind} {} has owners {owners:?}",
                o.name_any()
            );
            out.insert((
                kind.clone(),
                o.name_any(),
                owners.into_iter().next().unwrap_or_default(),
            ));
        }
    }
    let mut out = BTreeSet::new();
    of::<Deployment>(client, ns, &mut out).await;
    of::<StatefulSet>(client, ns, &mut out).await;
    of::<Service>(client, ns, &mut out).await;
    of::<Secret>(client, ns, &mut out).await;
    of::<PodDisruptionBudget>(client, ns, &mut out).await;
    of::<NetworkPolicy>(client, ns, &mut out).await;
    of::<ServiceAccount>(client, ns, &mut out).await;
    // Every namespace has its own `default` ServiceAccount, which nobody owns.
    out.remove(&("ServiceAccount".into(), "default".into(), String::new()));
    out
}

/// What `owned_objects` must return: each owned kind once per site, owned by that site.
fn expected_objects(sites: &[ArticleSite]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for s in sites {
        let n = s.name_any();
        let uid = s.uid().unwrap_or_default();
        for (kind, name) in [
            ("Deployment", n.clone()),
            ("StatefulSet", format!("{n}-postgresql")),
            ("Service", n.clone()),
            ("Service", format!("{n}-postgresql")),
            ("Service", format!("{n}-postgresql-hl")),
            ("Service", format!("{n}-postgresql-replicas")),
            ("Service", format!("{n}-postgresql-config")),
            ("Secret", format!("{n}-postgresql-credentials")),
            ("Secret", format!("{n}-write-token")),
            ("PodDisruptionBudget", n.clone()),
            ("PodDisruptionBudget", format!("{n}-postgresql")),
            ("NetworkPolicy", format!("{n}-postgresql")),
            ("NetworkPolicy", n.clone()),
            ("ServiceAccount", n.clone()),
            ("ServiceAccount", format!("{n}-postgresql")),
        ] {
            out.insert((kind.to_string(), name, uid.clone()));
        }
    }
    out
}

/// Secret creates by the operator in `ns` after byte `offset` of the audit log: name → response
/// codes (201 created, 409 already there).
fn secret_creates(audit: &Path, offset: u64, ns: &str) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in audit_events(audit, offset, |e| {
        by_operator(e)
            && e["verb"] == "create"
            && e["stage"] == "ResponseComplete"
            && e["objectRef"]["resource"] == "secrets"
            && in_namespace(e, ns)
    }) {
        let name = e["objectRef"]["name"].as_str().unwrap_or("?").to_string();
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        out.entry(name).or_default().push(code);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// tests

/// 50 sites applied at once; the operator is SIGKILLed at random moments 20 times while they
/// converge and restarted each time. At the end every site is Ready, each owned object exists
/// exactly once per site with the right owner (no duplicates, no orphans), and each generated
/// Secret was created exactly once (the API server's audit log), so the credentials are the first
/// ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_during_convergence() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "res-chaos").await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let audit = audit_log();
    let offset = file_len(&audit);
    let site_names = names("s", 50);

    let start = Instant::now();
    let mut op = operator(&ns.name, &kubeconfig_path());
    create_sites(&sites, &site_names, 1).await;
    let mut kills = Vec::new();
    for _ in 0..20 {
        // Chaos schedule, not a wait for a condition: a random moment 0.2–2 s ahead.
        tokio::time::sleep(Duration::from_millis(200 + rand_below(1800))).await;
        op.kill();
        kills.push(start.elapsed().as_secs_f64());
        op.restart();
    }
    let last_kill = Instant::now();
    let ready_at_last_kill = sites
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|s| site_ready(s))
        .count();
    wait_all_ready(&sites, &site_names, Duration::from_secs(180), |_| true).await;
    eprintln!(
        "chaos: 50 sites, 20 SIGKILLs at {:?} s; {ready_at_last_kill} Ready at the last kill; \
         all Ready {:.1} s after it, {:.1} s after the start",
        kills
            .iter()
            .map(|k| (k * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        last_kill.elapsed().as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    assert!(op.running(), "the last operator run must still be running");

    let all = sites.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), 50);
    let expected = expected_objects(&all);
    let actual = owned_objects(&client, &ns.name).await;
    let missing: Vec<_> = expected.difference(&actual).collect();
    let extra: Vec<_> = actual.difference(&expected).collect();
    eprintln!(
        "chaos: {} owned objects, {} expected; missing {}, unexpected (duplicates/orphans) {}",
        actual.len(),
        expected.len(),
        missing.len(),
        extra.len()
    );
    assert!(missing.is_empty(), "missing objects: {missing:?}");
    assert!(extra.is_empty(), "duplicate or orphaned objects: {extra:?}");

    let creates = secret_creates(&audit, offset, &ns.name);
    let created: usize = creates
        .values()
        .map(|c| c.iter().filter(|c| **c == 201).count())
        .sum();
    let conflicts: usize = creates
        .values()
        .map(|c| c.iter().filter(|c| **c == 409).count())
        .sum();
    eprintln!(
        "chaos: {} generated Secrets, {created} creates answered 201, {conflicts} answered 409",
        creates.len()
    );
    assert_eq!(creates.len(), 100, "two generated Secrets per site");
    for (name, codes) in &creates {
        // A create the SIGKILL cut off is audited as 504 (the client went away) even when the API
        // server stored the Secret; every later create of it must then be a 409. The Secret
        // exists (checked above), so: at most one 201, and without one, a cut-off create.
        let ok = codes.iter().filter(|c| **c == 201).count();
        let cut_off = codes.iter().filter(|c| **c == 504).count();
        assert!(
            ok == 1 || (ok == 0 && cut_off >= 1),
            "Secret {name} must be created exactly once (credentials stay the first ones): {codes:?}"
        );
    }
}

/// The API server is stopped for 30 s right after 10 sites were scaled (reconciles in flight).
/// The operator keeps running, reports not-ready on /readyz during the outage, and finishes the
/// change on its own once the API server is back, without a restart.
///
/// kube-controller-manager is stopped with the API server and started after it: with the API
/// server gone for more than the node grace period (50 s, counting its shutdown and start), the
/// node lifecycle controller would mark the kwok nodes' pods NotReady, and kwok (unlike a
/// kubelet) never reports them Ready again, so no site could become Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_is_survived() {
    let _serial = SERIAL.lock().await;
    own_running_cluster();
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "res-outage").await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let site_names = names("o", 10);
    let mut op = operator(&ns.name, &kubeconfig_path());
    op.wait_readyz(200, Duration::from_secs(30)).await;
    create_sites(&sites, &site_names, 1).await;
    wait_all_ready(&sites, &site_names, Duration::from_secs(120), |_| true).await;

    for n in &site_names {
        sites
            .patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"app": {"replicas": 2}}})),
            )
            .await
            .unwrap();
    }
    let stop_issued = Instant::now();
    let kcm = Stopped::stop("kube-controller-manager");
    let outage = Stopped::stop("kube-apiserver");
    let stopped = Instant::now();
    op.wait_readyz(503, Duration::from_secs(15)).await;
    let noticed = stopped.elapsed();
    // The outage lasts 30 s by design; the operator must stay up all along.
    while stopped.elapsed() < Duration::from_secs(30) {
        assert!(op.running(), "operator exited during the outage");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconcile_errors = metric(&op, "articlesite_operator_reconcile_errors_total", "").await;
    let watch_errors = metric(&op, "articlesite_operator_watch_errors_total", "").await;
    drop(outage);
    wait_apiserver_ready(&client, Duration::from_secs(90)).await;
    let back = Instant::now();
    drop(kcm);
    // The operator's part: every Deployment scaled as the sites ask.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "all Deployments at 2 replicas",
        Duration::from_secs(60),
        || async {
            let list = deployments
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let done = list
                .items
                .iter()
                .filter(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(2))
                .count();
            if done == site_names.len() {
                Ok(())
            } else {
                Err(format!("{done} of {} scaled", site_names.len()))
            }
        },
    )
    .await;
    let applied = back.elapsed();
    let replicas_2 = |s: &ArticleSite| {
        s.status
            .as_ref()
            .and_then(|st| st.app.as_ref())
            .is_some_and(|a| a.ready_replicas == 2 && a.desired_replicas == 2)
    };
    wait_all_ready(&sites, &site_names, Duration::from_secs(120), replicas_2).await;
    let recovered = back.elapsed();
    op.wait_readyz(200, Duration::from_secs(15)).await;
    assert!(op.running(), "operator restarted or exited");
    eprintln!(
        "outage: /readyz 503 {:.1} s after the stop was issued ({:.1} s after the API server \
         process had exited); during 30 s: {reconcile_errors} reconcile \
         errors, {watch_errors} watch errors, {} requests throttled; after the API server was \
         back: every change applied in {:.1} s, all 10 sites Ready at 2 replicas (pods started \
         by the restarted cluster) in {:.1} s, same operator process",
        (stopped - stop_issued + noticed).as_secs_f64(),
        noticed.as_secs_f64(),
        metric(&op, "articlesite_operator_throttled_requests_total", "").await,
        applied.as_secs_f64(),
        recovered.as_secs_f64()
    );
}

/// etcd is compacted while the API server is down, so the operator's watches resume from a
/// compacted resource version and get 410 Gone. A change made right after is not missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_compaction() {
    let _serial = SERIAL.lock().await;
    own_running_cluster();
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "res-compact").await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let site_names = names("c", 3);
    let op = operator(&ns.name, &kubeconfig_path());
    op.wait_readyz(200, Duration::from_secs(30)).await;
    create_sites(&sites, &site_names, 1).await;
    wait_all_ready(&sites, &site_names, Duration::from_secs(90), |_| true).await;

    // A write the operator does not watch moves etcd's revision past every watch position.
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "bump"}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let gone_before = metric(
        &op,
        "articlesite_operator_watch_errors_total",
        "reason=\"410\"",
    )
    .await;
    let outage = Stopped::stop("kube-apiserver");
    let revision = compact_etcd().await;
    drop(outage);
    wait_apiserver_ready(&client, Duration::from_secs(90)).await;

    // Right after: a spec change and a deleted child.
    let changed = Instant::now();
    sites
        .patch(
            "c0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"app": {"replicas": 3}}})),
        )
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let old_uid = services.get("c1").await.unwrap().uid();
    services
        .delete("c1", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("Service c1 recreated", Duration::from_secs(60), || async {
        match services.get_opt("c1").await {
            Ok(Some(s)) if s.uid() != old_uid => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.map(|s| s.uid())))),
        }
    })
    .await;
    let three = |s: &ArticleSite| {
        s.status
            .as_ref()
            .and_then(|st| st.app.as_ref())
            .is_some_and(|a| a.ready == "3/3")
    };
    wait_all_ready(&sites, &["c0".to_string()], Duration::from_secs(60), three).await;
    let gone = metric(
        &op,
        "articlesite_operator_watch_errors_total",
        "reason=\"410\"",
    )
    .await
        - gone_before;
    eprintln!(
        "compaction: etcd compacted at revision {revision}; {gone} watches answered 410 Gone and \
         re-listed; spec change and deleted Service reconciled {:.1} s after the API server was \
         back",
        changed.elapsed().as_secs_f64()
    );
    assert!(
        gone >= 1.0,
        "no watch saw 410 Gone: the test did not exercise compaction"
    );
}

/// While the API server fails every write of the operator (an admission webhook that cannot be
/// reached answers 500), 20 failing sites must not turn into a request storm: from the API
/// server's own metrics (its flow-control counters for a FlowSchema that matches only the
/// operator's ServiceAccount), the operator stays under the documented ceiling of
/// 10 + 5 requests per second (`api_health::THROTTLED_BURST`, `THROTTLED_RATE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_is_bounded_while_the_api_server_fails() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "res-rate").await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let site_names = names("r", 20);
    create_sites(&sites, &site_names, 1).await;

    let mut cleanup = ClusterScoped::default();
    let sa = "articlesite-operator";
    let role = format!("articlesite-operator-{}", ns.name);
    // Exactly what the chart grants: a missing permission would fail reads (403) before the
    // writes this test makes fail.
    cleanup
        .apply::<ClusterRole>(
            &client,
            json!({"metadata": {"name": role}, "rules": common::chart::chart_cluster_role_rules()}),
        )
        .await;
    cleanup
        .apply::<ClusterRoleBinding>(
        &client,
        json!({"metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns.name}]}),
    )
    .await;
    let flow_schema = format!("articlesite-operator-{}", ns.name);
    cleanup
        .apply::<FlowSchema>(
            &client,
            json!({"metadata": {"name": flow_schema}, "spec": {
            "matchingPrecedence": 300,
            "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount",
                    "serviceAccount": {"name": sa, "namespace": ns.name}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                    "namespaces": ["*"], "clusterScope": true}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}}),
        )
        .await;
    // The operator's own identity, so that the FlowSchema counts only its requests.
    let sa_obj: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &sa_obj)
        .await
        .unwrap();
    let kubeconfig =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kubeconfig-{}", ns.name));
    service_account_kubeconfig(&client, &ns.name, sa, &kubeconfig).await;
    // Every write to the site's children in this namespace fails: the webhook's port is closed.
    cleanup
        .apply::<ValidatingWebhookConfiguration>(
            &client,
            json!({"metadata": {"name": flow_schema}, "webhooks": [{
            "name": "unreachable.articlesite.io",
            "clientConfig": {"url": format!("https://127.0.0.1:{}/validate", free_port())},
            "rules": [{"apiGroups": ["", "apps", "policy", "networking.k8s.io"],
                "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                "resources": ["*"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}},
            "failurePolicy": "Fail", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 2}]}),
        )
        .await;
    // The webhook and the FlowSchema take effect asynchronously: wait until a write fails.
    let probe_cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "probe"}})).unwrap();
    wait_for(
        "webhook to refuse writes",
        Duration::from_secs(30),
        || async {
            match Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
                .create(&PostParams::default(), &probe_cm)
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 500 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let count = |client: Client, fs: String| async move {
        apiserver_metric(
            &client,
            "apiserver_flowcontrol_dispatched_requests_total",
            &format!("flow_schema=\"{fs}\""),
        )
        .await
            + apiserver_metric(
                &client,
                "apiserver_flowcontrol_rejected_requests_total",
                &format!("flow_schema=\"{fs}\""),
            )
            .await
    };
    let op = operator(&ns.name, &kubeconfig);
    op.wait_readyz(200, Duration::from_secs(30)).await;
    // Measure from the moment the operator saw the first failures (its start-up lists and
    // watches are not part of the question).
    wait_for(
        "first failed reconcile",
        Duration::from_secs(30),
        || async {
            let n = op
                .metric("articlesite_operator_reconcile_errors_total")
                .await?;
            if n >= 1.0 {
                Ok(())
            } else {
                Err(format!("{n} errors"))
            }
        },
    )
    .await;
    let before = count(client.clone(), flow_schema.clone()).await;
    let t0 = Instant::now();
    let window = Duration::from_secs(20);
    // The measurement window itself: the API server keeps failing throughout.
    tokio::time::sleep(window).await;
    let requests = count(client.clone(), flow_schema.clone()).await - before;
    let secs = t0.elapsed().as_secs_f64();
    let errors = metric(&op, "articlesite_operator_reconcile_errors_total", "").await;
    let throttled = metric(&op, "articlesite_operator_throttled_requests_total", "").await;
    let ceiling = articlesite_operator::api_health::THROTTLED_BURST
        + articlesite_operator::api_health::THROTTLED_RATE * secs;
    eprintln!(
        "rate: 20 failing sites, {requests} operator requests in {secs:.1} s at the API server \
         ({:.2}/s); ceiling {ceiling:.0} ({:.1}/s); {errors} failed reconciles, {throttled} \
         requests throttled",
        requests / secs,
        ceiling / secs
    );
    assert!(
        requests > 0.0,
        "the FlowSchema counted nothing: the measurement is broken"
    );
    assert!(
        requests <= ceiling,
        "{requests} requests in {secs:.1} s exceed the ceiling {ceiling:.0}"
    );
    assert!(errors >= 2.0, "reconciles kept failing and retrying");
    drop(op);
}

/// An ArticleSite stored under an older, looser schema (it no longer deserializes) and a child
/// edited into an odd shape: the operator neither crashes nor stops reconciling the other sites;
/// the odd site is reconciled once it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_sites_do_not_stop_the_others() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "res-odd").await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);

    // An older schema that accepted anything; restored to the real one however the test ends.
    struct RestoreCrd;
    impl Drop for RestoreCrd {
        fn drop(&mut self) {
            block_on_own_runtime(|| async { install_crd(&common::client().await).await });
        }
    }
    let restore = RestoreCrd;
    let mut loose = ArticleSite::crd();
    for v in &mut loose.spec.versions {
        v.schema = serde_json::from_value(json!({"openAPIV3Schema": {
            "type": "object",
            "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}))
        .unwrap();
    }
    apply_crd(&client, loose).await;
    let odd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "articlesite.io/v1alpha1", "kind": "ArticleSite",
        "metadata": {"name": "odd"},
        "spec": {"app": {"image": 5, "replicas": 1}}}))
    .unwrap();
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<ArticleSite>(&()),
    );
    wait_for(
        "the loose schema to accept an odd site",
        Duration::from_secs(30),
        || async {
            dynamic
                .create(&PostParams::default(), &odd)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    install_crd(&client).await;
    drop(restore);

    let op = operator(&ns.name, &kubeconfig_path());
    op.wait_readyz(200, Duration::from_secs(30)).await;
    let good = names("good", 2);
    create_sites(&sites, &good, 1).await;
    wait_all_ready(&sites, &good, Duration::from_secs(90), |_| true).await;
    let malformed = metric(
        &op,
        "articlesite_operator_reconcile_errors_total",
        "malformed_object",
    )
    .await;
    assert!(malformed >= 1.0, "the odd site was not reported");

    // A child edited into an odd shape (its port pointed at a number nobody serves, its
    // selector emptied of the site's instance) is restored.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .patch(
            "good0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9999}],
                "selector": {"app.kubernetes.io/instance": "someone-else"}}})),
        )
        .await
        .unwrap();
    wait_for("odd Service restored", Duration::from_secs(30), || async {
        let s = services.get("good0").await.map_err(|e| e.to_string())?;
        let spec = s.spec.unwrap_or_default();
        let target = spec
            .ports
            .unwrap_or_default()
            .first()
            .and_then(|p| p.target_port.clone());
        let instance = spec
            .selector
            .unwrap_or_default()
            .get("app.kubernetes.io/instance")
            .cloned();
        if target == Some(IntOrString::String("http".into()))
            && instance.as_deref() == Some("good0")
        {
            Ok(())
        } else {
            Err(format!(
                "targetPort {target:?}, selector instance {instance:?}"
            ))
        }
    })
    .await;

    // Fixing the odd site brings it back.
    sites
        .patch(
            "odd",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"app": {"image": IMAGE, "replicas": 1}}})),
        )
        .await
        .expect("fix the odd site");
    wait_all_ready(
        &sites,
        &["odd".to_string()],
        Duration::from_secs(90),
        |_| true,
    )
    .await;
    eprintln!(
        "odd objects: {malformed} unreadable-site reports; 2 other sites Ready meanwhile; the \
         edited Service restored; the fixed site Ready"
    );
}
