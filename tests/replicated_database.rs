//! End-to-end proof of the replicated database (`make e2e`, feature `e2e`, three real nodes):
//! a site with three PostgreSQL instances under Patroni, one per node, under a steady load of
//! reads and writes through the site's Service that records every acknowledged article. Each
//! fault below is applied to the current primary; the test prints, per fault, how long writes
//! stopped and how many reads and writes failed, and checks:
//!
//! - deleting the primary pod: writes back in under 5 s;
//! - SIGKILL of the primary's PostgreSQL, freezing the primary's container (cgroup freezer),
//!   cutting the network of the primary's node: a primary accepts writes again within 25 s, and
//!   the old primary rejoins as a replica once it is back;
//! - a switchover asked for with the `articlesite.io/switchover` annotation: writes pause for
//!   under 3 s;
//! - the API server stopped (SIGSTOP) for 30 s: no write fails (Patroni's failsafe mode);
//! - a replica whose data directory is wiped is rebuilt and streams again, writes unaffected;
//! - throughout: at no sampled moment do two instances accept a write (each instance is asked
//!   every 250 ms to commit a transaction), and at the end every acknowledged article is there.
//!
//! Needs `make cluster-up REAL_NODES=3` and `make images`; `hack/e2e.sh` does both.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use common::control_plane::Paused;
use common::database::{Instance, Login, WriterWatch, instances, wait_healthy, wait_primary};
use common::e2e::{
    HealAll, Load, REAL_NODES, env_or, local_volumes, missing_articles, node_fault,
    publish_article, real_node_site, site_address_and_token,
};
use common::operator::OperatorProcess;
use common::site::wait_site_ready;
use common::{TestNamespace, client, wait_for};

const SWITCHOVER_ANNOTATION: &str = "articlesite.io/switchover";

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The postmaster (PostgreSQL's main process) of the container whose cgroup path contains
/// `pod_uid`, and that cgroup's freezer directory.
fn postmaster_of(pod_uid: &str) -> Option<(u32, String)> {
    let dash = pod_uid.replace('-', "_");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "postgres" {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .unwrap_or("0")
            .to_string();
        let parent = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
        if parent.trim() == "postgres" {
            continue;
        }
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if let Some(path) = cg
            .lines()
            .find_map(|l| l.split_once(":freezer:").map(|(_, p)| p.to_string()))
            .filter(|p| p.contains(pod_uid) || p.contains(&dash))
        {
            return Some((pid.parse().ok()?, format!("/sys/fs/cgroup/freezer{path}")));
        }
    }
    None
}

/// A frozen cgroup (every process of the container stopped by the kernel), thawed on drop.
struct Frozen(String);

impl Frozen {
    fn freeze(dir: &str) -> Self {
        std::fs::write(format!("{dir}/freezer.state"), "FROZEN").expect("freeze the container");
        Self(dir.to_string())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(format!("{}/freezer.state", self.0), "THAWED") {
            eprintln!("could not thaw {}: {e}", self.0);
        }
    }
}

struct Site {
    name: String,
    ns: String,
    pods: Api<Pod>,
    load: Load,
    writers: WriterWatch,
    login: Login,
}

impl Site {
    /// The primary, with a streaming synchronous standby (`common::database::wait_primary`).
    async fn primary(&self) -> Instance {
        wait_primary(&self.pods, &self.ns, &self.name, &self.login, &self.writers).await
    }

    async fn uid_of(&self, pod: &str) -> String {
        self.pods
            .get(pod)
            .await
            .expect("pod")
            .uid()
            .expect("pod uid")
    }

    /// Requests and writes during `[from, now)`, as one line; `outage` from the load. A failed
    /// read is a miss of the goal: every fault here leaves at least one replica healthy, and the
    /// article server reads from the replicas while the primary is away.
    fn report(
        &self,
        what: &str,
        from: Instant,
        extra: &str,
        misses: &mut Vec<String>,
    ) -> (String, Duration, usize) {
        self.report_excluding(what, from, None, extra, misses)
    }

    /// Like `report`, with the requests sent during `excluded` (from, to, why) shown apart and
    /// not counted against the goals: they failed for a reason of the cluster, not of the
    /// database (said in `why`). The returned count of failed writes leaves them out too.
    fn report_excluding(
        &self,
        what: &str,
        from: Instant,
        excluded: Option<(Instant, Instant, &str)>,
        extra: &str,
        misses: &mut Vec<String>,
    ) -> (String, Duration, usize) {
        let (reads, all_fr, first, writes, all_fw) = self.load.counts(from);
        let (fr, fw, extra) = match excluded {
            Some((start, end, why)) => {
                let (_, xr, _, _, xw) = self.load.counts_between(start, end);
                (
                    all_fr - xr,
                    all_fw - xw,
                    format!("{extra}; of those, {xr} reads and {xw} writes failed {why}"),
                )
            }
            None => (all_fr, all_fw, extra.to_string()),
        };
        if fr > 0 {
            misses.push(format!(
                "no read fails while a replica is healthy: {what}: {fr}/{reads} reads failed"
            ));
        }
        // Failed writes, and writes the article server held for a primary (slow, not
        // failed): the longest time without an acknowledgment covers both.
        let failing = self
            .load
            .write_outage(from)
            .map(|(failed, resumed)| resumed.unwrap_or_else(Instant::now) - failed)
            .unwrap_or_default();
        let outage = self.load.write_pause(from).max(failing);
        (
            format!(
                "{what}: writes paused {} (failing for {}), {all_fw}/{writes} writes failed, {all_fr}/{reads} reads failed ({first} needed a retry){extra}",
                secs(outage),
                secs(failing)
            ),
            outage,
            fw,
        )
    }
}

/// The controller-manager's `--node-monitor-grace-period` with several real nodes
/// (`hack/cluster/realnodes.sh`).
const NODE_MONITOR_GRACE: Duration = Duration::from_secs(15);

/// When the last real node that went NotReady after `since` (an `Instant` and the same moment
/// on the wall clock) was Ready again, if any did: a Ready condition whose last transition is
/// after `since`.
async fn node_flap_since(
    nodes: &Api<Node>,
    since: (Instant, k8s_openapi::jiff::Timestamp),
) -> Option<Instant> {
    let list = nodes
        .list(&ListParams::default().labels("type=real"))
        .await
        .expect("real nodes");
    let back = list
        .items
        .iter()
        .filter_map(|n| {
            let ready = n
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")?;
            ready.last_transition_time.as_ref().map(|t| t.0)
        })
        // Whole seconds: a transition in the second of the resume counts.
        .filter(|t| t.as_second() >= since.1.as_second())
        .max()?;
    let after = Duration::try_from(back.duration_since(since.1)).unwrap_or_default();
    Some(since.0 + after)
}

/// Whether a live app pod of `site` runs on `node`.
async fn app_pods_on(pods: &Api<Pod>, site: &str, node: &str) -> bool {
    pods.list(&ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={site},app.kubernetes.io/component=app"
    )))
    .await
    .expect("app pods")
    .items
    .iter()
    .any(|p| common::pods::node_of(p) == node && p.metadata.deletion_timestamp.is_none())
}

