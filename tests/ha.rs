//! High availability on the six-node, three-zone local cluster: spreading, drains, node loss,
//! crash-loops and failed rollouts (docs/high-availability.md). Each test has its own namespace
//! and operator process. The failure simulations are kwok stages from
//! `hack/cluster/kwok-stages/simulate.yaml`: a pod annotated `articlesite.io/simulate:
//! crashloop` crash-loops, an image whose tag ends in `never-ready` never becomes ready.
//! Nodes are only cordoned (and uncordoned) or, for the node-loss test, added and deleted by
//! the test itself, so the shared cluster stays as it was.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use common::operator::OperatorProcess;
use common::pods::{is_ready, live_pods, node_of};
use common::site::{IMAGE, condition, message, site, site_ready, wait_condition};
use common::{
    ClusterScoped, TestNamespace, block_on_own_runtime, namespace_with_operator, wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(180);

/// The tests that cordon, add or delete nodes, or count pods per node, run one at a time
/// (a tokio Mutex works across the tests' separate runtimes).
static NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fixture {
    client: Client,
    ns: TestNamespace,
    sites: Api<ArticleSite>,
    pods: Api<Pod>,
    /// Limited to the namespace, with a short resync.
    operator: OperatorProcess,
}

async fn fixture(prefix: &str) -> Fixture {
    let (client, ns, operator, sites) =
        namespace_with_operator(prefix, &[], &["--resync-seconds", "3"]).await;
    Fixture {
        sites,
        pods: Api::namespaced(client.clone(), &ns.name),
        client,
        ns,
        operator,
    }
}

impl Fixture {
    async fn create_site(&self, name: &str, spec: Value) {
        self.sites
            .create(&PostParams::default(), &site(name, spec))
            .await
            .expect("create site");
    }

    async fn patch_site(&self, name: &str, patch: Value) {
        self.sites
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch site");
    }

    async fn app_pods(&self, site: &str) -> Result<Vec<Pod>, String> {
        live_pods(&self.pods, site, "app").await
    }

    /// Waits until the site is Ready for its generation with `n` ready app pods and nothing
    /// else; returns the pods.
    async fn wait_ready(&self, site: &str, n: usize, timeout: Duration) -> Vec<Pod> {
        wait_for(&format!("{site}: Ready with {n} pods"), timeout, || async {
            let s = self.sites.get(site).await.map_err(|e| e.to_string())?;
            let ready = site_ready(&s);
            let pods = self.app_pods(site).await?;
            let ready_pods = pods.iter().filter(|p| is_ready(p)).count();
            if ready && pods.len() == n && ready_pods == n {
                Ok(pods)
            } else {
                Err(format!(
                    "Ready for the generation={ready}, {} pods, {ready_pods} ready",
                    pods.len()
                ))
            }
        })
        .await
    }

    async fn site(&self, name: &str) -> ArticleSite {
        self.sites.get(name).await.expect("get site")
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns.name)
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
}

/// An extra kwok node of this test in zone-a, Ready; deleted when the guard drops.
async fn test_node(f: &Fixture) -> (String, ClusterScoped) {
    let node_name = format!("ha-{}", &f.ns.name[f.ns.name.len() - 8..]);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": node_name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": node_name, "topology.kubernetes.io/region": "local",
                "topology.kubernetes.io/zone": "zone-a", "articlesite.io/test-node": "true"}},
        "status": {"allocatable": {"cpu": "7800m", "memory": "30Gi", "pods": "110"},
                   "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"}},
    }))
    .expect("node");
    let nodes: Api<Node> = Api::all(f.client.clone());
    let mut guard = ClusterScoped::default();
    guard.track::<Node>(&node_name);
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    wait_for("the test node Ready", TIMEOUT, || async {
        let n = nodes.get(&node_name).await.map_err(|e| e.to_string())?;
        let ready = n
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(()).ok_or_else(|| "not ready".to_string())
    })
    .await;
    (node_name, guard)
}

/// Uncordons the nodes even when the test fails.
struct Uncordon(Api<Node>, Vec<String>);
impl Drop for Uncordon {
    fn drop(&mut self) {
        let (api, names) = (self.0.clone(), std::mem::take(&mut self.1));
        block_on_own_runtime(move || async move {
            for n in names {
                let _ = api
                    .patch(
                        &n,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"unschedulable": false}})),
                    )
                    .await;
            }
        });
    }
}

