//! End-to-end on three real nodes in three zones (`make e2e`, feature `e2e`): a site with three
//! app replicas and three database instances (Patroni), one of each per node on
//! `real-node-1..3`, under a steady, bounded load of reads and writes through its Service, while
//! `hack/cluster/node-fault.sh` freezes, partitions or kills one node: the one that holds the
//! database primary, or one that holds only an app pod and a replica. Prints, per fault, the
//! time until the node is NotReady, until its app pods are replaced elsewhere and until writes
//! resume, the failed reads and writes, and checks that writes resume within 30 s of a fault on
//! the primary's node, that no read or write fails once a replica's node is NotReady, that no
//! acknowledged write is lost, that never two instances accept a write at the same moment
//! (also after a partition heals), and that the site is whole and spread again after the heal.
//! Needs `make cluster-up REAL_NODES=3` and `make images`; `hack/e2e.sh` does both.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use common::database::{Login, WriterWatch, instances, wait_primary};
use common::e2e::{
    HealAll, Load, REAL_NODES, env_or, local_volumes, missing_articles, node_fault, node_status,
    publish_article, real_node_site, site_address_and_token,
};
use common::http::request;
use common::operator::OperatorProcess;
use common::pods::{is_live, is_ready, live_pods, node_of};
use common::site::wait_site_ready;
use common::{TestNamespace, client, wait_for, wait_for_explained};

const NODES: [&str; 3] = REAL_NODES;
/// The site's `highAvailability.nodeLossTolerationSeconds`: the operator's default.
const TOLERATION: u64 = 30;
/// The goal for a fault on the primary's node: a new primary takes writes within this time
/// (Patroni's lock TTL of 20 s plus its loop; docs/high-availability.md).
const WRITES_BACK_WITHIN: Duration = Duration::from_secs(30);

async fn node_ready(nodes: &Api<Node>, name: &str) -> Result<String, String> {
    let n = nodes.get(name).await.map_err(|e| e.to_string())?;
    Ok(n.status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status)
        .unwrap_or_default())
}

/// Ready, live pods of a component, by node.
async fn ready_on(
    pods: &Api<Pod>,
    site: &str,
    component: &str,
) -> Result<Vec<(String, String)>, String> {
    let list = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={site},app.kubernetes.io/component={component}"
        )))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|p| is_ready(p) && is_live(p))
        .map(|p| (p.name_any(), node_of(p).to_string()))
        .collect())
}

