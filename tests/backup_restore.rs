//! Backups and restores for real (`make e2e`, feature `e2e`, one real node): pgBackRest in the
//! project's PostgreSQL image archives to a real S3-compatible server on this machine
//! (`rclone serve s3` over TLS from the cluster's CA, `hack/cluster/s3.sh`), the backup Jobs
//! exec into the primary, the agent reports archiving, and new sites are restored from the
//! repository. In order, each printing its figures:
//!
//! 1. point in time: articles A, a backup, articles B, time T, articles C; a new site restored
//!    to T holds A and B and not C, served by its own article server;
//! 2. the S3 server stopped under writes: writes go on, `ContinuousArchiving` goes False with
//!    the reason, and the archive catches up by itself once the server is back;
//! 3. a standby rebuilt from the repository instead of from the primary;
//! 4. the site deleted, volumes included, and restored from its repository: every article
//!    acknowledged up to `archiveTimeoutSeconds` before the deletion is there (the loss is
//!    measured).
//!
//! Needs `make cluster-up REAL_NODE=1` (which starts the S3 server) and `make images`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use common::e2e::{
    Load, env_or, local_volumes, missing_articles, real_node_site, site_address_and_token,
};
use common::http::request;
use common::operator::OperatorProcess;
use common::site::{condition, wait_condition, wait_site_ready};
use common::{TestNamespace, client, cluster_dir, wait_for};

const NODE: &str = "real-node";
const ARCHIVE_TIMEOUT: i64 = 10;

/// `KEY=value` lines of a file the cluster scripts wrote.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (is the S3 server up? make cluster-up REAL_NODE=1)",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

fn s3_dir() -> std::path::PathBuf {
    cluster_dir().join("s3")
}