/// Cordons every other schedulable node, deletes the (StatefulSet) pod, waits until its
/// successor is bound to `node`, and uncordons exactly the nodes it cordoned.
async fn move_pod_to_node(f: &Fixture, pod: &str, node: &str) {
    let nodes: Api<Node> = Api::all(f.client.clone());
    let others: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
        .into_iter()
        .filter(|n| n.name_any() != node)
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .map(|n| n.name_any())
        .collect();
    let _uncordon = Uncordon(nodes.clone(), others.clone());
    for n in &others {
        nodes
            .patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await
            .expect("cordon");
    }
    let old_uid = f.pods.get(pod).await.expect("pod").uid();
    f.pods
        .delete(pod, &DeleteParams::default())
        .await
        .expect("delete pod");
    wait_for(&format!("{pod} bound to {node}"), TIMEOUT, || async {
        let p = f.pods.get(pod).await.map_err(|e| e.to_string())?;
        if p.uid() != old_uid && node_of(&p) == node {
            Ok(())
        } else {
            Err(format!("on {:?}", node_of(&p)))
        }
    })
    .await;
}

async fn zones_of(client: &Client, pods: &[Pod]) -> BTreeMap<String, usize> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut per_zone = BTreeMap::new();
    for p in pods {
        let node = nodes.get(node_of(p)).await.expect("node of pod");
        let zone = node
            .labels()
            .get("topology.kubernetes.io/zone")
            .cloned()
            .unwrap_or_default();
        *per_zone.entry(zone).or_insert(0) += 1;
    }
    per_zone
}

/// 3 and 6 replicas land evenly over the three zones and on distinct nodes; scaling down
/// keeps the spread; status counts zones and nodes and reports HighlyAvailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_evenly_and_scale_down_keeps_the_spread() {
    let _nodes = NODES.lock().await;
    let f = fixture("ha-spread").await;
    f.create_site(
        "spread",
        json!({"app": {"image": IMAGE, "replicas": 3},
               "highAvailability": {"spread": "Required", "minReadySeconds": 0}}),
    )
    .await;
    for (n, then) in [(3usize, 6i32), (6, 3), (3, 0)] {
        let pods = f.wait_ready("spread", n, TIMEOUT).await;
        let per_zone = zones_of(&f.client, &pods).await;
        let nodes: std::collections::BTreeSet<_> = pods.iter().map(node_of).collect();
        eprintln!(
            "{n} replicas: pods per zone {per_zone:?}, {} nodes",
            nodes.len()
        );
        assert_eq!(per_zone.len(), 3, "{n} replicas in all three zones");
        assert!(
            per_zone.values().all(|c| *c == n / 3),
            "{n} replicas evenly spread: {per_zone:?}"
        );
        assert_eq!(nodes.len(), n, "one pod per node");
        let site = wait_for("availability status", TIMEOUT, || async {
            let s = f.site("spread").await;
            let a = s
                .status
                .as_ref()
                .and_then(|st| st.availability.clone())
                .unwrap_or_default();
            if a.zones == 3 && a.nodes == i32::try_from(n).unwrap() {
                Ok(s)
            } else {
                Err(format!("{a:?}"))
            }
        })
        .await;
        let (status, reason, _) = condition(&site, "HighlyAvailable").expect("HighlyAvailable");
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Spread"));
        if then > 0 {
            f.patch_site("spread", json!({"spec": {"app": {"replicas": then}}}))
                .await;
        }
    }

    // One replica is reported as not highly available, with the reason.
    f.patch_site("spread", json!({"spec": {"app": {"replicas": 1}}}))
        .await;
    f.wait_ready("spread", 1, TIMEOUT).await;
    let site = wait_condition(
        &f.sites,
        "spread",
        "HighlyAvailable",
        "False",
        Some("SingleReplica"),
        TIMEOUT,
    )
    .await;
    assert!(message(&site, "HighlyAvailable").contains("replicas is 1"));
}

