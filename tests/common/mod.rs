//! Shared helpers for the integration tests. Every test runs against the real local
//! control plane that `make cluster-up` starts; a test never skips when it is missing.
#![allow(dead_code)] // each test binary uses a different subset

pub mod audit;
pub mod chart;
pub mod control_plane;
pub mod crd;
pub mod database;
pub mod e2e;
pub mod gitops;
pub mod http;
pub mod operator;
pub mod pods;
pub mod proxy;
pub mod site;
pub mod tools;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use operator::OperatorProcess;

/// The field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "articlesite-tests";

/// The admin kubeconfig of the local cluster: `$KUBECONFIG` when set, else `.cluster/kubeconfig`.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cluster/kubeconfig"),
    }
}

/// The local cluster's state directory (`.cluster/`, or `$CLUSTER_DIR` of another cluster):
/// the directory of its kubeconfig. Its `logs/audit.log` records every write request.
pub fn cluster_dir() -> PathBuf {
    kubeconfig_path()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A client for the local cluster. Panics with a hint when the cluster is not up,
/// so a missing cluster fails the test instead of skipping it.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read kubeconfig {}: {e}. Start the local cluster with `make cluster-up` \
             (make test does this for you).",
            path.display()
        )
    });
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig of the local cluster is valid");
    // Tests assert on the API server's own answers (a 429 from an eviction, say), so
    // the client must not hide them behind its default retries.
    config.default_retry = false;
    let client = Client::try_from(config).expect("client from kubeconfig");
    client.apiserver_version().await.unwrap_or_else(|e| {
        panic!("local API server does not answer ({e}); run `make cluster-up`")
    });
    client
}

