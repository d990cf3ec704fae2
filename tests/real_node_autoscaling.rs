//! End-to-end autoscaling on the real node (`make e2e`, feature `e2e`): a site with
//! `minReplicas: 2`, `maxReplicas: 6` in real containers on `real-node`, under a bounded read
//! load through its Service. The kubelet reports the pods' real CPU use, metrics-server serves
//! it, the HorizontalPodAutoscaler adds pods. Prints the time until the autoscaler adds pods
//! and until they serve, the latency before and under load, and the scale-down once the load
//! ends; no request may fail throughout, and the operator never writes the Deployment. Needs
//! `make cluster-up REAL_NODE=1` and `make images`; `hack/e2e.sh` does both.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use common::audit::{audit_events, audit_log, by_operator, file_len, in_namespace, is_write};
use common::e2e::{env_or, local_volumes, publish_article, real_node_site, site_address_and_token};
use common::http::request;
use common::operator::OperatorProcess;
use common::pods::{is_live, is_ready};
use common::site::wait_site_ready;
use common::{TestNamespace, client, wait_for};

const NODE: &str = "real-node";
/// Readers of the load, each at most `READ_RATE` requests a second: bounded, whatever the
/// site's speed.
const READERS: usize = 16;
const READ_RATE: u64 = 40;
const LOAD_LIMIT: Duration = Duration::from_secs(240);

/// One read: when it was sent, how long it took, whether it got a 200.
struct Read {
    at: Instant,
    took: Duration,
    ok: bool,
}

