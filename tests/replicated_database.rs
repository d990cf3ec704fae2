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

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use articlesite_operator::resources::{DB_PASSWORD_KEY, DB_USERNAME_KEY, Names, WRITE_TOKEN_KEY};
use k8s_openapi::api::core::v1::{
    Endpoints, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use common::control_plane::Paused;
use common::e2e::{
    HealAll, Load, REAL_NODES, env_or, local_volumes, missing_articles, node_fault, publish_article,
};
use common::operator::OperatorProcess;
use common::pods::{is_live, is_ready, node_of};
use common::site::wait_site_ready;
use common::{TestNamespace, client, wait_for};

const SWITCHOVER_ANNOTATION: &str = "articlesite.io/switchover";

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// A database pod as the test sees it: name, node, IP, Patroni's role label.
#[derive(Clone, Debug)]
struct Instance {
    pod: String,
    node: String,
    ip: String,
    role: String,
    ready: bool,
    /// Patroni's `replication_state` from the pod's `status` annotation (`streaming` for a
    /// replica that streams from the primary; its `state` stays `running`).
    replication: String,
}

async fn instances(pods: &Api<Pod>, site: &str) -> Result<Vec<Instance>, String> {
    let list = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={site},app.kubernetes.io/component=database"
        )))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|p| is_live(p))
        .map(|p| Instance {
            pod: p.name_any(),
            node: node_of(p).to_string(),
            ip: p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default(),
            role: p.labels().get("role").cloned().unwrap_or_default(),
            ready: is_ready(p),
            replication: p
                .annotations()
                .get("status")
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .and_then(|v| v["replication_state"].as_str().map(str::to_string))
                .unwrap_or_default(),
        })
        .collect())
}

/// The instance labelled primary, with two ready replicas beside it.
async fn wait_healthy(pods: &Api<Pod>, site: &str, within: Duration) -> Instance {
    wait_for(
        "one primary and two ready replicas",
        within,
        || async move {
            let all = instances(pods, site).await?;
            let primaries: Vec<&Instance> = all
                .iter()
                .filter(|i| i.role == "primary" && i.ready)
                .collect();
            // Streaming, not only ready: readiness is "PostgreSQL runs" (Patroni's /health).
            let replicas = all
                .iter()
                .filter(|i| i.role == "replica" && i.ready && i.replication == "streaming")
                .count();
            match (primaries.as_slice(), replicas) {
                ([p], 2) => Ok((*p).clone()),
                _ => Err(format!("{all:?}")),
            }
        },
    )
    .await
}

/// Connection settings of the site's database, read from its credentials Secret.
#[derive(Clone)]
struct Login {
    user: String,
    password: String,
    database: String,
}