/// A namespace that is deleted again when the test ends (also when it panics).
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<random suffix>` so that tests running in parallel never share objects.
    pub async fn create(client: &Client, prefix: &str) -> Self {
        Self::create_with_labels(client, prefix, &[]).await
    }

    pub async fn create_with_labels(
        client: &Client,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> Self {
        let suffix: String = format!("{:08x}", random_u64() as u32);
        let name = format!("{prefix}-{suffix}");
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([("articlesite.io/test".to_string(), "true".to_string())])
                .collect(),
        );
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Deleting the namespace makes the kubelets remove its pods' logs: after a failure,
        // keep what the real nodes' containers said (Patroni's decisions are only there).
        if std::thread::panicking() {
            keep_real_node_pod_logs(&name);
        }
        block_on_own_runtime(move || async move {
            let _ = Api::<Namespace>::all(client().await)
                .delete(&name, &DeleteParams::background())
                .await;
        });
    }
}

/// Copies the pod logs of namespace `ns` from every real node (`$REAL_NODE_DIR/<node>/pod-logs`,
/// the kubelets' `podLogsDir`) to `target/tmp/pod-logs/<ns>/<node>/`. Best effort: a test
/// that already failed must not fail differently here.
fn keep_real_node_pod_logs(ns: &str) {
    fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy_tree(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), target)?;
            }
        }
        Ok(())
    }
    let dir = std::env::var_os("REAL_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cluster_dir().join("real-nodes"));
    let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("pod-logs")
        .join(ns);
    let Ok(nodes) = std::fs::read_dir(&dir) else {
        return;
    };
    let prefix = format!("{ns}_");
    for node in nodes.flatten() {
        let Ok(pods) = std::fs::read_dir(node.path().join("pod-logs")) else {
            continue;
        };
        for pod in pods.flatten() {
            if pod.file_name().to_string_lossy().starts_with(&prefix) {
                let to = kept.join(node.file_name()).join(pod.file_name());
                if let Err(e) = copy_tree(&pod.path(), &to) {
                    eprintln!("keeping the logs of {}: {e}", pod.path().display());
                }
            }
        }
    }
    eprintln!("the real nodes' pod logs of {ns} are in {}", kept.display());
}

/// Runs a clean-up to its end from a `Drop`. Drop cannot be async, and the test's client is
/// driven by the test's runtime, which this thread blocks: the clean-up runs on a thread with
/// a runtime of its own (and makes its own client). A panic there is not a second panic here.
pub fn block_on_own_runtime<F, Fut>(cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(cleanup());
    })
    .join();
}

/// Cluster-scoped test objects (namespaces do not take them), deleted in the order they were
/// added when the guard drops, also when the test panics.
#[derive(Default)]
pub struct ClusterScoped(Vec<(ApiResource, String)>);

impl ClusterScoped {
    /// Deletes the object `name` of kind `K` at the end; add it before creating it, so that a
    /// failure half-way leaves nothing behind.
    pub fn track<K>(&mut self, name: &str)
    where
        K: Resource<Scope = k8s_openapi::ClusterResourceScope>,
        K::DynamicType: Default,
    {
        self.0.push((
            ApiResource::erase::<K>(&Default::default()),
            name.to_string(),
        ));
    }

    /// Applies (server-side, forced) an object of kind `K` and deletes it at the end.
    pub async fn apply<K>(&mut self, client: &Client, obj: Value)
    where
        K: Resource<Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let obj: K = serde_json::from_value(obj).expect("valid object");
        let name = obj.name_any();
        self.track::<K>(&name);
        Api::<K>::all(client.clone())
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {} {name}: {e}", K::kind(&Default::default())));
    }
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        let objects = std::mem::take(&mut self.0);
        block_on_own_runtime(move || async move {
            let client = client().await;
            for (ar, name) in objects {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                let _ = api.delete(&name, &DeleteParams::background()).await;
            }
        });
    }
}

/// Writes to `path` a kubeconfig that authenticates with a fresh token of the ServiceAccount
/// `sa` of `ns` (TokenRequest API), so that a process runs with that account's rights and
/// identity. The cluster entry is the admin kubeconfig's, as is (its CA inline).
pub async fn service_account_kubeconfig(client: &Client, ns: &str, sa: &str, path: &Path) {
    let tr: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}
    }))
    .expect("token request");
    let token = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for ServiceAccount {ns}/{sa}: {e}"))
        .status
        .expect("token status")
        .token;
    let admin = Kubeconfig::read_from(kubeconfig_path()).expect("admin kubeconfig");
    let cluster = admin.clusters.first().expect("a cluster").clone();
    let cluster_yaml = serde_json::to_value(&cluster).expect("cluster");
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster_yaml],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster.name, "user": sa}}],
        "current-context": sa,
    });
    std::fs::write(path, serde_json::to_string(&config).expect("kubeconfig"))
        .expect("write kubeconfig");
}

/// A random number (std only: the hasher's random keys and the clock).
pub fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// What most tests start with: the CRD installed, a namespace of their own (with `labels`),
/// an operator limited to it and ready, and the namespace's ArticleSites. Bound in this order,
/// they drop in the reverse one: the operator stops before its namespace goes.
pub async fn namespace_with_operator(
    prefix: &str,
    labels: &[(&str, &str)],
    operator_args: &[&str],
) -> (Client, TestNamespace, OperatorProcess, Api<ArticleSite>) {
    let client = client().await;
    crd::install_crd(&client).await;
    let ns = TestNamespace::create_with_labels(&client, prefix, labels).await;
    let op = OperatorProcess::in_namespace(&ns.name, operator_args);
    op.wait_ready().await;
    let sites = Api::namespaced(client.clone(), &ns.name);
    (client, ns, op, sites)
}

/// Polls `check` every 250 ms until it returns `Some`, or panics after `timeout` with `what`
/// and the last observation, so a failure says what was being waited for.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match poll_until(timeout, check).await {
        Ok(v) => v,
        Err(last) => panic!("timed out after {timeout:?} waiting for {what}; last: {last}"),
    }
}

/// As [`wait_for`], and the panic adds what `explain` finds at the deadline: for a picture
/// too costly to take at every poll.
pub async fn wait_for_explained<T, F, Fut, E, EFut>(
    what: &str,
    timeout: Duration,
    check: F,
    explain: E,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
    E: FnOnce() -> EFut,
    EFut: Future<Output = String>,
{
    match poll_until(timeout, check).await {
        Ok(v) => v,
        Err(last) => {
            let picture = explain().await;
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}; {picture}")
        }
    }
}

/// Polls `check` every 250 ms until it returns `Ok`, or returns its last `Err` after `timeout`.
async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    loop {
        poll.tick().await;
        match check().await {
            Ok(v) => return Ok(v),
            Err(why) if Instant::now() >= deadline => return Err(why),
            Err(_) => {}
        }
    }
}