/// When `node` turned NotReady (its Ready condition's last transition, whole seconds), once it
/// is.
async fn not_ready_since(nodes: &Api<Node>, node: &str) -> Instant {
    wait_for(
        &format!("{node} NotReady"),
        Duration::from_secs(60),
        || async {
            let n = nodes.get(node).await.map_err(|e| e.to_string())?;
            let ready = n
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .ok_or("no Ready condition")?;
            match (ready.status.as_str(), ready.last_transition_time) {
                ("True", _) => Err("Ready".to_string()),
                (_, Some(t)) => {
                    let ago = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
                    let ago = Duration::try_from(ago).unwrap_or_default();
                    Ok(Instant::now().checked_sub(ago).unwrap_or_else(Instant::now))
                }
                (s, None) => Err(format!("Ready={s} without a transition time")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn three_instances_survive_the_loss_of_their_primary_under_load() {
    let started = Instant::now();
    let client = client().await;
    common::crd::install_crd(&client).await;
    let _heal = HealAll;
    let ns = TestNamespace::create(&client, "replicated-db").await;
    let class = format!("replicated-db-{}", ns.name);
    let node_dir = env_or(
        "REAL_NODE_DIR",
        &common::cluster_dir().join("real-nodes").to_string_lossy(),
    );
    // A fourth volume for a rebuild by the operator (its new claim needs one).
    let _volumes = local_volumes(&client, &class, Path::new(&node_dir), &REAL_NODES, 4).await;

    let op = OperatorProcess::in_namespace(&ns.name, &[]);
    op.wait_ready().await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = real_node_site(2, 3, &class);
    spec["title"] = json!("Replicated database");
    // A wipe under a running PostgreSQL can leave a partial data directory (PostgreSQL writes
    // into it again) that Patroni will not clone over (`start failed`, seen once); then the
    // operator's rebuild takes over, here after 30 s instead of the default 300 s.
    spec["database"]["rebuildFailingStandbySeconds"] = json!(30);
    let spec = serde_json::from_value(spec).expect("site spec");
    let t = Instant::now();
    let name = sites
        .create(&PostParams::default(), &ArticleSite::new("db", spec))
        .await
        .expect("create site")
        .name_any();
    wait_site_ready(&sites, &name, Duration::from_secs(300)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let primary = wait_healthy(&pods, &name, Duration::from_secs(240)).await;
    let all = instances(&pods, &name).await.expect("instances");
    let nodes: std::collections::BTreeSet<&str> = all.iter().map(|i| i.node.as_str()).collect();
    println!(
        "three instances healthy {} after creation: {all:?}",
        secs(t.elapsed())
    );
    assert_eq!(nodes.len(), 3, "one instance per node: {all:?}");
    let status = sites.get(&name).await.expect("site").status;
    let database = serde_json::to_value(&status)
        .ok()
        .and_then(|s| s.get("database").cloned())
        .unwrap_or(Value::Null);
    println!("status.database: {database}");
    assert_eq!(
        database.get("primary").and_then(Value::as_str),
        Some(primary.pod.as_str()),
        "status names the primary"
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let login = Login::of_site(&secrets, &name).await;
    let (addr, token) = site_address_and_token(&client, &ns.name, &name).await;
    let published = "front-page";
    publish_article(&addr, &token, published).await;

    let site = Site {
        name: name.clone(),
        ns: ns.name.clone(),
        pods: pods.clone(),
        load: Load::start(addr.clone(), token.clone(), published.to_string()),
        writers: WriterWatch::start(login.clone()),
        login: login.clone(),
    };
    site.writers.track(&all);
    let quiet = Instant::now();
    wait_for("undisturbed load", Duration::from_secs(60), || async {
        let (reads, fr, _, writes, fw) = site.load.counts(quiet);
        match (reads >= 20 && writes >= 10, fr + fw) {
            (true, 0) => Ok(()),
            (_, 0) => Err(format!("{reads} reads, {writes} writes so far")),
            // Not retried: the steady load itself must not fail.
            (_, f) => panic!("{f} requests failed without a fault"),
        }
    })
    .await;
    assert_eq!(site.writers.max(), 1, "exactly one instance takes writes");

    let mut lines = Vec::new();
    // Goals a fault missed; checked at the end, so that every fault runs and prints its figures.
    let mut misses: Vec<String> = Vec::new();
    // When each fault began (since the test started), to place an overlap of writers.
    let mut fault_starts: Vec<String> = Vec::new();

    // 1. The primary pod deleted (a clean shutdown releases Patroni's leader lock at once).
    let old = site.primary().await;
    let from = Instant::now();
    fault_starts.push(secs(from - started));
    pods.delete(&old.pod, &Default::default())
        .await
        .expect("delete primary pod");
    let (at, new) = wait_new_writer(&site, from, Some(&old.pod), Duration::from_secs(30)).await;
    settle(&site, from).await;
    let (line, outage, _) = site.report(
        "primary pod deleted",
        from,
        &format!("; {new} took writes {} after the deletion", secs(at - from)),
        &mut misses,
    );
    println!("{line}");
    lines.push(line);
    if outage >= Duration::from_secs(5) {
        misses.push(format!(
            "writes back in under 5 s: {}",
            lines.last().unwrap()
        ));
    }

    // 2. SIGKILL of the primary's PostgreSQL.
    let old = site.primary().await;
    let (pid, _) = postmaster_of(&site.uid_of(&old.pod).await).expect("postmaster of primary");
    let from = Instant::now();
    fault_starts.push(secs(from - started));
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success()),
        "kill -KILL {pid}"
    );
    let (at, new) = wait_new_writer(&site, from, None, Duration::from_secs(90)).await;
    within_25_s("SIGKILL", at - from, &mut misses);
    settle(&site, from).await;
    let (line, _, _) = site.report(
        "primary's PostgreSQL SIGKILLed",
        from,
        &format!("; {new} took writes {} after the kill", secs(at - from)),
        &mut misses,
    );
    println!("{line}");
    lines.push(line);

    // 3. The primary's container frozen: its leader lock expires, a replica takes over; thawed,
    // the old primary must come back as a replica (pg_rewind).
    let old = site.primary().await;
    let (_, freezer) = postmaster_of(&site.uid_of(&old.pod).await).expect("postmaster of primary");
    let from = Instant::now();
    fault_starts.push(secs(from - started));
    let frozen = Frozen::freeze(&freezer);
    let (at, new) = wait_new_writer(&site, from, Some(&old.pod), Duration::from_secs(90)).await;
    within_25_s("freeze", at - from, &mut misses);
    drop(frozen);
    let thawed = Instant::now();
    rejoined(&site, &old.pod).await;
    settle(&site, from).await;
    let (line, _, _) = site.report(
        "primary container frozen",
        from,
        &format!(
            "; {new} took writes {} after the freeze; the old primary rejoined as a replica {} after the thaw",
            secs(at - from),
            secs(thawed.elapsed())
        ),
        &mut misses,
    );
    println!("{line}");
    lines.push(line);

    // 4. The network of the primary's node cut.
    let old = site.primary().await;
    let app_there = app_pods_on(&pods, &name, &old.node).await;
    let from = Instant::now();
    fault_starts.push(secs(from - started));
    node_fault("partition", &old.node);
    let (at, new) = wait_new_writer(&site, from, Some(&old.pod), Duration::from_secs(90)).await;
    within_25_s("partition", at - from, &mut misses);
    // An app pod there stays an endpoint until the node is NotReady: reads sent to it fail
    // until then (and the host's kube-proxy a moment after).
    let endpoint_gone = if app_there {
        Some(not_ready_since(&Api::all(client.clone()), &old.node).await + Duration::from_secs(5))
    } else {
        None
    };
    node_fault("heal", &old.node);
    let healed = Instant::now();
    rejoined(&site, &old.pod).await;
    settle(&site, from).await;
    let (line, _, _) = site.report_excluding(
        &format!("network of {} (the primary's node) cut", old.node),
        from,
        endpoint_gone.map(|end| {
            (
                from,
                end,
                "while the app pod on the cut node was still an endpoint (until NotReady + 5 s)",
            )
        }),
        &format!(
            "; {new} took writes {} after the cut; the old primary rejoined {} after the heal",
            secs(at - from),
            secs(healed.elapsed())
        ),
        &mut misses,
    );
    println!("{line}");
    lines.push(line);

    // 5. A switchover on request.
    let old = site.primary().await;
    let from = Instant::now();
    fault_starts.push(secs(from - started));
    sites
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: "any"}}})),
        )
        .await
        .expect("annotate switchover");
    let (at, new) = wait_new_writer(&site, from, Some(&old.pod), Duration::from_secs(30)).await;
    settle(&site, from).await;
    let annotation_cleared = sites
        .get(&name)
        .await
        .expect("site")
        .annotations()
        .get(SWITCHOVER_ANNOTATION)
        .is_none();
    let (line, outage, _) = site.report(
        "switchover requested",
        from,
        &format!(
            "; {new} took writes {} after the request; annotation cleared: {annotation_cleared}",
            secs(at - from)
        ),
        &mut misses,
    );
    println!("{line}");
    lines.push(line);
    if outage >= Duration::from_secs(3) {
        misses.push(format!(
            "a switchover pauses writes under 3 s: {}",
            lines.last().unwrap()
        ));
    }
    if !annotation_cleared {
        misses.push("the operator clears the switchover annotation".into());
    }

    // 6. The API server stopped for 30 s: Patroni's failsafe mode keeps the primary.
    let old = site.primary().await;
    let from = Instant::now();
    fault_starts.push(secs(from - started));
    let paused = Paused::apiserver();
    tokio::time::sleep(Duration::from_secs(30)).await; // the fault's length, not a wait
    paused.resume();
    let resumed = (Instant::now(), k8s_openapi::jiff::Timestamp::now());
    // The controller-manager saw no node heartbeat for as long. Within one grace period after
    // the resume it may call the real nodes NotReady before it sees their fresh Leases (here
    // the grace is 15 s, shorter than the outage; the default of 50 s is longer), and mark
    // every pod there unready until they are Ready again: the event lasts that long, and
    // what fails during such a flap is the controller-manager's, shown apart.
    tokio::time::sleep(NODE_MONITOR_GRACE).await; // an observation window, not a wait
    let flap = node_flap_since(&Api::all(client.clone()), resumed).await;
    let (line, _, failed) = site.report_excluding(
        "API server stopped 30 s",
        from,
        flap.map(|back| {
            (
                resumed.0,
                back + Duration::from_secs(5),
                "while the controller-manager had marked the real nodes NotReady after the outage (until Ready + 5 s)",
            )
        }),
        &format!("; primary before {}", old.pod),
        &mut misses,
    );
    println!("{line}");
    lines.push(line);
    if failed > 0 {
        misses.push(format!(
            "no write fails while the API server is away: {failed} failed"
        ));
    }
    let after = site.primary().await;
    if after.pod != old.pod {
        misses.push(format!(
            "the primary kept its role through the outage: {} -> {}",
            old.pod, after.pod
        ));
    }

    // 7. A replica's data directory wiped: Patroni rebuilds it from the primary.
    let all = instances(&pods, &name).await.expect("instances");
    let replica = all.iter().find(|i| i.role == "replica").expect("a replica");
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name)
        .get(&format!("data-{}", replica.pod))
        .await
        .expect("replica's claim");
    let volume = claim
        .spec
        .and_then(|s| s.volume_name)
        .expect("bound volume");
    let path = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .expect("volume")
        .spec
        .and_then(|s| s.local)
        .map(|l| l.path)
        .expect("local path");
    let from = Instant::now();
    fault_starts.push(secs(from - started));
    for e in std::fs::read_dir(&path).expect("volume dir").flatten() {
        let p = e.path();
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    // It stops, and comes back as a streaming replica.
    wait_for(
        "the wiped replica is not ready",
        Duration::from_secs(60),
        || async {
            match instances(&pods, &name)
                .await?
                .iter()
                .find(|i| i.pod == replica.pod)
            {
                Some(i) if i.ready && i.role == "replica" => Err(format!("{i:?}")),
                _ => Ok(()),
            }
        },
    )
    .await;
    rejoined(&site, &replica.pod).await;
    let (line, _, failed) = site.report(
        &format!("data directory of replica {} wiped", replica.pod),
        from,
        &format!("; rebuilt and streaming {} later", secs(from.elapsed())),
        &mut misses,
    );
    println!("{line}");
    lines.push(line);
    if failed > 0 {
        misses.push(format!(
            "writes go on while a replica is rebuilt: {failed} failed"
        ));
    }

    let acked = site.load.acked();
    let overlaps = site.writers.overlaps(started);
    let Site { load, writers, .. } = site;
    load.stop().await;
    let max = writers.stop().await;
    let lost = missing_articles(&addr, &token, &acked).await;
    lines.push(format!(
        "{} acknowledged writes, {} lost; at most {max} instance(s) committed a write at any sampled moment",
        acked.len(),
        lost.len()
    ));
    println!(
        "\nreplicated database e2e ({}):\n  {}",
        secs(started.elapsed()),
        lines.join("\n  ")
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        max <= 1,
        "never two instances take writes: {max}, at {overlaps:?}; faults began at {:?}",
        fault_starts
    );
    assert!(
        misses.is_empty(),
        "goals missed:\n  {}",
        misses.join("\n  ")
    );
}

