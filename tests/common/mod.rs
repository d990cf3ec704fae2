//! Shared helpers for the integration tests. Every test runs against the real local
//! control plane that `make cluster-up` starts; a test never skips when it is missing.
#![allow(dead_code)] // each test binary uses a different subset

pub mod site_operator;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::time::Instant;

pub mod gitops;
pub mod process;

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
        let suffix: String = format!("{:08x}", rand_u32());
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
        // Drop cannot be async, and the test's client is driven by the test's runtime,
        // which this thread blocks: delete from a thread with its own runtime and client.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let client = client().await;
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await;
            });
        })
        .join();
    }
}

fn rand_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

/// Polls `check` every 250 ms until it returns `Some`, or panics after `timeout` with `what`
/// and the last observation, so a failure says what was being waited for.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last: String;
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    loop {
        poll.tick().await;
        match check().await {
            Ok(v) => return v,
            Err(why) => last = why,
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
    }
}