/// Draining a node with evictions keeps at least desired − 1 app pods ready at every moment,
/// and finishes. The node is cordoned, only this test's pods are evicted (as `kubectl drain`
/// does, retrying on 429), and the node is uncordoned at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_never_drops_below_desired_minus_one() {
    let _nodes = NODES.lock().await;
    let f = fixture("ha-drain").await;
    let desired = 3usize;
    f.create_site(
        "drain",
        json!({"app": {"image": IMAGE, "replicas": desired},
               "highAvailability": {"minReadySeconds": 1}}),
    )
    .await;
    let pods = f.wait_ready("drain", desired, TIMEOUT).await;
    let node = node_of(&pods[0]).to_string();

    // Sample the ready app pods every 100 ms for the whole drain.
    let min_ready = Arc::new(AtomicI64::new(i64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pods_api, min_ready, stop) = (f.pods.clone(), min_ready.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(pods) = live_pods(&pods_api, "drain", "app").await {
                    let ready = pods.iter().filter(|p| is_ready(p)).count();
                    min_ready.fetch_min(i64::try_from(ready).unwrap(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let nodes: Api<Node> = Api::all(f.client.clone());
    let cordon = |on: bool| {
        let nodes = nodes.clone();
        let node = node.clone();
        async move {
            nodes
                .patch(
                    &node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"unschedulable": on}})),
                )
                .await
                .expect("cordon");
        }
    };
    cordon(true).await;
    let uncordon = Uncordon(nodes.clone(), vec![node.clone()]);
    let started = Instant::now();
    let mut refusals = 0;
    let drained = tokio::time::timeout(TIMEOUT, async {
        loop {
            let on_node: Vec<Pod> = f
                .pods
                .list(&ListParams::default())
                .await
                .expect("list pods")
                .items
                .into_iter()
                .filter(|p| node_of(p) == node)
                .collect();
            if on_node.is_empty() {
                break;
            }
            for p in on_node
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                match f.pods.evict(&p.name_any(), &EvictParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 429 => refusals += 1,
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => panic!("evict {}: {e}", p.name_any()),
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let drain_time = started.elapsed();
    drop(uncordon);
    assert!(
        drained.is_ok(),
        "the drain of {node} did not finish in {TIMEOUT:?}"
    );
    // The replacement becomes ready elsewhere.
    let pods = f.wait_ready("drain", desired, TIMEOUT).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let min = min_ready.load(Ordering::Relaxed);
    eprintln!(
        "drain of {node}: {:.1}s, {refusals} evictions refused (429), lowest ready count {min} of {desired}",
        drain_time.as_secs_f64()
    );
    assert!(
        min >= i64::try_from(desired).unwrap() - 1,
        "ready app pods dropped to {min} during the drain"
    );
    assert!(pods.iter().all(|p| node_of(p) != node));
}

/// After a node was away, the pods replaced elsewhere are doubled up on a surviving node and
/// the scheduler never moves them back: the operator evicts one so that its replacement lands
/// on the returned node (`Required` spreading: the scheduler must put it there). The node is
/// only cordoned and uncordoned here (it never turns NotReady, so no settling wait applies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_is_restored_after_a_node_returns() {
    let _nodes = NODES.lock().await;
    let f = fixture("ha-rebalance").await;
    let nodes: Api<Node> = Api::all(f.client.clone());
    let schedulable = nodes
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
        .iter()
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .count();
    let desired = schedulable;
    f.create_site(
        "rebalance",
        json!({"app": {"image": IMAGE, "replicas": desired},
               "highAvailability": {"spread": "Required", "minReadySeconds": 0}}),
    )
    .await;
    let pods = f.wait_ready("rebalance", desired, TIMEOUT).await;
    let per_node = |pods: &[Pod]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for p in pods {
            *m.entry(node_of(p).to_string()).or_default() += 1;
        }
        m
    };
    assert!(
        per_node(&pods).values().all(|c| *c == 1),
        "one pod per node: {:?}",
        per_node(&pods)
    );
    let away = node_of(&pods[0]).to_string();

    // The node goes away (cordoned) and its pod is replaced on a sibling of its zone.
    let cordon = |on: bool| {
        let (nodes, away) = (nodes.clone(), away.clone());
        async move {
            nodes
                .patch(
                    &away,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"unschedulable": on}})),
                )
                .await
                .expect("cordon");
        }
    };
    cordon(true).await;
    let uncordon = Uncordon(nodes.clone(), vec![away.clone()]);
    f.pods
        .delete(&pods[0].name_any(), &DeleteParams::default())
        .await
        .expect("delete pod");
    let doubled = wait_for("the replacement doubled up elsewhere", TIMEOUT, || async {
        let pods = f.app_pods("rebalance").await?;
        let counts = per_node(&pods);
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        if ready == desired && !counts.contains_key(&away) && counts.values().any(|c| *c == 2) {
            Ok(counts)
        } else {
            Err(format!("{ready} ready, {counts:?}"))
        }
    })
    .await;
    let before = f.events("PodRestarted").await.len();

    // Back: the operator moves one pod, and the spread is whole again.
    cordon(false).await;
    let back = Instant::now();
    let restored = wait_for("one pod per node again", TIMEOUT, || async {
        let pods = f.app_pods("rebalance").await?;
        let counts = per_node(&pods);
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        if ready == desired && counts.len() == desired && counts.contains_key(&away) {
            Ok(counts)
        } else {
            Err(format!("{ready} ready, {counts:?}"))
        }
    })
    .await;
    drop(uncordon);
    let moves: Vec<Event> = f
        .events("PodRestarted")
        .await
        .into_iter()
        .skip(before)
        .collect();
    eprintln!(
        "spread restored {:.1}s after {away} returned: {doubled:?} -> {restored:?}; {}",
        back.elapsed().as_secs_f64(),
        moves
            .iter()
            .filter_map(|e| e.note.clone())
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert_eq!(moves.len(), 1, "exactly one pod moved: {moves:?}");
    assert!(
        moves[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("Unbalanced")),
        "{:?}",
        moves[0].note
    );
    // And nothing more moves once the spread is whole.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(8) {
        assert_eq!(
            f.events("PodRestarted").await.len(),
            before + 1,
            "no further moves"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Deleting a node (a simulated machine loss) gets its pods running elsewhere. The node is
/// an extra kwok node of this test (zone-a); the site requires spreading, so it gets a pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_node_pods_run_elsewhere() {
    let _nodes = NODES.lock().await;
    let f = fixture("ha-nodeloss").await;
    let (node_name, _guard) = test_node(&f).await;
    let nodes: Api<Node> = Api::all(f.client.clone());
    let all_nodes = nodes
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
        .len();

    // One pod per node: the test node gets one.
    f.create_site(
        "loss",
        json!({"app": {"image": IMAGE, "replicas": all_nodes},
               "highAvailability": {"spread": "Required", "minReadySeconds": 0}}),
    )
    .await;
    let pods = f.wait_ready("loss", all_nodes, TIMEOUT).await;
    let victims: Vec<String> = pods
        .iter()
        .filter(|p| node_of(p) == node_name)
        .map(|p| p.name_any())
        .collect();
    assert!(!victims.is_empty(), "the test node runs an app pod");

    let started = Instant::now();
    nodes
        .delete(&node_name, &DeleteParams::default())
        .await
        .expect("delete node");
    let pods = wait_for("pods replaced on other nodes", TIMEOUT, || async {
        let pods = f.app_pods("loss").await?;
        let ready: Vec<&Pod> = pods.iter().filter(|p| is_ready(p)).collect();
        let elsewhere = pods.iter().all(|p| node_of(p) != node_name);
        if elsewhere && pods.len() == all_nodes && ready.len() == all_nodes {
            Ok(pods)
        } else {
            Err(format!(
                "{} pods, {} ready, all elsewhere: {elsewhere}",
                pods.len(),
                ready.len()
            ))
        }
    })
    .await;
    let took = started.elapsed();
    eprintln!(
        "node {node_name} deleted: its pod was replaced and all {} app pods were ready again after {:.1}s",
        pods.len(),
        took.as_secs_f64()
    );
    assert!(!pods.iter().any(|p| victims.contains(&p.name_any())));
    assert!(
        !f.events("OrphanedPodDeleted").await.is_empty(),
        "the operator force-deleted the orphaned pod"
    );
}

/// A pod that crash-loops while its siblings are ready is restarted through the Eviction API,
/// once, with an Event, a status count and a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_pod_is_restarted() {
    // A pod of this site on a node another test adds and deletes would be force-deleted as
    // an orphan instead of restarted (seen once in a clean-clone run).
    let _nodes = NODES.lock().await;
    let f = fixture("ha-crash").await;
    f.create_site("crash", json!({"app": {"image": IMAGE, "replicas": 3}}))
        .await;
    let pods = f.wait_ready("crash", 3, TIMEOUT).await;
    let victim = pods[0].name_any();
    let started = Instant::now();
    f.pods
        .patch(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"articlesite.io/simulate": "crashloop"}}}),
            ),
        )
        .await
        .expect("mark the pod");
    wait_for("the pod crash-loops", TIMEOUT, || async {
        let p = match f.pods.get(&victim).await {
            Ok(p) => p,
            // Already restarted: the operator acts on the first sight.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let crash = p
            .status
            .and_then(|s| s.container_statuses)
            .into_iter()
            .flatten()
            .any(|c| {
                c.state.and_then(|s| s.waiting).and_then(|w| w.reason)
                    == Some("CrashLoopBackOff".into())
            });
        let gone = p.metadata.deletion_timestamp.is_some();
        (crash || gone)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let crashing_after = started.elapsed();
    let pods = wait_for("crash-looping pod replaced", TIMEOUT, || async {
        let pods = f.app_pods("crash").await?;
        let gone = pods.iter().all(|p| p.name_any() != victim);
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        if gone && ready == 3 && pods.len() == 3 {
            Ok(pods)
        } else {
            Err(format!("victim gone: {gone}, {ready} ready"))
        }
    })
    .await;
    let recovered = started.elapsed();
    eprintln!(
        "crash-loop: seen after {:.1}s, pod restarted and 3/3 ready again {:.1}s after the fault",
        crashing_after.as_secs_f64(),
        recovered.as_secs_f64()
    );
    assert_eq!(pods.len(), 3);
    let site = wait_for("restart counted in status", TIMEOUT, || async {
        let s = f.site("crash").await;
        let n = s
            .status
            .as_ref()
            .and_then(|st| st.availability.as_ref())
            .map(|a| a.pod_restarts)
            .unwrap_or(0);
        if n >= 1 { Ok(s) } else { Err(format!("{n}")) }
    })
    .await;
    let a = site.status.unwrap().availability.unwrap();
    assert_eq!(a.pod_restarts, 1, "one restart, not more");
    assert_eq!(a.recent_restarts.len(), 1);
    let events = f.events("PodRestarted").await;
    assert_eq!(events.len(), 1, "one PodRestarted event");
    assert!(
        events[0]
            .note
            .as_deref()
            .unwrap_or_default()
            .contains(&victim)
    );
    assert_eq!(
        f.operator
            .metric("articlesite_operator_pod_restarts_total")
            .await,
        Ok(1.0)
    );
}

/// A rollout whose pods never become ready is rolled back to the last ready template after
/// the deadline; the site shows Degraded/RolloutFailed with the image until the spec changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rollout_is_rolled_back() {
    let f = fixture("ha-rollback").await;
    f.create_site(
        "roll",
        json!({"app": {"image": IMAGE, "replicas": 2},
               "highAvailability": {"rolloutDeadlineSeconds": 10, "minReadySeconds": 0}}),
    )
    .await;
    f.wait_ready("roll", 2, TIMEOUT).await;
    let bad = "articlesite/article-server:0.2.0-never-ready";
    let started = Instant::now();
    f.patch_site("roll", json!({"spec": {"app": {"image": bad}}}))
        .await;
    let site = wait_condition(
        &f.sites,
        "roll",
        "Degraded",
        "True",
        Some("RolloutFailed"),
        TIMEOUT,
    )
    .await;
    let detected = started.elapsed();
    assert!(message(&site, "Degraded").contains(bad));
    // Back on the old image with all replicas ready, no pod of the bad image left.
    wait_for("rolled back and ready", TIMEOUT, || async {
        let d: Deployment = Api::namespaced(f.client.clone(), &f.ns.name)
            .get("roll")
            .await
            .map_err(|e| e.to_string())?;
        let image = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].image.clone());
        let pods = f.app_pods("roll").await?;
        let old = pods
            .iter()
            .filter(|p| {
                is_ready(p)
                    && p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(IMAGE)
            })
            .count();
        if image.as_deref() == Some(IMAGE) && old == 2 && pods.len() == 2 {
            Ok(())
        } else {
            Err(format!(
                "template image {image:?}, {} pods, {old} ready on the old image",
                pods.len()
            ))
        }
    })
    .await;
    let recovered = started.elapsed();
    eprintln!(
        "failed rollout: rolled back {:.1}s after the bad image was set (deadline 10s), old pods never dropped",
        detected.as_secs_f64()
    );
    eprintln!(
        "failed rollout: 2/2 on the old image {:.1}s after",
        recovered.as_secs_f64()
    );
    let s = f.site("roll").await;
    let a = s.status.as_ref().unwrap().availability.clone().unwrap();
    assert_eq!(a.rollbacks, 1);
    assert_eq!(
        a.failed_rollout.as_ref().map(|r| r.image.as_str()),
        Some(bad)
    );
    assert_eq!(f.events("RolledBack").await.len(), 1);
    assert_eq!(
        f.operator
            .metric("articlesite_operator_rollbacks_total")
            .await,
        Ok(1.0)
    );
    // The rollback holds: two reconciles later the bad image is still not rolled out again.
    let before = f
        .operator
        .metric("articlesite_operator_reconciles_total")
        .await
        .expect("operator metrics");
    wait_for("two more reconciles", TIMEOUT, || async {
        let now = f
            .operator
            .metric("articlesite_operator_reconciles_total")
            .await?;
        (now >= before + 2.0)
            .then_some(())
            .ok_or_else(|| format!("{now}"))
    })
    .await;
    let d: Deployment = Api::namespaced(f.client.clone(), &f.ns.name)
        .get("roll")
        .await
        .expect("deployment");
    assert_eq!(
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some(IMAGE)
    );

    // A new spec rolls out and clears the failure.
    let good = "articlesite/article-server:0.3.0";
    f.patch_site("roll", json!({"spec": {"app": {"image": good}}}))
        .await;
    f.wait_ready("roll", 2, TIMEOUT).await;
    let s = wait_condition(&f.sites, "roll", "Degraded", "False", None, TIMEOUT).await;
    assert!(
        s.status
            .unwrap()
            .availability
            .unwrap()
            .failed_rollout
            .is_none()
    );
}

