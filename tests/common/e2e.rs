//! Helpers of the end-to-end tests on real nodes (`make e2e`): a steady load that records
//! every acknowledged write, node faults through `hack/cluster/node-fault.sh`, and local
//! volumes the pods can use on any real node. The database's side is in `database.rs`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use articlesite_operator::resources::{Names, WRITE_TOKEN_KEY};
use k8s_openapi::api::core::v1::{PersistentVolume, Secret, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use tokio::time::Instant;

use super::ClusterScoped;
use super::database::secret_value;

/// The nodes of `make cluster-up REAL_NODES=3`.
pub const REAL_NODES: [&str; 3] = ["real-node-1", "real-node-2", "real-node-3"];
/// The PostgreSQL image's fixed uid (the owner of a data volume).
pub const POSTGRES_UID: u32 = 999;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The real nodes' label and a toleration of their taint, as the chart's values and a
/// site's `spec.placement` take them.
pub fn real_node_placement() -> serde_json::Value {
    json!({
        "nodeSelector": {"type": "real"},
        "tolerations": [{"key": "articlesite.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
    })
}

/// The spec of a site on the real nodes: the images `make images` built (never pulled),
/// `app_replicas` app pods, a database of `instances` on 1 GiB volumes of `storage_class`,
/// placed on the real nodes. A test adds what it needs (`spec["title"] = ...`).
pub fn real_node_site(app_replicas: i32, instances: i32, storage_class: &str) -> serde_json::Value {
    json!({
        "app": {
            "image": env_or("ARTICLE_SERVER_IMAGE", "localhost/articlesite/article-server:dev"),
            "imagePullPolicy": "Never",
            "replicas": app_replicas,
        },
        "database": {
            "image": env_or("POSTGRESQL_IMAGE", "localhost/articlesite/postgresql:dev"),
            "imagePullPolicy": "Never",
            "instances": instances,
            "storage": {"size": "1Gi", "storageClass": storage_class},
        },
        "placement": real_node_placement(),
    })
}

/// What a test needs to talk to a site: its write token and the address of its Service
/// (`ClusterIP:80`, which this machine reaches when the pods run on real nodes).
pub async fn site_address_and_token(client: &Client, ns: &str, name: &str) -> (String, String) {
    let token = secret_value(
        &Api::<Secret>::namespaced(client.clone(), ns)
            .get(&Names::write_token(name))
            .await
            .expect("write token"),
        WRITE_TOKEN_KEY,
    );
    let cluster_ip = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("site Service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ClusterIP");
    (format!("{cluster_ip}:80"), token)
}

/// A StorageClass of the test's own and `count` local PersistentVolumes of 1Gi in it, each a
/// directory under `node_dir` usable from any of `nodes` (the real nodes share this machine's
/// filesystem, so a volume moves with its pod). Removed with the returned guard.
pub async fn local_volumes(
    client: &Client,
    class: &str,
    node_dir: &Path,
    nodes: &[&str],
    count: usize,
) -> ClusterScoped {
    let pp = PostParams::default();
    let mut cluster_scoped = ClusterScoped::default();
    cluster_scoped.track::<StorageClass>(class);
    let sc: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": class, "labels": {"articlesite.io/test": "true"}},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .expect("StorageClass");
    Api::<StorageClass>::all(client.clone())
        .create(&pp, &sc)
        .await
        .expect("create StorageClass");
    for i in 0..count {
        // The first keeps the class's name (one volume per test, as before).
        let name = if i == 0 {
            class.to_string()
        } else {
            format!("{class}-{i}")
        };
        cluster_scoped.track::<PersistentVolume>(&name);
        let dir = node_dir.join("volumes").join(&name);
        std::fs::create_dir_all(&dir).expect("create the volume directory");
        std::os::unix::fs::chown(&dir, Some(POSTGRES_UID), Some(POSTGRES_UID))
            .expect("chown the volume directory");
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"articlesite.io/test": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": class,
                "local": {"path": dir.to_string_lossy()},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}
                ]}]}},
            },
        }))
        .expect("PersistentVolume");
        Api::<PersistentVolume>::all(client.clone())
            .create(&pp, &pv)
            .await
            .expect("create PersistentVolume");
    }
    cluster_scoped
}