fn s3(action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster/s3.sh");
    let out = std::process::Command::new(&script)
        .arg(action)
        .output()
        .expect("run hack/cluster/s3.sh");
    assert!(
        out.status.success(),
        "s3.sh {action}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Site {
    name: String,
    addr: String,
    token: String,
}

async fn site_spec(class: &str, backup: &Value, instances: i32, recovery: Option<Value>) -> Value {
    let mut spec = real_node_site(1, instances, class);
    spec["app"]["resources"] =
        json!({"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}});
    if let Some(r) = recovery {
        spec["database"]["bootstrap"] = json!({"recovery": r});
    }
    spec["backup"] = backup.clone();
    spec
}

async fn create_site(
    client: &Client,
    sites: &Api<ArticleSite>,
    name: &str,
    spec: Value,
) -> (Site, Duration) {
    let t = Instant::now();
    let spec = serde_json::from_value(spec).expect("site spec");
    sites
        .create(&PostParams::default(), &ArticleSite::new(name, spec))
        .await
        .expect("create site");
    wait_site_ready(sites, name, Duration::from_secs(420)).await;
    let took = t.elapsed();
    let ns = sites_namespace(sites);
    let (addr, token) = site_address_and_token(client, &ns, name).await;
    (
        Site {
            name: name.into(),
            addr,
            token,
        },
        took,
    )
}

fn sites_namespace(sites: &Api<ArticleSite>) -> String {
    sites.namespace().map(String::from).unwrap_or_default()
}

/// Creates `slug`, retrying while the site is not answering (at most a minute).
async fn write(site: &Site, slug: &str) {
    wait_for(
        &format!("write {slug}"),
        Duration::from_secs(60),
        || async {
            let body = json!({"slug": slug, "title": slug, "body": "backup e2e"});
            let (s, _, b) = request(
                &site.addr,
                "POST",
                "/api/v1/articles",
                Some(&site.token),
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
}

async fn status_of(site: &Site, slug: &str) -> u16 {
    let path = format!("/api/v1/articles/{slug}");
    match request(
        &site.addr,
        "GET",
        &path,
        Some(&site.token),
        None,
        Duration::from_secs(5),
    )
    .await
    {
        Ok((s, _, _)) => s,
        Err(_) => 0,
    }
}

async fn backup_status(
    sites: &Api<ArticleSite>,
    name: &str,
) -> articlesite_operator::crd::BackupStatus {
    sites
        .get(name)
        .await
        .expect("site")
        .status
        .and_then(|s| s.backup)
        .unwrap_or_default()
}

/// Waits until the site's last archived segment is from `after` or later.
async fn wait_archived_after(
    sites: &Api<ArticleSite>,
    name: &str,
    after: jiff::Timestamp,
    timeout: Duration,
) {
    wait_for(
        &format!("{name}: WAL archived after {after}"),
        timeout,
        || async {
            let b = backup_status(sites, name).await;
            match &b.last_archived_at {
                Some(t) if t.0 >= after => Ok(()),
                other => Err(format!(
                    "last archived {other:?} ({:?})",
                    b.last_archived_wal
                )),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_restore_to_a_point_in_time_and_survive_the_loss_of_everything() {
    let client = client().await;
    common::crd::install_crd(&client).await;
    let ns = TestNamespace::create(&client, "e2e-backup").await;
    let class = format!("real-node-{}", ns.name);
    let node_dir = env_or(
        "REAL_NODE_DIR",
        &cluster_dir().join("real-node").to_string_lossy(),
    );
    let _volumes = local_volumes(&client, &class, Path::new(&node_dir), &[NODE], 6).await;
    let image = env_or(
        "OPERATOR_IMAGE",
        "localhost/articlesite/articlesite-operator:dev",
    );
    let backup_image = format!("--backup-image={image}");
    let op = OperatorProcess::in_namespace(&ns.name, &[&backup_image]);
    op.wait_ready().await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // The repository: the S3 server the cluster scripts started, its keys and CA as Secrets.
    let endpoint = env_file(&s3_dir().join("endpoint.env"));
    let keys = env_file(&s3_dir().join("credentials.env"));
    let ca = std::fs::read_to_string(&endpoint["S3_CA_FILE"]).expect("S3 CA");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    for (name, data) in [
        (
            "s3-keys",
            json!({"accessKeyId": keys["S3_ACCESS_KEY_ID"], "secretAccessKey": keys["S3_SECRET_ACCESS_KEY"]}),
        ),
        ("s3-ca", json!({"ca.crt": ca})),
    ] {
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                .unwrap();
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("secret");
    }
    let backup = json!({
        "s3": {"endpoint": endpoint["S3_ENDPOINT"], "bucket": endpoint["S3_BUCKET"],
               "region": endpoint.get("S3_REGION").cloned().unwrap_or("us-east-1".into()),
               "uriStyle": "Path", "credentialsSecret": "s3-keys", "caSecret": {"name": "s3-ca"}},
        "archiveTimeoutSeconds": ARCHIVE_TIMEOUT,
        // Room for the outage below (a segment every ARCHIVE_TIMEOUT seconds while the load
        // writes): beyond it pgBackRest would drop WAL, which the gap step of tests/backup.rs
        // covers.
        "archiveQueueMax": "512Mi",
    });

    // The site, two instances, archiving from the start.
    let (orig, took) = create_site(
        &client,
        &sites,
        "orig",
        site_spec(&class, &backup, 2, None).await,
    )
    .await;
    println!("site orig Ready in {:.1}s", took.as_secs_f64());
    let t = Instant::now();
    wait_condition(
        &sites,
        "orig",
        "ContinuousArchiving",
        "True",
        Some("Archiving"),
        Duration::from_secs(180),
    )
    .await;
    let archiving_after = t.elapsed();
    let s = wait_condition(
        &sites,
        "orig",
        "LastBackupSucceeded",
        "True",
        None,
        Duration::from_secs(300),
    )
    .await;
    let first = s.status.unwrap().backup.unwrap().last_backup.unwrap();
    println!(
        "archiving {:.1}s after Ready; first full backup {} done {:.1}s after Ready ({} MiB database, {} KiB in the repository, {}s)",
        archiving_after.as_secs_f64(),
        first.label,
        t.elapsed().as_secs_f64(),
        first.database_bytes >> 20,
        first.repository_bytes >> 10,
        first.finished.0.as_second() - first.started.0.as_second()
    );

    // 1. Point in time.
    let a: Vec<String> = (1..=5).map(|i| format!("a-{i}")).collect();
    let b: Vec<String> = (1..=5).map(|i| format!("b-{i}")).collect();
    let c: Vec<String> = (1..=5).map(|i| format!("c-{i}")).collect();
    for slug in &a {
        write(&orig, slug).await;
    }
    let ask = json!({"metadata": {"annotations": {"articlesite.io/backup": "full"}}});
    sites
        .patch("orig", &PatchParams::default(), &Patch::Merge(&ask))
        .await
        .expect("ask for a backup");
    let t = Instant::now();
    let second = wait_for("the requested backup", Duration::from_secs(300), || async {
        let b = backup_status(&sites, "orig").await;
        match b.last_backup {
            Some(l) if l.label != first.label => Ok(l),
            other => Err(format!("{other:?} {:?}", b.last_failure)),
        }
    })
    .await;
    println!(
        "requested full backup {} done in {:.1}s",
        second.label,
        t.elapsed().as_secs_f64()
    );
    for slug in &b {
        write(&orig, slug).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await; // T falls strictly between B and C
    let target = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for slug in &c {
        write(&orig, slug).await;
    }
    let after_c = jiff::Timestamp::now();
    wait_archived_after(&sites, "orig", after_c, Duration::from_secs(120)).await;
    let target_text = target.round(jiff::Unit::Second).unwrap().to_string();
    let recovery = json!({"sourceSite": "orig", "targetTime": target_text});
    let (pitr, took) = create_site(
        &client,
        &sites,
        "pitr",
        site_spec(&class, &backup, 1, Some(recovery)).await,
    )
    .await;
    let mut wrong = Vec::new();
    for slug in a.iter().chain(&b) {
        let s = status_of(&pitr, slug).await;
        if s != 200 {
            wrong.push(format!("{slug}: {s}, want 200"));
        }
    }
    for slug in &c {
        let s = status_of(&pitr, slug).await;
        if s != 404 {
            wrong.push(format!("{slug}: {s}, want 404"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the site restored to {target_text}: {wrong:?}"
    );
    let restored = backup_status(&sites, "pitr").await;
    println!(
        "point in time {target_text}: site pitr Ready in {:.1}s, holds A and B (10 articles), not C; restored from {:?}",
        took.as_secs_f64(),
        restored.restored_from
    );

    // 2. The repository goes away under writes.
    let load = Load::start(orig.addr.clone(), orig.token.clone(), "a-1".into());
    tokio::time::sleep(Duration::from_secs(5)).await; // the load's window before the fault
    let fault = Instant::now();
    s3("stop");
    let s = wait_condition(
        &sites,
        "orig",
        "ContinuousArchiving",
        "False",
        None,
        Duration::from_secs(180),
    )
    .await;
    let (_, reason, message) = condition(&s, "ContinuousArchiving").unwrap();
    println!(
        "S3 stopped: ContinuousArchiving False after {:.1}s, {reason}: {message}",
        fault.elapsed().as_secs_f64()
    );
    assert_eq!(condition(&s, "Degraded").map(|c| c.1), Some(reason.clone()));
    tokio::time::sleep(Duration::from_secs(20)).await; // writes go on meanwhile (measured below)
    let back = Instant::now();
    let healed = jiff::Timestamp::now();
    s3("start");
    wait_condition(
        &sites,
        "orig",
        "ContinuousArchiving",
        "True",
        Some("Archiving"),
        Duration::from_secs(240),
    )
    .await;
    wait_archived_after(&sites, "orig", healed, Duration::from_secs(120)).await;
    let (_, _, _, writes, failed) = load.counts(fault);
    println!(
        "S3 back: archive caught up {:.1}s after the restart; writes during the outage and after: {writes}, failed {failed}",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(
        failed, 0,
        "writes must not fail while the repository is away"
    );

    // 3. A standby rebuilt from the repository: its volume and pod deleted, Patroni's first
    // replica method (pgBackRest) restores it instead of copying the primary.
    let replica = wait_for("the replica", Duration::from_secs(60), || async {
        let list = pods
            .list(&ListParams::default().labels(
                "app.kubernetes.io/instance=orig,app.kubernetes.io/component=database,role=replica",
            ))
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .next()
            .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
            .ok_or_else(|| "no replica".to_string())
    })
    .await;
    let (replica, old_uid) = replica;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let claim = format!("data-{replica}");
    let t = Instant::now();
    claims
        .delete(&claim, &DeleteParams::background())
        .await
        .expect("delete the replica's claim");
    pods.delete(&replica, &DeleteParams::background())
        .await
        .expect("delete the replica");
    let how = wait_for(
        "the replica restored from the repository and streaming",
        Duration::from_secs(300),
        || async {
            // The new pod, not the old one still terminating.
            let pod = pods.get(&replica).await.map_err(|e| e.to_string())?;
            if pod.uid().unwrap_or_default() == old_uid {
                return Err("the old pod is still there".into());
            }
            let logs = pods
                .logs(
                    &replica,
                    &LogParams {
                        container: Some("postgresql".into()),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            // pgBackRest's own last word on the restore, not only the replica method's start
            // (which a standby made before the first backup prints too, then falls back).
            if !logs.contains("restoring this standby from the backup repository")
                || !logs.contains("restore command end: completed successfully")
            {
                return Err("not restored from the repository (yet)".into());
            }
            let s = sites.get("orig").await.map_err(|e| e.to_string())?;
            let streaming = s.status.and_then(|s| s.database).is_some_and(|d| {
                d.instances
                    .iter()
                    .any(|i| i.name == replica && i.role == "replica" && i.state == "streaming")
            });
            streaming
                .then_some(logs.lines().filter(|l| l.contains("restore")).count())
                .ok_or_else(|| "not streaming yet".into())
        },
    )
    .await;
    println!(
        "standby {replica} rebuilt from the repository and streaming in {:.1}s ({how} restore log lines)",
        t.elapsed().as_secs_f64()
    );

    // 4. Everything deleted, then restored from the repository.
    tokio::time::sleep(Duration::from_secs(5)).await; // acknowledged writes after the rebuild
    let deleted_at = jiff::Timestamp::now();
    let deletion = Instant::now();
    sites
        .delete("orig", &DeleteParams::foreground())
        .await
        .expect("delete orig");
    wait_for(
        "orig and its volumes gone",
        Duration::from_secs(180),
        || async {
            let left = claims
                .list(&ListParams::default().labels("app.kubernetes.io/instance=orig"))
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            let site = sites.get_opt("orig").await.map_err(|e| e.to_string())?;
            (left == 0 && site.is_none())
                .then_some(())
                .ok_or_else(|| format!("{left} claims, site {}", site.is_some()))
        },
    )
    .await;
    let acked = load.acked();
    let acked_before: Vec<(String, Instant)> = load.acked_with_times();
    load.stop().await;
    println!(
        "orig deleted with its volumes in {:.1}s; {} writes acknowledged by then",
        deletion.elapsed().as_secs_f64(),
        acked.len()
    );
    let (reborn, took) = create_site(
        &client,
        &sites,
        "reborn",
        site_spec(&class, &backup, 1, Some(json!({"sourceSite": "orig"}))).await,
    )
    .await;
    let mut lost = missing_articles(&reborn.addr, &reborn.token, &acked).await;
    for slug in a.iter().chain(&b).chain(&c) {
        if status_of(&reborn, slug).await != 200 {
            lost.push(slug.clone());
        }
    }
    // Only what was acknowledged within the archive timeout before the deletion may be lost.
    let limit = deletion - Duration::from_secs(ARCHIVE_TIMEOUT as u64 + 2);
    let lost_early: Vec<&String> = lost
        .iter()
        .filter(|l| {
            let slug = l.split(':').next().unwrap_or(l);
            acked_before.iter().any(|(s, at)| s == slug && *at < limit)
        })
        .collect();
    println!(
        "restored from the deleted site's repository: reborn Ready in {:.1}s; {} of {} acknowledged articles lost, all within the last {ARCHIVE_TIMEOUT}s before the deletion at {deleted_at}",
        took.as_secs_f64(),
        lost.len(),
        acked.len() + 15
    );
    assert!(
        lost_early.is_empty(),
        "lost articles acknowledged more than {ARCHIVE_TIMEOUT}s before the deletion: {lost_early:?}"
    );
    let _ = (pitr.name, reborn.name);
}