/// Where the site stands, for a wait that runs out: each database instance (role, node,
/// Ready, Patroni's replication state) and each app pod (node, Ready, and its own `/readyz`
/// answer, which says why it is not ready).
async fn site_picture(pods: &Api<Pod>, site: &str) -> String {
    let mut parts = Vec::new();
    match instances(pods, site).await {
        Ok(db) => parts.extend(db.iter().map(|i| {
            format!(
                "{} {} on {} ready={} {}",
                i.pod, i.role, i.node, i.ready, i.replication
            )
        })),
        Err(e) => parts.push(e),
    }
    for p in live_pods(pods, site, "app").await.unwrap_or_default() {
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let limit = Duration::from_millis(800);
        let answer = match request(&format!("{ip}:8080"), "GET", "/readyz", None, None, limit).await
        {
            Ok((code, _, body)) => format!("{code} {body}"),
            Err(e) => e,
        };
        parts.push(format!(
            "{} on {} ready={} readyz: {answer}",
            p.name_any(),
            node_of(&p),
            is_ready(&p)
        ));
    }
    parts.join("; ")
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Target {
    /// The node of the database primary (and of one app pod).
    Primary,
    /// A node with an app pod and a database replica, not the primary.
    Replica,
}

struct Site {
    name: String,
    ns: String,
    pods: Api<Pod>,
    nodes: Api<Node>,
    login: Login,
    writers: WriterWatch,
}

/// One fault on one node under load, started once the database has a primary with a
/// streaming synchronous standby; heals (or boots) the node once its app pods have been
/// replaced and, for the primary's node, its database pod is marked for deletion. Goals that
/// are missed are pushed to `misses` (the caller asserts after every figure is printed).
async fn scenario(
    site: &Site,
    load: &Load,
    fault: &str,
    target: Target,
    misses: &mut Vec<String>,
) -> String {
    let primary = wait_primary(&site.pods, &site.ns, &site.name, &site.login, &site.writers).await;
    let db_node = primary.node.clone();
    let apps = ready_on(&site.pods, &site.name, "app")
        .await
        .expect("app pods");
    let node = match target {
        Target::Primary => db_node.clone(),
        Target::Replica => apps
            .iter()
            .map(|(_, n)| n.clone())
            .find(|n| *n != db_node)
            .expect("an app pod on a node without the database"),
    };
    let moved: Vec<String> = apps
        .iter()
        .filter(|(_, n)| *n == node)
        .map(|(p, _)| p.clone())
        .collect();
    println!(
        "== {fault} {node} ({target:?}): app pods there {moved:?}, primary {} on {db_node}",
        primary.pod
    );
    let t0 = Instant::now();
    node_fault(fault, &node);

    let nodes = site.nodes.clone();
    let n = node.clone();
    wait_for(&format!("{node} NotReady"), Duration::from_secs(90), || {
        let (nodes, n) = (nodes.clone(), n.clone());
        async move {
            match node_ready(&nodes, &n).await? {
                s if s != "True" => Ok(()),
                s => Err(format!("Ready={s}")),
            }
        }
    })
    .await;
    let not_ready = t0.elapsed();

    // Its app pods are evicted after the toleration and replaced on the other nodes.
    let (pods, name, n) = (site.pods.clone(), site.name.clone(), node.clone());
    wait_for_explained(
        &format!("3 app pods off {node}"),
        Duration::from_secs(TOLERATION + 120),
        || {
            let (pods, name, n) = (pods.clone(), name.clone(), n.clone());
            async move {
                // Ready, not only placed: with a replica promoted the app pods' readiness
                // (which checks the database) holds on the other nodes.
                let r = ready_on(&pods, &name, "app").await?;
                let off = r.iter().filter(|(_, on)| *on != n).count();
                if off >= 3 {
                    Ok(())
                } else {
                    Err(format!("{r:?}"))
                }
            }
        },
        || site_picture(&site.pods, &site.name),
    )
    .await;
    let replaced = t0.elapsed();
    assert!(
        replaced >= Duration::from_secs(TOLERATION),
        "pods left {node} after {} only, before the toleration of {TOLERATION} s",
        secs(replaced)
    );

    if target == Target::Primary {
        // The old primary's pod is marked for deletion once the toleration ran out; it stays
        // Terminating while its node is away (a StatefulSet never runs two of one name).
        let (pods, old) = (site.pods.clone(), primary.pod.clone());
        wait_for(
            "the database pod to be marked for deletion",
            Duration::from_secs(60),
            || {
                let (pods, old) = (pods.clone(), old.clone());
                async move {
                    let p = pods.get(&old).await.map_err(|e| e.to_string())?;
                    if p.metadata.deletion_timestamp.is_some() {
                        Ok(())
                    } else {
                        Err("live".into())
                    }
                }
            },
        )
        .await;
    }
    let healed_at = Instant::now();
    let heal = if fault == "kill" { "boot" } else { "heal" };
    node_fault(heal, &node);

    // Back: the node Ready, its old pods gone, three database instances and three app pods
    // Ready.
    let (nodes, pods, name, n) = (
        site.nodes.clone(),
        site.pods.clone(),
        site.name.clone(),
        node.clone(),
    );
    let spread = wait_for_explained(
        &format!("{node} Ready again and the site whole"),
        Duration::from_secs(180),
        || {
            let (nodes, pods, name, n) = (nodes.clone(), pods.clone(), name.clone(), n.clone());
            async move {
                if node_ready(&nodes, &n).await? != "True" {
                    return Err(format!("{n} not Ready"));
                }
                let all = pods
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let stale: Vec<String> = all
                    .items
                    .iter()
                    .filter(|p| !is_live(p))
                    .map(|p| p.name_any())
                    .collect();
                let apps = ready_on(&pods, &name, "app").await?;
                let db = ready_on(&pods, &name, "database").await?;
                if stale.is_empty() && apps.len() == 3 && db.len() == 3 {
                    Ok(apps
                        .iter()
                        .map(|(_, n)| n.clone())
                        .collect::<BTreeSet<_>>()
                        .len())
                } else {
                    Err(format!("terminating {stale:?}, app {apps:?}, db {db:?}"))
                }
            }
        },
        || site_picture(&site.pods, &site.name),
    )
    .await;
    let back = t0.elapsed();
    // The replacements doubled up on the survivors; the operator moves one back once the node
    // has been Ready for a minute (`src/spread.rs`): one app pod per node again.
    let (pods, name) = (site.pods.clone(), site.name.clone());
    wait_for(
        "one app pod per node again",
        Duration::from_secs(240),
        || {
            let (pods, name) = (pods.clone(), name.clone());
            async move {
                let apps = ready_on(&pods, &name, "app").await?;
                let on: BTreeSet<&String> = apps.iter().map(|(_, n)| n).collect();
                if apps.len() == 3 && on.len() == 3 {
                    Ok(())
                } else {
                    Err(format!("{apps:?}"))
                }
            }
        },
    )
    .await;
    let respread = t0.elapsed();
    // Likewise a database pod recreated beside another instance (where one node's loss would
    // stop the database): the operator moves a replica to the free node (`plan::database`).
    let (pods, name) = (site.pods.clone(), site.name.clone());
    wait_for_explained(
        "one database instance per node again",
        Duration::from_secs(240),
        || {
            let (pods, name) = (pods.clone(), name.clone());
            async move {
                let db = ready_on(&pods, &name, "database").await?;
                let on: BTreeSet<&String> = db.iter().map(|(_, n)| n).collect();
                if db.len() == 3 && on.len() == 3 {
                    Ok(())
                } else {
                    Err(format!("{db:?}"))
                }
            }
        },
        || site_picture(&site.pods, &site.name),
    )
    .await;
    let db_respread = t0.elapsed();
    let (reads, failed_reads, first_failed, writes, failed_writes) = load.counts(t0);
    let outage = load.write_outage(t0);
    // Writes the article server held for a primary are slow, not failed: the longest time
    // without an acknowledgment between the fault and the heal covers both.
    let paused = load.write_pause(t0);
    let writes_resumed = match outage {
        None => "no write failed".to_string(),
        Some((first, Some(resumed))) => format!(
            "writes failed from +{} and resumed at +{} ({} without writes)",
            secs(first - t0),
            secs(resumed - t0),
            secs(resumed - first)
        ),
        Some((first, None)) => format!("writes failed from +{}, not resumed yet", secs(first - t0)),
    };
    let new_writer = match site.writers.new_writer_since(t0, Some(&primary.pod)) {
        Some((at, pod)) => format!("{pod} took writes at +{}", secs(at - t0)),
        None => "the primary kept writes".to_string(),
    };
    let line = format!(
        "{fault} of {node} ({target:?}): NotReady after {}, app pods replaced after {}, {heal} at +{}, site whole again at +{} on {spread} nodes, one pod per node again at +{}, one database instance per node at +{}; {new_writer}; writes paused {} at most; {writes_resumed}; reads {failed_reads}/{reads} failed ({first_failed} first attempts), writes {failed_writes}/{writes} failed",
        secs(not_ready),
        secs(replaced),
        secs(healed_at - t0),
        secs(back),
        secs(respread),
        secs(db_respread),
        secs(paused),
    );
    println!("{line}");
    match (target, outage) {
        (_, Some((_, None))) => misses.push(format!("writes must come back: {line}")),
        (Target::Primary, Some((_, Some(resumed)))) if resumed - t0 > WRITES_BACK_WITHIN => misses
            .push(format!(
                "writes back within {} of a fault on the primary's node: {line}",
                secs(WRITES_BACK_WITHIN)
            )),
        (Target::Primary, _) if paused > WRITES_BACK_WITHIN => misses.push(format!(
            "writes back within {} of a fault on the primary's node (held writes count): {line}",
            secs(WRITES_BACK_WITHIN)
        )),
        _ => {}
    }
    if target == Target::Replica {
        // Requests fail only while the dead node's pods are still endpoints (until NotReady);
        // from a few seconds later (the host's kube-proxy catching up) nothing fails. The
        // replica on the node is not needed for a commit: the other standby is in the quorum.
        let settled = t0 + not_ready + Duration::from_secs(5);
        let (_, late_reads, _, _, late_writes) = load.counts_between(settled, healed_at);
        if (late_reads, late_writes) != (0, 0) {
            misses.push(format!(
                "no read or write fails once {node} is NotReady and two app replicas serve: {late_reads} reads, {late_writes} writes failed: {line}"
            ));
        }
    }
    line
}

#[tokio::test]
async fn a_site_on_three_real_nodes_survives_node_failures_under_load() {
    let started = Instant::now();
    let client = client().await;
    common::crd::install_crd(&client).await;
    let ns = TestNamespace::create(&client, "e2e-nodes").await;
    let _heal = HealAll;
    let nodes: Api<Node> = Api::all(client.clone());
    for n in NODES {
        assert_eq!(
            node_ready(&nodes, n).await.expect("real node"),
            "True",
            "{n} must be Ready (make cluster-up REAL_NODES=3)"
        );
    }
    let zones: BTreeSet<String> = nodes
        .list(&ListParams::default().labels("type=real"))
        .await
        .expect("real nodes")
        .items
        .iter()
        .filter_map(|n| n.labels().get("topology.kubernetes.io/zone").cloned())
        .collect();
    assert_eq!(zones.len(), 3, "three zones: {zones:?}");

    // Storage for the database that every node can mount: a directory of this machine (the
    // nodes share its filesystem), standing for network-attached storage, so the database
    // can move between nodes.
    let pp = PostParams::default();
    let class = format!("real-nodes-{}", ns.name);
    let node_dir = env_or(
        "REAL_NODE_DIR",
        &common::cluster_dir().join("real-nodes").to_string_lossy(),
    );
    let _volumes = local_volumes(&client, &class, Path::new(&node_dir), &NODES, 3).await;

    // The operator runs on this machine (a control-plane component here, outside the nodes
    // that fail).
    let op = OperatorProcess::in_namespace(&ns.name, &[]);
    op.wait_ready().await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    // Three database instances, one per node: a fault on the primary's node is a failover
    // (tests/replicated_database.rs proves the database's own faults).
    let mut spec = real_node_site(3, 3, &class);
    spec["title"] = json!("Three real nodes");
    spec["highAvailability"] = json!({"nodeLossTolerationSeconds": TOLERATION});
    let spec = serde_json::from_value(spec).expect("site spec");
    let t = Instant::now();
    let name = sites
        .create(&pp, &ArticleSite::new("nodes", spec))
        .await
        .expect("create site")
        .name_any();
    wait_site_ready(&sites, &name, Duration::from_secs(300)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let apps = wait_for(
        "3 app pods Ready on 3 nodes",
        Duration::from_secs(120),
        || {
            let (pods, name) = (pods.clone(), name.clone());
            async move {
                let r = ready_on(&pods, &name, "app").await?;
                let on: BTreeSet<&String> = r.iter().map(|(_, n)| n).collect();
                if r.len() == 3 && on.len() == 3 {
                    Ok(r)
                } else {
                    Err(format!("{r:?}"))
                }
            }
        },
    )
    .await;
    println!(
        "site Ready {} after creation; app pods {apps:?}",
        secs(t.elapsed())
    );
    for (_, n) in &apps {
        assert!(NODES.contains(&n.as_str()), "{n} is a real node");
    }

    let (addr, token) = site_address_and_token(&client, &ns.name, &name).await;
    let published = "front-page";
    publish_article(&addr, &token, published).await;

    let login = Login::of_site(&Api::namespaced(client.clone(), &ns.name), &name).await;
    let writers = WriterWatch::start(login.clone());
    writers.track(&instances(&pods, &name).await.expect("instances"));
    let load = Load::start(addr.clone(), token.clone(), published.to_string());
    // Some undisturbed load first (20 reads and 10 writes): the load itself must not fail.
    let quiet = Instant::now();
    let (reads, fr, writes, fw) = loop {
        let (reads, fr, _, writes, fw) = load.counts(quiet);
        if (reads >= 20 && writes >= 10) || quiet.elapsed() > Duration::from_secs(60) {
            break (reads, fr, writes, fw);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        reads > 0 && writes > 0 && fr == 0 && fw == 0,
        "steady load: {fr}/{reads} reads, {fw}/{writes} writes failed"
    );
    println!("memory before the faults:\n{}", node_status());

    let site = Site {
        name: name.clone(),
        ns: ns.name.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
        login,
        writers,
    };
    let mut lines = Vec::new();
    let mut misses = Vec::new();
    for (fault, target) in [
        ("freeze", Target::Replica),
        ("partition", Target::Primary),
        ("kill", Target::Replica),
        ("freeze", Target::Primary),
    ] {
        lines.push(scenario(&site, &load, fault, target, &mut misses).await);
    }

    let acked = load.acked();
    load.stop().await;
    let overlaps = site.writers.overlaps(started);
    let max = site.writers.stop().await;
    // No acknowledged write is lost: every article the site answered 201 for is there.
    let lost = missing_articles(&addr, &token, &acked).await;
    lines.push(format!(
        "{} acknowledged writes, {} lost",
        acked.len(),
        lost.len()
    ));
    lines.push(format!(
        "at most {max} instance(s) committed a write in one sampling round (every 250 ms)"
    ));
    println!(
        "\nreal nodes e2e ({}):\n  {}",
        secs(started.elapsed()),
        lines.join("\n  ")
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        max <= 1,
        "never two instances accept writes at once: {overlaps:?}"
    );
    assert!(misses.is_empty(), "goals missed:\n{}", misses.join("\n"));
}