/// Records a miss of the goal: a primary accepts writes within 25 s of the fault.
fn within_25_s(what: &str, took: Duration, misses: &mut Vec<String>) {
    if took > Duration::from_secs(25) {
        misses.push(format!(
            "{what}: a primary took writes {} after the fault (goal 25 s)",
            secs(took)
        ));
    }
}

/// Waits until one instance other than `old` (any, when None) commits writes.
async fn wait_new_writer(
    site: &Site,
    from: Instant,
    old: Option<&str>,
    within: Duration,
) -> (Instant, String) {
    let deadline = from + within;
    loop {
        if let Ok(all) = instances(&site.pods, &site.name).await {
            site.writers.track(&all);
        }
        if let Some(found) = site.writers.new_writer_since(from, old) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no instance (other than {old:?}) took writes within {within:?} in {}: {:?}",
            site.ns,
            instances(&site.pods, &site.name).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `pod` is a ready replica again.
async fn rejoined(site: &Site, pod: &str) {
    wait_for(
        "the old primary rejoins as a replica",
        Duration::from_secs(180),
        || async {
            let all = instances(&site.pods, &site.name).await?;
            site.writers.track(&all);
            match all.iter().find(|i| i.pod == pod) {
                Some(i) if i.ready && i.role == "replica" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Waits until writes succeed again after `from` (the report's outage ends there).
async fn settle(site: &Site, from: Instant) {
    wait_for("writes succeed again", Duration::from_secs(60), || async {
        match site.load.write_outage(from) {
            Some((_, None)) => Err("writes still failing".to_string()),
            _ => Ok(()),
        }
    })
    .await;
}
