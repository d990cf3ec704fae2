//! End-to-end at full load on three real nodes (`make e2e`, feature `e2e`): reads from wrk
//! with keep-alive as fast as this machine serves them (pages and API answers, every status
//! counted by `tests/load/reads.lua`) and a trickle of writes (`common::e2e::Load`, five a
//! second, every acknowledgment recorded), through the site's Service, during each event that
//! high availability has to hide: a rollout restart of the app, the deletion of an app pod, a
//! drain of a node that holds an app pod, and a change of the operator's leader. Prints per
//! event the requests, the rate, every non-2xx by status (and problem type where the answer
//! says one), wrk's connection errors and timeouts and p50/p99/max, and checks the goals: no
//! read fails and none times out; a write fails only with a 503 of the database, and no
//! acknowledged write is lost. Needs `make cluster-up REAL_NODES=3` and `make images`;
//! `hack/e2e.sh` does both.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use articlesite_operator::patroni::ROLE_LABEL;
use articlesite_operator::resources::Names;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{EvictParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use common::e2e::{
    Load, REAL_NODES, env_or, local_volumes, missing_articles, publish_article, real_node_site,
    site_address_and_token,
};
use common::operator::{OperatorProcess, lease_holder};
use common::pods::{is_live, is_ready, live_pods, node_of};
use common::site::wait_site_ready;
use common::{TestNamespace, client, wait_for};

/// wrk's connections and threads: as in the report of the issue (`wrk -t2 -c16`).
const CONNECTIONS: &str = "16";
const THREADS: &str = "2";
/// A read not answered within this counts as a timeout (wrk's default, as in the report);
/// the script counts the answers the server itself took as long for.
const READ_TIMEOUT_SECONDS: u64 = 2;
/// What high availability has to hide, one event at a time under the load.
#[derive(Clone, Copy)]
enum Event {
    RolloutRestart,
    AppPodDeleted,
    NodeDrained,
    LeaderChange,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::RolloutRestart => "rollout restart",
            Event::AppPodDeleted => "app pod deleted",
            Event::NodeDrained => "node drained",
            Event::LeaderChange => "operator leader change",
        }
    }

    /// How long the load runs around the event: a rollout and a drain replace pods one by
    /// one, the others replace one pod or one leader.
    fn window_seconds(self) -> u64 {
        match self {
            Event::RolloutRestart | Event::NodeDrained => 90,
            Event::AppPodDeleted | Event::LeaderChange => 40,
        }
    }
}

/// Load before an event starts, so that every connection is established and warm (wrk gives
/// no sign when its connections are up, so this is a lead time, not a condition).
const LEAD: Duration = Duration::from_secs(3);
const LEASE: &str = "articlesite-operator-full-load";
const APP_REPLICAS: usize = 3;

/// What `tests/load/reads.lua` prints at the end of a wrk run.
#[derive(Debug, Deserialize)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    /// Answers by status; a problem answer (`application/problem+json`) by `status type`.
    statuses: BTreeMap<String, u64>,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    /// Answers the server itself took 2 s or more for (its Server-Timing), and its longest
    /// time: beside wrk's timeouts they say whether a slow read was slow in the server or
    /// before it (the network, a queue, a dead address).
    server_slow: u64,
    server_max_us: u64,
}