/// The database pod on a deleted node is force-deleted by the operator and recreated by the
/// StatefulSet on a healthy node with the same claim. The pod is first moved onto the test's
/// node: the other nodes are cordoned for the moment it takes to reschedule it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_on_a_deleted_node_is_recovered() {
    let _nodes = NODES.lock().await;
    let f = fixture("ha-dbloss").await;
    let (node_name, _guard) = test_node(&f).await;
    f.create_site("db", json!({"app": {"image": IMAGE, "replicas": 2}}))
        .await;
    f.wait_ready("db", 2, TIMEOUT).await;
    let db = "db-postgresql-0";
    move_pod_to_node(&f, db, &node_name).await;
    f.wait_ready("db", 2, TIMEOUT).await;
    let claim_before = f
        .pods
        .get(db)
        .await
        .expect("db pod")
        .spec
        .and_then(|s| s.volumes)
        .into_iter()
        .flatten()
        .find_map(|v| v.persistent_volume_claim.map(|c| c.claim_name));

    let started = Instant::now();
    Api::<Node>::all(f.client.clone())
        .delete(&node_name, &DeleteParams::default())
        .await
        .expect("delete node");
    let p = wait_for("database pod ready on another node", TIMEOUT, || async {
        let p = f.pods.get(db).await.map_err(|e| e.to_string())?;
        let node = node_of(&p);
        if node != node_name && !node.is_empty() && is_ready(&p) {
            Ok(p)
        } else {
            Err(format!("on {node:?}, ready {}", is_ready(&p)))
        }
    })
    .await;
    let took = started.elapsed();
    f.wait_ready("db", 2, TIMEOUT).await;
    let site_ready = started.elapsed();
    eprintln!(
        "database on deleted node {node_name}: ready on {} after {:.1}s, site Ready after {:.1}s",
        node_of(&p),
        took.as_secs_f64(),
        site_ready.as_secs_f64()
    );
    let claim_after = p
        .spec
        .and_then(|s| s.volumes)
        .into_iter()
        .flatten()
        .find_map(|v| v.persistent_volume_claim.map(|c| c.claim_name));
    assert_eq!(claim_before, claim_after, "same claim, same data");
    assert!(claim_after.is_some());
    assert!(
        f.events("OrphanedPodDeleted").await.iter().any(|e| e
            .note
            .as_deref()
            .unwrap_or_default()
            .contains(db)),
        "the operator force-deleted the database pod of the deleted node"
    );
}