/// One request of the load: when, whether it succeeded (a read after its retries), and
/// whether its first attempt did.
pub struct Sample {
    at: Instant,
    write: bool,
    ok: bool,
    first_ok: bool,
}

/// A steady, bounded load through the Service's ClusterIP (this machine's kube-proxy sends it
/// to the real nodes' pods): five reads a second (a client that retries an idempotent read
/// twice, 2 s per attempt) and five writes a second (never retried, `WRITE_TIMEOUT` each),
/// each write a new article whose slug is recorded once the site acknowledged it (201).
/// A write's client timeout: the article server's request timeout (10 s), which covers its
/// write hold (5 s) and one database call, so a held write counts as slow, not as failed;
/// `Load::write_pause` reports how long writes were held.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: String, token: String, published: String) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for write in [false, true] {
            let (samples, acked, stop) = (samples.clone(), acked.clone(), stop.clone());
            let (addr, token, published) = (addr.clone(), token.clone(), published.clone());
            tasks.push(tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(1200);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    n += 1;
                    let t = Instant::now();
                    let (ok, first_ok) = if write {
                        let slug = format!("w-{n}");
                        let body = json!({"slug": slug, "title": "load", "body": "x"});
                        let r = super::http::request(
                            &addr,
                            "POST",
                            "/api/v1/articles",
                            Some(&token),
                            Some(&body),
                            WRITE_TIMEOUT,
                        )
                        .await;
                        let ok = matches!(r, Ok((201, _, _)));
                        if ok && let Ok(mut a) = acked.lock() {
                            a.push((slug, Instant::now()));
                        }
                        (ok, ok)
                    } else {
                        let path = format!("/api/v1/articles/{published}");
                        let mut first = None;
                        let mut ok = false;
                        for _ in 0..3 {
                            let r = super::http::request(
                                &addr,
                                "GET",
                                &path,
                                None,
                                None,
                                Duration::from_secs(2),
                            )
                            .await;
                            ok = matches!(r, Ok((200, _, _)));
                            first.get_or_insert(ok);
                            if ok {
                                break;
                            }
                        }
                        (ok, first.unwrap_or(false))
                    };
                    if let Ok(mut s) = samples.lock() {
                        s.push(Sample {
                            at: t,
                            write,
                            ok,
                            first_ok,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(200).saturating_sub(t.elapsed()))
                        .await;
                }
            }));
        }
        Self {
            samples,
            acked,
            stop,
            tasks,
        }
    }

    /// (reads, failed reads, reads whose first attempt failed, writes, failed writes) since `from`.
    pub fn counts(&self, from: Instant) -> (usize, usize, usize, usize, usize) {
        let s = self.samples.lock().expect("samples");
        let w: Vec<&Sample> = s.iter().filter(|s| s.at >= from).collect();
        let reads = w.iter().filter(|s| !s.write).count();
        let failed_reads = w.iter().filter(|s| !s.write && !s.ok).count();
        let first_failed = w.iter().filter(|s| !s.write && !s.first_ok).count();
        let writes = w.iter().filter(|s| s.write).count();
        let failed_writes = w.iter().filter(|s| s.write && !s.ok).count();
        (reads, failed_reads, first_failed, writes, failed_writes)
    }

    /// Like `counts`, for the requests sent between `from` and `to`.
    pub fn counts_between(
        &self,
        from: Instant,
        to: Instant,
    ) -> (usize, usize, usize, usize, usize) {
        let s = self.samples.lock().expect("samples");
        let w: Vec<&Sample> = s.iter().filter(|s| s.at >= from && s.at < to).collect();
        let f = |write: bool, ok: fn(&Sample) -> bool| {
            w.iter().filter(|s| s.write == write && !ok(s)).count()
        };
        (
            w.iter().filter(|s| !s.write).count(),
            f(false, |s| s.ok),
            f(false, |s| s.first_ok),
            w.iter().filter(|s| s.write).count(),
            f(true, |s| s.ok),
        )
    }

    /// The first failed write at or after `from`, and the first acknowledged one after it.
    pub fn write_outage(&self, from: Instant) -> Option<(Instant, Option<Instant>)> {
        let s = self.samples.lock().expect("samples");
        let first_fail = s
            .iter()
            .filter(|s| s.write && s.at >= from && !s.ok)
            .map(|s| s.at)
            .min()?;
        let resumed = s
            .iter()
            .filter(|s| s.write && s.at > first_fail && s.ok)
            .map(|s| s.at)
            .min();
        Some((first_fail, resumed))
    }

    /// The longest time without an acknowledged write since `from`: from `from` to the
    /// first acknowledgment, between two, or from the last one to now. With writes held
    /// through a failover (not failed) this is the pause a client sees.
    pub fn write_pause(&self, from: Instant) -> Duration {
        let acked = self.acked.lock().expect("acked");
        let mut times: Vec<Instant> = acked
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t >= from)
            .collect();
        times.sort();
        times.push(Instant::now());
        let mut prev = from;
        let mut longest = Duration::ZERO;
        for t in times {
            longest = longest.max(t - prev);
            prev = t;
        }
        longest
    }

    pub fn acked(&self) -> Vec<String> {
        self.acked_with_times()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    /// The acknowledged slugs, each with when its 201 arrived.
    pub fn acked_with_times(&self) -> Vec<(String, Instant)> {
        self.acked.lock().expect("acked").clone()
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// `hack/cluster/node-fault.sh ACTION NODE`; panics with its output when it fails.
pub fn node_fault(action: &str, node: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster/node-fault.sh");
    let out = Command::new(&script)
        .args([action, node])
        .output()
        .expect("run node-fault.sh");
    assert!(
        out.status.success(),
        "node-fault.sh {action} {node}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Heals or boots every real node when dropped, so that a failing test leaves no node faulty.
pub struct HealAll;

impl Drop for HealAll {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster/node-fault.sh");
        for n in REAL_NODES {
            for action in ["heal", "boot"] {
                let st = Command::new(&script).args(["status", n]).output();
                let faulty =
                    st.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains("fault=none"));
                if faulty {
                    let _ = Command::new(&script).args([action, n]).output();
                }
            }
        }
    }
}

pub fn node_status() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster/node-fault.sh");
    let out = Command::new(&script)
        .arg("status")
        .output()
        .expect("run node-fault.sh status");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The acknowledged articles (`slugs`) that the site at `addr` does not serve (each asked up
/// to three times), with the last status seen.
pub async fn missing_articles(addr: &str, token: &str, slugs: &[String]) -> Vec<String> {
    let mut lost = Vec::new();
    for slug in slugs {
        let path = format!("/api/v1/articles/{slug}");
        let mut status = 0;
        for _ in 0..3 {
            if let Ok((s, _, _)) = super::http::request(
                addr,
                "GET",
                &path,
                Some(token),
                None,
                Duration::from_secs(5),
            )
            .await
            {
                status = s;
                if s == 200 {
                    break;
                }
            }
        }
        if status != 200 {
            lost.push(format!("{slug}: {status}"));
        }
    }
    lost
}

/// Creates article `slug` through the site at `addr` (retrying until the site answers, at most
/// a minute; an existing one is kept) and publishes it: the article the load reads.
pub async fn publish_article(addr: &str, token: &str, slug: &str) {
    super::wait_for(
        "the first article",
        Duration::from_secs(60),
        || async move {
            let body = json!({"slug": slug, "title": "Front page", "body": "kept"});
            let (s, _, b) = super::http::request(
                addr,
                "POST",
                "/api/v1/articles",
                Some(token),
                Some(&body),
                Duration::from_secs(5),
            )
            .await?;
            if s == 201 || s == 409 {
                Ok(())
            } else {
                Err(format!("{s} {b}"))
            }
        },
    )
    .await;
    let (s, _, b) = super::http::request(
        addr,
        "POST",
        &format!("/api/v1/articles/{slug}/publish"),
        Some(token),
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("publish");
    assert!(s == 200 || s == 204, "publish: {s} {b}");
}