/// A bounded read load (`READERS` x `READ_RATE`/s) on one published article.
struct ReadLoad {
    reads: Arc<Mutex<Vec<Read>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ReadLoad {
    fn start(addr: &str, path: &str, readers: usize) -> Self {
        let reads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..readers)
            .map(|_| {
                let (reads, stop) = (reads.clone(), stop.clone());
                let (addr, path) = (addr.to_string(), path.to_string());
                tokio::spawn(async move {
                    let until = Instant::now() + LOAD_LIMIT;
                    let period = Duration::from_millis(1000 / READ_RATE);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        let at = Instant::now();
                        let r =
                            request(&addr, "GET", &path, None, None, Duration::from_secs(5)).await;
                        let read = Read {
                            at,
                            took: at.elapsed(),
                            ok: matches!(r, Ok((200, _, _))),
                        };
                        if let Ok(mut v) = reads.lock() {
                            v.push(read);
                        }
                        tokio::time::sleep(period.saturating_sub(at.elapsed())).await;
                    }
                })
            })
            .collect();
        Self { reads, stop, tasks }
    }

    /// (reads, failed, p50, p99) of the reads sent in `[from, to)`.
    fn window(&self, from: Instant, to: Instant) -> (usize, usize, Duration, Duration) {
        let v = self.reads.lock().expect("reads");
        let mut took: Vec<Duration> = v
            .iter()
            .filter(|r| r.at >= from && r.at < to)
            .map(|r| r.took)
            .collect();
        let failed = v
            .iter()
            .filter(|r| r.at >= from && r.at < to && !r.ok)
            .count();
        took.sort();
        let q = |p: f64| {
            took.get(((took.len() as f64 * p) as usize).min(took.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        (took.len(), failed, q(0.5), q(0.99))
    }

    fn failed(&self) -> usize {
        self.reads
            .lock()
            .expect("reads")
            .iter()
            .filter(|r| !r.ok)
            .count()
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Ready app pods, and the ready addresses of the Service's endpoints.
async fn serving(pods: &Api<Pod>, slices: &Api<EndpointSlice>, site: &str) -> (usize, usize) {
    let ready = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={site},app.kubernetes.io/component=app"
        )))
        .await
        .map(|l| l.items.iter().filter(|p| is_live(p) && is_ready(p)).count())
        .unwrap_or(0);
    let endpoints = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={site}")))
        .await
        .map(|l| {
            l.items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count()
        })
        .unwrap_or(0);
    (ready, endpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_autoscaler_adds_pods_under_load_and_removes_them_after() {
    let client = client().await;
    common::crd::install_crd(&client).await;
    let ns = TestNamespace::create(&client, "e2e-autoscale").await;
    let class = format!("real-node-{}", ns.name);
    let node_dir = env_or(
        "REAL_NODE_DIR",
        &common::cluster_dir().join("real-node").to_string_lossy(),
    );
    let _volumes = local_volumes(&client, &class, Path::new(&node_dir), &[NODE], 1).await;
    let op = OperatorProcess::in_namespace(&ns.name, &[]);
    op.wait_ready().await;

    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = real_node_site(2, 1, &class);
    // A small CPU request, so that a load this machine can generate is a large share.
    spec["app"]["resources"] =
        json!({"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}});
    spec["app"]["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 6,
        "targetCPUUtilizationPercentage": 50, "scaleDownStabilizationSeconds": 60});
    let spec = serde_json::from_value(spec).expect("site spec");
    let name = sites
        .create(&PostParams::default(), &ArticleSite::new("scaled", spec))
        .await
        .expect("create site")
        .name_any();
    wait_site_ready(&sites, &name, Duration::from_secs(300)).await;

    let (addr, token) = site_address_and_token(&client, &ns.name, &name).await;
    publish_article(&addr, &token, "front-page").await;
    let path = "/api/v1/articles/front-page";

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    // The kubelet's real CPU figures reach the autoscaler.
    wait_for(
        "the autoscaler reads CPU metrics",
        Duration::from_secs(120),
        || async {
            let h = hpas.get(&name).await.map_err(|e| e.to_string())?;
            h.status
                .and_then(|s| s.current_metrics)
                .filter(|m| !m.is_empty())
                .map(drop)
                .ok_or_else(|| "no metrics yet".to_string())
        },
    )
    .await;

    // Latency before: one reader.
    let quiet = ReadLoad::start(&addr, path, 1);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await; // the measured window, not a wait
    let before = quiet.window(t, Instant::now());
    let quiet_failed = quiet.failed();
    quiet.stop().await;
    println!(
        "before: {} reads, {} failed, p50 {}, p99 {} (1 reader)",
        before.0,
        before.1,
        ms(before.2),
        ms(before.3)
    );

    let offset = file_len(&audit_log());
    let load = ReadLoad::start(&addr, path, READERS);
    let started = Instant::now();
    let added = wait_for(
        "the autoscaler to add pods",
        Duration::from_secs(180),
        || async {
            let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
            let n = d.spec.and_then(|s| s.replicas).unwrap_or(0);
            (n > 2).then_some(n).ok_or_else(|| format!("{n} replicas"))
        },
    )
    .await;
    let t_added = started.elapsed();
    let serving_at = wait_for(
        "the new pods to serve",
        Duration::from_secs(180),
        || async {
            let (ready, endpoints) = serving(&pods, &slices, &name).await;
            (ready > 2 && endpoints > 2)
                .then_some((ready, endpoints))
                .ok_or_else(|| format!("{ready} ready pods, {endpoints} ready endpoints"))
        },
    )
    .await;
    let t_serving = started.elapsed();
    let scaled = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await; // the measured window, not a wait
    let after = load.window(scaled, Instant::now());
    let early = load.window(started, started + Duration::from_secs(15));
    let peak = hpas
        .get(&name)
        .await
        .ok()
        .and_then(|h| h.status)
        .map(|s| s.desired_replicas)
        .unwrap_or(0);
    let load_failed = load.failed();
    load.stop().await;
    let ended = Instant::now();
    println!(
        "under load ({READERS} readers x {READ_RATE}/s): the autoscaler asked for {added} pods after {}, {} ready pods / {} endpoints served after {}; desired at the end {peak}",
        secs(t_added),
        serving_at.0,
        serving_at.1,
        secs(t_serving)
    );
    println!(
        "latency: first 15 s of load p50 {} p99 {} ({} reads); after the scale-up p50 {} p99 {} ({} reads); {load_failed} failed",
        ms(early.2),
        ms(early.3),
        early.0,
        ms(after.2),
        ms(after.3),
        after.0
    );

    let back = wait_for(
        "the scale-down to minReplicas",
        Duration::from_secs(600),
        || async {
            let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
            let n = d.spec.and_then(|s| s.replicas).unwrap_or(0);
            let (ready, _) = serving(&pods, &slices, &name).await;
            (n == 2 && ready == 2)
                .then_some(n)
                .ok_or_else(|| format!("{n} replicas, {ready} ready"))
        },
    )
    .await;
    println!(
        "scale-down to {back} pods {} after the load ended",
        secs(ended.elapsed())
    );
    let writes: Vec<String> = audit_events(&audit_log(), offset, |e| {
        by_operator(e)
            && in_namespace(e, &ns.name)
            && is_write(e)
            && e["objectRef"]["resource"].as_str() == Some("deployments")
    })
    .iter()
    .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
    .collect();
    println!(
        "operator writes to the Deployment while it scaled: {}",
        writes.len()
    );
    assert_eq!(quiet_failed + load_failed, 0, "no failed request");
    assert_eq!(writes, Vec::<String>::new());
    assert!(added > 2 && added <= 6);
}