impl WrkResult {
    fn rate(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    /// Every answer that is not 2xx, by status (and problem type).
    fn non_2xx(&self) -> BTreeMap<&str, u64> {
        self.statuses
            .iter()
            .filter(|(k, _)| !k.starts_with('2'))
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    }

    fn failures(&self) -> u64 {
        self.non_2xx().values().sum::<u64>() + self.connect + self.read + self.write + self.timeout
    }
}

/// A wrk run of `seconds` against `url`, started now (in a thread of its own).
fn start_wrk(url: &str, slug: &str, seconds: u64) -> tokio::task::JoinHandle<WrkResult> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/load/reads.lua");
    let (url, slug) = (url.to_string(), slug.to_string());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("wrk")
            .args([
                "-t",
                THREADS,
                "-c",
                CONNECTIONS,
                "-d",
                &format!("{seconds}s"),
                "--timeout",
                &format!("{READ_TIMEOUT_SECONDS}s"),
                "-s",
            ])
            .arg(&script)
            .arg(&url)
            .env("LOAD_SLUG", &slug)
            .env("LOAD_SLOW_MS", (READ_TIMEOUT_SECONDS * 1000).to_string())
            .output()
            .expect("run wrk (make e2e installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("LOAD_RESULT "))
            .unwrap_or_else(|| panic!("no LOAD_RESULT line from wrk: {text}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    })
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// One event's line, and the goals it missed.
fn report(
    event: &str,
    r: &WrkResult,
    took: Duration,
    load: &Load,
    from: Instant,
    misses: &mut Vec<String>,
) -> String {
    let (_, _, _, writes, failed_writes) = load.counts(from);
    let line = format!(
        "{event} (took {:.1} s): reads {} at {:.0}/s, non-2xx {:?}, connect errors {}, read errors {}, write errors {}, timeouts {} (server slow {}, server max {}), p50 {} p99 {} max {}; writes {failed_writes}/{writes} failed, paused {:.1} s at most",
        took.as_secs_f64(),
        r.requests,
        r.rate(),
        r.non_2xx(),
        r.connect,
        r.read,
        r.write,
        r.timeout,
        r.server_slow,
        ms(r.server_max_us),
        ms(r.p50_us),
        ms(r.p99_us),
        ms(r.max_us),
        load.write_pause(from).as_secs_f64(),
    );
    if r.failures() > 0 {
        misses.push(format!("no read fails or times out: {line}"));
    }
    // None of these events touches the database primary: no write may fail.
    if failed_writes > 0 {
        misses.push(format!("no write fails while the database is up: {line}"));
    }
    line
}

/// What the app pods still there logged in the last `seconds`: their warnings and errors
/// and the requests they took 1 s or more for, by message and count, so that a failed read
/// in the report comes with the server's side of it (a pod that is gone took its log along).
async fn app_log_digest(pods: &Api<Pod>, site: &str, seconds: i64) -> Vec<String> {
    let Ok(list) = pods
        .list(&ListParams::default().labels(&common::pods::component_selector(site, "app")))
        .await
    else {
        return vec!["cannot list the app pods".into()];
    };
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for p in &list.items {
        let params = LogParams {
            since_seconds: Some(seconds),
            ..Default::default()
        };
        let Ok(text) = pods.logs(&p.name_any(), &params).await else {
            continue;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let level = v["level"].as_str().unwrap_or("");
            let slow = v["latency_ms"].as_f64().is_some_and(|ms| ms >= 1000.0);
            if level == "WARN" || level == "ERROR" || slow {
                let what = format!(
                    "{} {level} {} {} {} {}",
                    p.name_any(),
                    v["span"]["route"].as_str().unwrap_or(""),
                    v["status"],
                    v["message"].as_str().unwrap_or(""),
                    v["error"].as_str().unwrap_or("")
                );
                *seen.entry(what).or_default() += 1;
            }
        }
    }
    seen.into_iter()
        .map(|(what, n)| format!("{n} × {what}"))
        .collect()
}

/// Ready, live pods of a component, by node.
async fn ready_on(
    pods: &Api<Pod>,
    site: &str,
    component: &str,
) -> Result<Vec<(String, String)>, String> {
    Ok(live_pods(pods, site, component)
        .await?
        .iter()
        .filter(|p| is_ready(p))
        .map(|p| (p.name_any(), node_of(p).to_string()))
        .collect())
}

async fn wait_app_ready(pods: &Api<Pod>, site: &str, what: &str, limit: Duration) {
    let (pods, site) = (pods.clone(), site.to_string());
    wait_for(what, limit, || {
        let (pods, site) = (pods.clone(), site.clone());
        async move {
            let all = pods
                .list(
                    &ListParams::default().labels(&common::pods::component_selector(&site, "app")),
                )
                .await
                .map_err(|e| e.to_string())?;
            let ready = all
                .items
                .iter()
                .filter(|p| is_ready(p) && is_live(p))
                .count();
            let stale = all.items.iter().filter(|p| !is_live(p)).count();
            if ready == APP_REPLICAS && stale == 0 && all.items.len() == APP_REPLICAS {
                Ok(())
            } else {
                Err(format!(
                    "{ready} ready, {stale} terminating, {} in all",
                    all.items.len()
                ))
            }
        }
    })
    .await;
}

/// Uncordons the node when dropped, so that a failing test leaves every node schedulable.
struct Cordoned(String);

impl Drop for Cordoned {
    fn drop(&mut self) {
        let kubectl = std::env::var("K8S_BIN")
            .map(|b| format!("{b}/kubectl"))
            .unwrap_or_else(|_| "kubectl".into());
        let _ = std::process::Command::new(kubectl)
            .args(["uncordon", &self.0])
            .output();
    }
}

/// `kubectl drain` of one node, as the API does it: cordon, then evict each of the
/// namespace's pods on it (retried while a budget refuses), until none is left.
async fn drain(nodes: &Api<Node>, pods: &Api<Pod>, node: &str) -> Cordoned {
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .expect("cordon");
    let guard = Cordoned(node.to_string());
    let (pods, node) = (pods.clone(), node.to_string());
    wait_for(
        &format!("every pod evicted from {node}"),
        Duration::from_secs(180),
        || {
            let (pods, node) = (pods.clone(), node.clone());
            async move {
                let on: Vec<Pod> = pods
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .filter(|p| node_of(p) == node && is_live(p))
                    .collect();
                if on.is_empty() {
                    return Ok(());
                }
                let mut refused = Vec::new();
                for p in &on {
                    if let Err(e) = pods.evict(&p.name_any(), &EvictParams::default()).await {
                        refused.push(format!("{}: {e}", p.name_any()));
                    }
                }
                Err(format!("{} pods left; refused: {refused:?}", on.len()))
            }
        },
    )
    .await;
    guard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_fail_at_full_load_through_rollouts_deletions_drains_and_leader_changes() {
    let client = client().await;
    common::crd::install_crd(&client).await;
    let ns = TestNamespace::create(&client, "full-load").await;
    let nodes: Api<Node> = Api::all(client.clone());
    let class = format!("full-load-{}", ns.name);
    let node_dir = env_or(
        "REAL_NODE_DIR",
        &common::cluster_dir().join("real-nodes").to_string_lossy(),
    );
    let _volumes = local_volumes(&client, &class, Path::new(&node_dir), &REAL_NODES, 3).await;

    // Two operators with leader election: the event "leader change" stops the leader.
    let ns_name = ns.name.clone();
    let election = |id: &'static str| {
        vec![
            "--leader-elect",
            "--lease-namespace",
            ns_name.as_str(),
            "--lease-name",
            LEASE,
            "--lease-identity",
            id,
        ]
    };
    let mut first = OperatorProcess::in_namespace(&ns.name, &election("operator-a"));
    first.wait_ready().await;
    let second = OperatorProcess::in_namespace(&ns.name, &election("operator-b"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "operator-a holds the Lease",
        Duration::from_secs(60),
        || async {
            match lease_holder(&leases, LEASE).await.as_deref() {
                Some("operator-a") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = real_node_site(APP_REPLICAS as i32, 3, &class);
    spec["title"] = json!("Full load");
    let spec = serde_json::from_value(spec).expect("site spec");
    let name = sites
        .create(&PostParams::default(), &ArticleSite::new("load", spec))
        .await
        .expect("create site")
        .name_any();
    wait_site_ready(&sites, &name, Duration::from_secs(300)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_app_ready(&pods, &name, "3 app pods Ready", Duration::from_secs(120)).await;

    let (addr, token) = site_address_and_token(&client, &ns.name, &name).await;
    let url = format!("http://{addr}");
    let slug = "front-page";
    publish_article(&addr, &token, slug).await;

    let load = Load::start(addr.clone(), token.clone(), slug.to_string());
    let mut lines = Vec::new();
    let mut misses = Vec::new();

    // 0. No event: the machine's rate, and the proof that the load itself does not fail.
    let from = Instant::now();
    let quiet = start_wrk(&url, slug, 10).await.expect("wrk");
    lines.push(report(
        "no event",
        &quiet,
        Duration::ZERO,
        &load,
        from,
        &mut misses,
    ));
    println!("{}", lines.last().unwrap());
    if quiet.failures() > 0 {
        for l in app_log_digest(&pods, &name, 20).await.iter().take(20) {
            println!("  server log: {l}");
        }
    }
    if quiet.rate() < 1000.0 {
        misses.push(format!("at least 1,000 reads/s: {}", lines.last().unwrap()));
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let app = Names::app(&name);
    for event in [
        Event::RolloutRestart,
        Event::AppPodDeleted,
        Event::NodeDrained,
        Event::LeaderChange,
    ] {
        let window = event.window_seconds();
        let from = Instant::now();
        let wrk = start_wrk(&url, slug, window);
        tokio::time::sleep(LEAD).await;
        let started = Instant::now();
        match event {
            Event::RolloutRestart => {
                let at = jiff::Timestamp::now().to_string();
                deployments
                    .patch(&app, &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": at}}}}})))
                    .await
                    .expect("rollout restart");
                let (d, app) = (deployments.clone(), app.clone());
                wait_for(
                    "the rollout restart to complete",
                    Duration::from_secs(window - 10),
                    || {
                        let (d, app) = (d.clone(), app.clone());
                        async move {
                            let d = d.get(&app).await.map_err(|e| e.to_string())?;
                            let st = d.status.clone().unwrap_or_default();
                            let n = Some(APP_REPLICAS as i32);
                            if st.observed_generation >= d.metadata.generation
                                && st.updated_replicas == n
                                && st.available_replicas == n
                                && st.replicas == n
                            {
                                Ok(())
                            } else {
                                Err(format!("{st:?}"))
                            }
                        }
                    },
                )
                .await;
                wait_app_ready(
                    &pods,
                    &name,
                    "the old pods gone",
                    Duration::from_secs(window - 10),
                )
                .await;
            }
            Event::AppPodDeleted => {
                let victim = ready_on(&pods, &name, "app").await.expect("app pods")[0]
                    .0
                    .clone();
                pods.delete(&victim, &Default::default())
                    .await
                    .expect("delete an app pod");
                wait_app_ready(
                    &pods,
                    &name,
                    "the deleted pod replaced",
                    Duration::from_secs(window - 10),
                )
                .await;
            }
            Event::NodeDrained => {
                // A node with an app pod and without the database primary: the drain is the
                // app's event (a drain of the primary's node is a switchover, proven in
                // tests/replicated_database.rs).
                let primary = live_pods(&pods, &name, "database")
                    .await
                    .expect("database pods")
                    .into_iter()
                    .find(|p| p.labels().get(ROLE_LABEL).is_some_and(|r| r == "primary"))
                    .map(|p| node_of(&p).to_string());
                let node = ready_on(&pods, &name, "app")
                    .await
                    .expect("app pods")
                    .into_iter()
                    .map(|(_, n)| n)
                    .find(|n| Some(n) != primary.as_ref())
                    .expect("an app pod off the primary's node");
                let guard = drain(&nodes, &pods, &node).await;
                wait_app_ready(
                    &pods,
                    &name,
                    "the drained app pod replaced",
                    Duration::from_secs(window - 10),
                )
                .await;
                drop(guard);
            }
            Event::LeaderChange => {
                tokio::task::block_in_place(|| first.terminate(Duration::from_secs(30)));
                wait_for(
                    "operator-b holds the Lease",
                    Duration::from_secs(window - 10),
                    || async {
                        match lease_holder(&leases, LEASE).await.as_deref() {
                            Some("operator-b") => Ok(()),
                            other => Err(format!("{other:?}")),
                        }
                    },
                )
                .await;
            }
        }
        let took = started.elapsed();
        assert!(
            LEAD + took < Duration::from_secs(window),
            "{}: the event took {took:?}, longer than the load window of {window} s",
            event.name()
        );
        let result = wrk.await.expect("wrk");
        let line = report(event.name(), &result, took, &load, from, &mut misses);
        println!("{line}");
        if result.failures() > 0 {
            let seconds = window as i64 + 10;
            for l in app_log_digest(&pods, &name, seconds).await.iter().take(20) {
                println!("  server log: {l}");
            }
        }
        lines.push(line);
    }

    let acked = load.acked();
    load.stop().await;
    let lost = missing_articles(&addr, &token, &acked).await;
    lines.push(format!(
        "{} acknowledged writes, {} lost",
        acked.len(),
        lost.len()
    ));
    println!("\nfull load e2e:\n  {}", lines.join("\n  "));
    drop(second);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(misses.is_empty(), "goals missed:\n{}", misses.join("\n"));
}