/// The primary's `synchronous_standby_names` as PostgreSQL has it (Patroni sets it), or `None`
/// when it does not answer within 1.5 s.
fn synchronous_standby_names(ip: &str, login: &Login) -> Option<String> {
    let out = Command::new("timeout")
        .args([
            "1.5",
            "psql",
            "-X",
            "-At",
            "-c",
            "show synchronous_standby_names",
            &format!(
                "host={ip} port=5432 user={} dbname={} connect_timeout=1",
                login.user, login.database
            ),
        ])
        .env("PGPASSWORD", &login.password)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether the server at `ip` commits a write now, as a client's write commits: a
/// transactional WAL record (`pg_logical_emit_message`), so the commit waits for the
/// synchronous standby. Not `select txid_current()`: a transaction that wrote no WAL before
/// its commit record commits without waiting for any standby (PostgreSQL skips the wait),
/// so a thawed old primary "accepted" it in the moment before Patroni demoted it, a commit
/// no client could have had acknowledged. A server in recovery refuses the write; a frozen
/// or cut-off one does not answer within 1.5 s.
fn accepts_write(ip: &str, login: &Login) -> bool {
    let Ok(mut child) = Command::new("psql")
        .args([
            "-X",
            "-At",
            "-c",
            "select pg_logical_emit_message(true, 'articlesite-e2e', '')",
            &format!(
                "host={ip} port=5432 user={} dbname={} connect_timeout=1",
                login.user, login.database
            ),
        ])
        .env("PGPASSWORD", &login.password)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if start.elapsed() < Duration::from_millis(1500) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// When the set of instances that committed a write changed, and the new set.
type WriterLog = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

/// Asks every known instance every 250 ms whether it commits a write; keeps the largest number
/// that did in one round (never more than one may) and when each round's writer changed.
struct WriterWatch {
    max: Arc<AtomicUsize>,
    writers: WriterLog,
    ips: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl WriterWatch {
    fn start(login: Login) -> Self {
        let max = Arc::new(AtomicUsize::new(0));
        let writers: WriterLog = Arc::default();
        let ips: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (m, w, i, s) = (max.clone(), writers.clone(), ips.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let round = Instant::now();
                let known: Vec<(String, String)> = i
                    .lock()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                let asks = known.into_iter().map(|(pod, ip)| {
                    let login = login.clone();
                    tokio::task::spawn_blocking(move || (pod, accepts_write(&ip, &login)))
                });
                let answers = futures::future::join_all(asks).await;
                let now: Vec<String> = answers
                    .into_iter()
                    .flatten()
                    .filter(|(_, ok)| *ok)
                    .map(|(pod, _)| pod)
                    .collect();
                m.fetch_max(now.len(), Ordering::Relaxed);
                if let Ok(mut w) = w.lock()
                    && w.last().is_none_or(|(_, last)| *last != now)
                {
                    w.push((round, now));
                }
                tokio::time::sleep(Duration::from_millis(250).saturating_sub(round.elapsed()))
                    .await;
            }
        });
        Self {
            max,
            writers,
            ips,
            stop,
            task,
        }
    }

    /// The instances to ask (pod name → IP); a pod that is gone keeps its last address,
    /// which simply stops answering.
    fn track(&self, all: &[Instance]) {
        if let Ok(mut m) = self.ips.lock() {
            for i in all.iter().filter(|i| !i.ip.is_empty()) {
                m.insert(i.pod.clone(), i.ip.clone());
            }
        }
    }

    /// The first moment after `from` at which exactly one instance other than `old` (or any
    /// one, when `old` is None) committed a write.
    fn new_writer_since(&self, from: Instant, old: Option<&str>) -> Option<(Instant, String)> {
        let w = self.writers.lock().ok()?;
        w.iter()
            .filter(|(at, _)| *at >= from)
            .find_map(|(at, now)| match now.as_slice() {
                [one] if Some(one.as_str()) != old => Some((*at, one.clone())),
                _ => None,
            })
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// The sampled moments (since `start`) at which more than one instance committed a write.
    fn overlaps(&self, start: Instant) -> Vec<String> {
        self.writers
            .lock()
            .map(|w| {
                w.iter()
                    .filter(|(_, now)| now.len() > 1)
                    .map(|(at, now)| format!("+{} {now:?}", secs(*at - start)))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max.load(Ordering::Relaxed)
    }
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
    /// The primary, once two replicas are ready and one of them is its synchronous standby
    /// (Patroni's `-sync` object). Without one, Patroni lets no replica promote (a write
    /// acknowledged meanwhile may exist on the primary alone), so a fault then would test nothing.
    async fn primary(&self) -> Instance {
        let p = wait_healthy(&self.pods, &self.name, Duration::from_secs(180)).await;
        let sync = format!("{}-postgresql-sync", self.name);
        let endpoints: Api<Endpoints> = Api::namespaced(self.pods.clone().into_client(), &self.ns);
        wait_for("a synchronous standby", Duration::from_secs(60), || async {
            let e = endpoints.get(&sync).await.map_err(|e| e.to_string())?;
            let a = e.annotations();
            match (a.get("leader"), a.get("sync_standby")) {
                (Some(l), Some(s)) if *l == p.pod && !s.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        // And PostgreSQL itself waits for a standby: after an in-place restart the `-sync`
        // object is the one from before it, while Patroni names the standbys again only
        // once they have caught up. A fault in that window hits a primary that commits alone.
        let login = self.login.clone();
        let ip = p.ip.clone();
        wait_for(
            "the primary's synchronous_standby_names set",
            Duration::from_secs(60),
            || {
                let (ip, login) = (ip.clone(), login.clone());
                async move {
                    match tokio::task::spawn_blocking(move || {
                        synchronous_standby_names(&ip, &login)
                    })
                    .await
                    {
                        Ok(Some(names)) if !names.is_empty() => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await;
        if let Ok(all) = instances(&self.pods, &self.name).await {
            self.writers.track(&all);
        }
        p
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
        let (reads, fr, first, writes, fw) = self.load.counts(from);
        if fr > 0 {
            misses.push(format!(
                "no read fails while a replica is healthy: {what}: {fr}/{reads} reads failed"
            ));
        }
        let outage = self
            .load
            .write_outage(from)
            .map(|(failed, resumed)| resumed.unwrap_or_else(Instant::now) - failed)
            .unwrap_or_default();
        (
            format!(
                "{what}: writes stopped {}, {fw}/{writes} writes failed, {fr}/{reads} reads failed ({first} needed a retry){extra}",
                secs(outage)
            ),
            outage,
            fw,
        )
    }
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
    let _volumes = local_volumes(&client, &class, Path::new(&node_dir), &REAL_NODES, 3).await;

    let op = OperatorProcess::in_namespace(&ns.name, &[]);
    op.wait_ready().await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let spec = serde_json::from_value(json!({
        "title": "Replicated database",
        "app": {
            "image": env_or("ARTICLE_SERVER_IMAGE", "localhost/articlesite/article-server:dev"),
            "imagePullPolicy": "Never",
            "replicas": 2,
        },
        "database": {
            "image": env_or("POSTGRESQL_IMAGE", "localhost/articlesite/postgresql:dev"),
            "imagePullPolicy": "Never",
            "instances": 3,
            "storage": {"size": "1Gi", "storageClass": class},
        },
        "placement": {
            "nodeSelector": {"type": "real"},
            "tolerations": [{"key": "articlesite.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }))
    .expect("site spec");
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
    let secret_value = |s: &Secret, key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8(b.0.clone()).expect("utf-8"))
            .unwrap_or_else(|| panic!("{key} in {}", s.name_any()))
    };
    let token = secret_value(
        &secrets
            .get(&Names::write_token(&name))
            .await
            .expect("token"),
        WRITE_TOKEN_KEY,
    );
    let credentials = secrets
        .get(&Names::database_credentials(&name))
        .await
        .expect("credentials");
    let login = Login {
        user: secret_value(&credentials, DB_USERNAME_KEY),
        password: secret_value(&credentials, DB_PASSWORD_KEY),
        database: "articles".into(),
    };
    let cluster_ip = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get(&name)
        .await
        .expect("site Service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ClusterIP");
    let addr = format!("{cluster_ip}:80");
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
    let from = Instant::now();
    fault_starts.push(secs(from - started));
    node_fault("partition", &old.node);
    let (at, new) = wait_new_writer(&site, from, Some(&old.pod), Duration::from_secs(90)).await;
    within_25_s("partition", at - from, &mut misses);
    node_fault("heal", &old.node);
    let healed = Instant::now();
    rejoined(&site, &old.pod).await;
    settle(&site, from).await;
    let (line, _, _) = site.report(
        &format!("network of {} (the primary's node) cut", old.node),
        from,
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
    let (line, _, failed) = site.report(
        "API server stopped 30 s",
        from,
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
