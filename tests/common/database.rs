//! The replicated database as the end-to-end tests see it (`make e2e`, three real nodes): its
//! instances from their pods and Patroni's labels and annotations, the site's database login,
//! and a watch that asks every instance a few times a second whether it commits a write (never
//! two may at the same moment). Used by `tests/replicated_database.rs` and `tests/real_nodes.rs`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use articlesite_operator::resources::{DB_PASSWORD_KEY, DB_USERNAME_KEY, Names};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tokio::time::Instant;

use super::pods::{is_live, is_ready, node_of};
use super::wait_for;

/// A database pod as the test sees it: name, node, IP, Patroni's role label.
#[derive(Clone, Debug)]
pub struct Instance {
    pub pod: String,
    pub node: String,
    pub ip: String,
    pub role: String,
    pub ready: bool,
    /// Patroni's `replication_state` from the pod's `status` annotation (`streaming` for a
    /// replica that streams from the primary; its `state` stays `running`).
    pub replication: String,
}

pub async fn instances(pods: &Api<Pod>, site: &str) -> Result<Vec<Instance>, String> {
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
pub async fn wait_healthy(pods: &Api<Pod>, site: &str, within: Duration) -> Instance {
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
pub struct Login {
    pub user: String,
    pub password: String,
    pub database: String,
}

/// The primary's `synchronous_standby_names` as PostgreSQL has it (Patroni sets it), or `None`
/// when it does not answer within 1.5 s.
pub fn synchronous_standby_names(ip: &str, login: &Login) -> Option<String> {
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
pub fn accepts_write(ip: &str, login: &Login) -> bool {
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
pub type WriterLog = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

/// Asks every known instance every 250 ms whether it commits a write; keeps the largest number
/// that did in one round (never more than one may) and when each round's writer changed.
pub struct WriterWatch {
    max: Arc<AtomicUsize>,
    writers: WriterLog,
    ips: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl WriterWatch {
    pub fn start(login: Login) -> Self {
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
    pub fn track(&self, all: &[Instance]) {
        if let Ok(mut m) = self.ips.lock() {
            for i in all.iter().filter(|i| !i.ip.is_empty()) {
                m.insert(i.pod.clone(), i.ip.clone());
            }
        }
    }

    /// The first moment after `from` at which exactly one instance other than `old` (or any
    /// one, when `old` is None) committed a write.
    pub fn new_writer_since(&self, from: Instant, old: Option<&str>) -> Option<(Instant, String)> {
        let w = self.writers.lock().ok()?;
        w.iter()
            .filter(|(at, _)| *at >= from)
            .find_map(|(at, now)| match now.as_slice() {
                [one] if Some(one.as_str()) != old => Some((*at, one.clone())),
                _ => None,
            })
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// The sampled moments (since `start`) at which more than one instance committed a write.
    pub fn overlaps(&self, start: Instant) -> Vec<String> {
        self.writers
            .lock()
            .map(|w| {
                w.iter()
                    .filter(|(_, now)| now.len() > 1)
                    .map(|(at, now)| format!("+{:.1}s {now:?}", (*at - start).as_secs_f64()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max.load(Ordering::Relaxed)
    }
}

/// A value of a Secret's data, as text.
pub fn secret_value(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8(b.0.clone()).expect("utf-8"))
        .unwrap_or_else(|| panic!("{key} in {}", s.name_any()))
}

impl Login {
    /// The site's database login, from its credentials Secret.
    pub async fn of_site(secrets: &Api<Secret>, site: &str) -> Self {
        let credentials = secrets
            .get(&Names::database_credentials(site))
            .await
            .expect("credentials");
        Login {
            user: secret_value(&credentials, DB_USERNAME_KEY),
            password: secret_value(&credentials, DB_PASSWORD_KEY),
            database: "articles".into(),
        }
    }
}

/// The primary, once two replicas stream and one of them is its synchronous standby (Patroni's
/// `-sync` object) and PostgreSQL itself waits for a standby; every instance is then tracked by
/// `writers`. Without a synchronous standby Patroni lets no replica promote (a write
/// acknowledged meanwhile may exist on the primary alone), so a fault then would test nothing.
pub async fn wait_primary(
    pods: &Api<Pod>,
    ns: &str,
    site: &str,
    login: &Login,
    writers: &WriterWatch,
) -> Instance {
    let p = wait_healthy(pods, site, Duration::from_secs(180)).await;
    let sync = format!("{site}-postgresql-sync");
    let endpoints: Api<Endpoints> = Api::namespaced(pods.clone().into_client(), ns);
    wait_for("a synchronous standby", Duration::from_secs(60), || async {
        let e = endpoints.get(&sync).await.map_err(|e| e.to_string())?;
        let a = e.annotations();
        match (a.get("leader"), a.get("sync_standby")) {
            (Some(l), Some(s)) if *l == p.pod && !s.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // After an in-place restart the `-sync` object is the one from before it, while Patroni
    // names the standbys again only once they have caught up: a fault in that window hits a
    // primary that commits alone. So ask PostgreSQL too, and wait until it names every
    // streaming replica (`ANY 1 (a,b)`): with one name only, losing that replica stops commits
    // until Patroni renames, which is a gap of the moment, not the steady state under test.
    let ip = p.ip.clone();
    wait_for(
        "the primary's synchronous_standby_names naming every streaming replica",
        Duration::from_secs(90),
        || {
            let (ip, login) = (ip.clone(), login.clone());
            async move {
                let replicas: Vec<String> = instances(pods, site)
                    .await?
                    .into_iter()
                    .filter(|i| i.role == "replica" && i.replication == "streaming")
                    .map(|i| i.pod)
                    .collect();
                match tokio::task::spawn_blocking(move || synchronous_standby_names(&ip, &login))
                    .await
                {
                    Ok(Some(names))
                        if !names.is_empty() && replicas.iter().all(|r| names.contains(r)) =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}, streaming replicas {replicas:?}")),
                }
            }
        },
    )
    .await;
    if let Ok(all) = instances(pods, site).await {
        writers.track(&all);
    }
    p
}
