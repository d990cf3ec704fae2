//! Backups on the simulated nodes (docs/backup-and-restore.md): the objects `spec.backup`
//! makes (pgBackRest's configuration, the CronJobs, the backup Jobs' RBAC, what the database
//! pods add), schedule changes, the first backup once archiving works, a backup asked for by
//! annotation, the status and conditions from the Jobs' results and from the backup agent's
//! archive report, removal, and the refusal of invalid specs.
//!
//! kwok runs no container: the backup agent's report is written to the database pod's
//! annotation by the test, as the agent would, and a backup Job's result (its pod's
//! termination message) is written into the pod's status after kwok completed it. The real
//! pgBackRest, agent and Jobs run in `tests/backup_restore.rs` (make e2e).

mod common;

use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use common::site::{IMAGE, condition, site, wait_condition};
use common::{namespace_with_operator, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

fn backup_spec() -> Value {
    json!({
        "s3": {"endpoint": "s3.example.test:9443", "bucket": "site-backups", "uriStyle": "Path",
               "credentialsSecret": "s3-keys"},
        "archiveTimeoutSeconds": 30,
    })
}

async fn get<K>(api: &Api<K>, name: &str) -> Result<K, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get(name).await.map_err(|e| format!("{name}: {e}"))
}

/// Writes the backup agent's report on the database pod, as the agent does.
async fn report_archive(pods: &Api<Pod>, pod: &str, report: Value) {
    let patch =
        json!({"metadata": {"annotations": {"articlesite.io/archive": report.to_string()}}});
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate the database pod");
}

/// The pod of Job `job`, once kwok has run it to its end.
async fn finished_pod(pods: &Api<Pod>, job: &str) -> Pod {
    wait_for(&format!("pod of Job {job} finished"), TIMEOUT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|p| {
                matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .ok_or_else(|| "not finished".to_string())
    })
    .await
}

/// Writes `message` as the termination message of the backup container of `pod`, as the
/// container itself would have.
async fn set_result(pods: &Api<Pod>, pod: &Pod, message: Value) {
    let status = pod.status.clone().expect("status");
    let mut statuses = serde_json::to_value(status.container_statuses.unwrap_or_default()).unwrap();
    for c in statuses.as_array_mut().unwrap() {
        c["state"]["terminated"]["message"] = json!(message.to_string());
    }
    let patch = json!({"status": {"containerStatuses": statuses}});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .expect("write the termination message");
}

fn job_report(label: &str, kind: &str, stop: i64) -> Value {
    json!({"backup": {"label": label, "type": kind, "started": stop - 12, "finished": stop,
                      "databaseBytes": 31_457_280, "repositoryBytes": 4_194_304},
           "backups": 1, "firstRecoverable": stop})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_follow_the_spec_and_report_the_jobs_results() {
    let (client, ns, op, sites) = namespace_with_operator("backup", &[], &[]).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let name = "news";
    let spec = json!({"app": {"image": IMAGE, "replicas": 1},
                      "database": {"instances": 1}, "backup": backup_spec()});
    sites
        .create(&PostParams::default(), &site(name, spec))
        .await
        .expect("create site");

    // The credentials Secret is missing: Degraded says so, and the database starts anyway
    // (the references are optional).
    let s = wait_condition(
        &sites,
        name,
        "Degraded",
        "True",
        Some("BackupCredentialsNotFound"),
        TIMEOUT,
    )
    .await;
    assert!(condition(&s, "Degraded").unwrap().2.contains("s3-keys"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-keys"},
        "stringData": {"accessKeyId": "AKIATESTKEY0000", "secretAccessKey": "not-a-real-secret-0123456789"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &keys)
        .await
        .expect("keys");

    // The objects: two CronJobs, pgBackRest's configuration, the Jobs' RBAC, the pods' additions.
    let full = wait_for("CronJob news-backup-full", TIMEOUT, || {
        get(&cron_jobs, "news-backup-full")
    })
    .await;
    assert_eq!(full.spec.schedule, "0 1 * * 0");
    assert_eq!(full.spec.concurrency_policy.as_deref(), Some("Forbid"));
    let diff = get(&cron_jobs, "news-backup-diff").await.unwrap();
    assert_eq!(diff.spec.schedule, "0 1 * * 1-6");
    let job_pod = full
        .spec
        .job_template
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(job_pod.service_account_name.as_deref(), Some("news-backup"));
    let c = &job_pod.containers[0];
    assert_eq!(
        c.args.as_deref().unwrap(),
        ["backup", "--site", "news", "--type", "full"]
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.read_only_root_filesystem, sc.run_as_non_root),
        (Some(true), Some(true))
    );
    let config: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let conf =
        get(&config, "news-pgbackrest").await.unwrap().data.unwrap()["pgbackrest.conf"].clone();
    for line in [
        "repo1-s3-endpoint=s3.example.test",
        "repo1-storage-port=9443",
        "repo1-s3-bucket=site-backups",
        "repo1-s3-uri-style=path",
        &format!("repo1-path=/{}/news", ns.name),
    ] {
        assert!(conf.lines().any(|l| l == line), "{line} in {conf}");
    }
    let role = get(
        &Api::<Role>::namespaced(client.clone(), &ns.name),
        "news-backup",
    )
    .await
    .unwrap();
    let rules = role.rules.unwrap();
    assert_eq!(rules[1].resources.as_deref().unwrap(), ["pods/exec"]);
    assert_eq!(
        rules[1].resource_names.as_ref().unwrap()[0],
        "news-postgresql-0"
    );
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns.name);
    get(&bindings, "news-backup").await.unwrap();
    let sts = get(
        &Api::<StatefulSet>::namespaced(client.clone(), &ns.name),
        "news-postgresql",
    )
    .await
    .unwrap();
    let template = sts.spec.unwrap().template;
    let pod_spec = template.spec.unwrap();
    let names: Vec<_> = pod_spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["postgresql", "backup-agent"]);
    let env: Vec<_> = pod_spec
        .containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .collect();
    let key = env
        .iter()
        .find(|e| e.name == "PGBACKREST_REPO1_S3_KEY_SECRET")
        .unwrap();
    assert!(key.value.is_none(), "keys only by reference");
    assert_eq!(
        key.value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .optional,
        Some(true)
    );
    assert!(
        template
            .metadata
            .unwrap()
            .annotations
            .unwrap()
            .contains_key("articlesite.io/backup-config")
    );
    let policy = get(
        &Api::<NetworkPolicy>::namespaced(client.clone(), &ns.name),
        "news-postgresql",
    )
    .await
    .unwrap();
    let ports: Vec<i32> = policy
        .spec
        .unwrap()
        .egress
        .unwrap()
        .iter()
        .flat_map(|r| r.ports.iter().flatten())
        .filter_map(|p| match &p.port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => Some(*n),
            _ => None,
        })
        .collect();
    assert!(ports.contains(&9443), "egress to the S3 port: {ports:?}");
    // Nothing a Secret holds shows in any of them.
    for text in [
        serde_json::to_string(&full).unwrap(),
        conf.clone(),
        serde_json::to_string(&pod_spec.containers).unwrap(),
    ] {
        assert!(!text.contains("not-a-real-secret") && !text.contains("AKIATESTKEY"));
    }
    let s = wait_condition(
        &sites,
        name,
        "ContinuousArchiving",
        "Unknown",
        Some("ArchiveStatusUnknown"),
        TIMEOUT,
    )
    .await;
    assert_eq!(
        condition(&s, "LastBackupSucceeded").map(|c| c.1),
        Some("NoBackupYet".into())
    );
    println!(
        "objects: CronJobs full and diff, ConfigMap, Role (pods/exec by name), RoleBinding, agent container; archiving Unknown"
    );

    // A schedule change is applied; an empty differential schedule removes its CronJob.
    let patch =
        json!({"spec": {"backup": {"fullSchedule": "30 2 * * *", "differentialSchedule": ""}}});
    sites
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    wait_for("schedules applied", TIMEOUT, || async {
        let full = get(&cron_jobs, "news-backup-full").await?;
        let diff_gone = matches!(cron_jobs.get_opt("news-backup-diff").await, Ok(None));
        (full.spec.schedule == "30 2 * * *" && diff_gone)
            .then_some(())
            .ok_or_else(|| format!("full {:?}, diff gone {diff_gone}", full.spec.schedule))
    })
    .await;

    // The agent reports the first archived segment: archiving True, and the first full
    // backup starts at once.
    let db_pod = "news-postgresql-0";
    wait_for("database pod", TIMEOUT, || get(&pods, db_pod)).await;
    let archived_at = jiff::Timestamp::now().to_string();
    let archived_at = &archived_at[..19];
    report_archive(
        &pods,
        db_pod,
        json!({"primary": true, "stanza": "ok",
        "lastArchivedWal": "000000010000000000000002", "lastArchivedAt": format!("{archived_at}Z"),
        "pendingSegments": 0}),
    )
    .await;
    let s = wait_condition(
        &sites,
        name,
        "ContinuousArchiving",
        "True",
        Some("Archiving"),
        TIMEOUT,
    )
    .await;
    assert!(
        condition(&s, "ContinuousArchiving")
            .unwrap()
            .2
            .contains("000000010000000000000002")
    );
    let first = wait_for("first backup Job", TIMEOUT, || {
        get(&jobs, "news-backup-first")
    })
    .await;
    assert_eq!(first.labels()["articlesite.io/backup-type"], "full");
    let pod = finished_pod(&pods, "news-backup-first").await;
    let stop = jiff::Timestamp::now().as_second();
    set_result(&pods, &pod, job_report("20261202-100000F", "full", stop)).await;
    let s = wait_condition(
        &sites,
        name,
        "LastBackupSucceeded",
        "True",
        Some("BackupSucceeded"),
        TIMEOUT,
    )
    .await;
    let b = s.status.as_ref().unwrap().backup.as_ref().unwrap();
    let last = b.last_backup.as_ref().unwrap();
    assert_eq!(
        (last.label.as_str(), last.kind.as_str()),
        ("20261202-100000F", "full")
    );
    assert_eq!(last.repository_bytes, 4_194_304);
    assert_eq!(b.backups, 1);
    assert_eq!(b.repository, format!("s3://site-backups/{}/news", ns.name));
    assert!(b.first_recoverable_point.is_some() && b.last_recoverable_point.is_some());
    assert_eq!(
        b.last_archived_wal.as_deref(),
        Some("000000010000000000000002")
    );
    println!(
        "first backup: Job news-backup-first, status.backup.lastBackup {}",
        last.label
    );

    // The repository refuses the keys: archiving False with the reason, the site Degraded,
    // its database untouched.
    let failed_at = jiff::Timestamp::now().to_string();
    report_archive(&pods, db_pod, json!({"primary": true, "stanza": "ok",
        "lastArchivedWal": "000000010000000000000002", "lastArchivedAt": format!("{archived_at}Z"),
        "lastFailedWal": "000000010000000000000003", "lastFailedAt": format!("{}Z", &failed_at[..19]),
        "pendingSegments": 2,
        "error": "[039]: HTTP request failed with 403 (Forbidden): <Code>InvalidAccessKeyId</Code>"})).await;
    let s = wait_condition(
        &sites,
        name,
        "ContinuousArchiving",
        "False",
        Some("ArchiveCredentialsRejected"),
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        condition(&s, "Degraded").map(|c| c.1),
        Some("ArchiveCredentialsRejected".into())
    );
    let (_, page) = op.get("/metrics").await.expect("metrics");
    let site_label = "site=\"news\"";
    assert_eq!(
        common::http::metric_in(
            &page,
            "articlesite_operator_backup_archive_failing",
            site_label
        ),
        Some(1.0),
        "the archive failure in the metrics"
    );
    assert_eq!(
        common::http::metric_in(
            &page,
            "articlesite_operator_backup_last_success_timestamp_seconds",
            site_label
        ),
        Some(stop as f64)
    );
    println!(
        "archiving failure: {}",
        condition(&s, "ContinuousArchiving").unwrap().2
    );

    // A backup on request: a Job of that type, and the annotation removed.
    let ask = |value: &str| json!({"metadata": {"annotations": {"articlesite.io/backup": value}}});
    sites
        .patch(name, &PatchParams::default(), &Patch::Merge(&ask("diff")))
        .await
        .unwrap();
    let asked = wait_for("requested backup Job", TIMEOUT, || async {
        let list = jobs
            .list(&ListParams::default().labels("articlesite.io/backup-type=diff"))
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .next()
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    wait_for("annotation cleared", TIMEOUT, || async {
        let s = get(&sites, name).await?;
        (!s.annotations().contains_key("articlesite.io/backup"))
            .then_some(())
            .ok_or_else(|| "still there".to_string())
    })
    .await;
    println!("requested backup: Job {}", asked.name_any());
    // Not a backup type: refused, with an Event, and removed.
    sites
        .patch(name, &PatchParams::default(), &Patch::Merge(&ask("weekly")))
        .await
        .unwrap();
    common::site::wait_warning_event(&client, &ns.name, "BackupRequestRefused", TIMEOUT).await;

    // A failed backup Job (as a CronJob would start it; kwok fails its pod with pgBackRest's
    // message): LastBackupSucceeded False with the message.
    let failing: Job = serde_json::from_value(json!({
        "metadata": {"name": "news-backup-full-29000000", "labels": {
            "app.kubernetes.io/name": "pgbackrest", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "backup", "app.kubernetes.io/managed-by": "articlesite-operator"}},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": {"articlesite.io/simulate": "job-fails",
                "articlesite.io/simulate-message": json!({"error": "pgbackrest backup failed in news-postgresql-0: ERROR: [082]: WAL segment 000000010000000000000004 was not archived before the 60000ms timeout"}).to_string()},
                "labels": {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "backup",
                    "app.kubernetes.io/managed-by": "articlesite-operator"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "backup", "image": "articlesite/articlesite-operator:0.1.0"}]}}},
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &failing)
        .await
        .expect("failing job");
    let s = wait_condition(
        &sites,
        name,
        "LastBackupSucceeded",
        "False",
        Some("BackupFailed"),
        Duration::from_secs(90),
    )
    .await;
    let failure = s
        .status
        .as_ref()
        .unwrap()
        .backup
        .as_ref()
        .unwrap()
        .last_failure
        .clone()
        .unwrap();
    assert_eq!(failure.job, "news-backup-full-29000000");
    assert!(failure.message.contains("[082]"), "{}", failure.message);
    common::site::wait_warning_event(&client, &ns.name, "BackupFailed", TIMEOUT).await;
    println!("failed backup: {}", failure.message);

    // pgBackRest dropped segments (the queue was full): a gap no restore can cross, reported,
    // and closed by a full backup the operator starts at once.
    let now = jiff::Timestamp::now().to_string();
    let dropped_at = format!("{}Z", &now[..19]);
    report_archive(
        &pods,
        db_pod,
        json!({"primary": true, "stanza": "ok",
            "lastArchivedWal": "000000010000000000000012", "lastArchivedAt": dropped_at,
            "droppedWal": "000000010000000000000011", "droppedAt": dropped_at, "pendingSegments": 0}),
    )
    .await;
    let s = wait_condition(
        &sites,
        name,
        "ContinuousArchiving",
        "False",
        Some("ArchiveGap"),
        TIMEOUT,
    )
    .await;
    assert!(
        condition(&s, "ContinuousArchiving")
            .unwrap()
            .2
            .contains("000000010000000000000011")
    );
    let gap_job = format!(
        "news-backup-gap-{}",
        dropped_at.parse::<jiff::Timestamp>().unwrap().as_second()
    );
    wait_for(&format!("Job {gap_job}"), TIMEOUT, || get(&jobs, &gap_job)).await;
    let pod = finished_pod(&pods, &gap_job).await;
    let after = jiff::Timestamp::now().as_second() + 13;
    set_result(&pods, &pod, job_report("20261202-110000F", "full", after)).await;
    wait_condition(
        &sites,
        name,
        "ContinuousArchiving",
        "True",
        Some("Archiving"),
        TIMEOUT,
    )
    .await;
    println!("gap: ArchiveGap, Job {gap_job} closed it");

    // Backups removed: the CronJob and the Jobs' grant go, the status forgets the repository.
    let patch = json!({"spec": {"backup": null}});
    sites
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("backups removed", TIMEOUT, || async {
        let cron = cron_jobs
            .get_opt("news-backup-full")
            .await
            .map_err(|e| e.to_string())?;
        let binding = bindings
            .get_opt("news-backup")
            .await
            .map_err(|e| e.to_string())?;
        let s = get(&sites, name).await?;
        let status = s.status.as_ref().and_then(|st| st.backup.as_ref());
        let cond = condition(&s, "ContinuousArchiving");
        (cron.is_none() && binding.is_none() && status.is_none() && cond.is_none())
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "cron {} binding {} status {} condition {:?}",
                    cron.is_some(),
                    binding.is_some(),
                    status.is_some(),
                    cond
                )
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_backup_specs_are_refused() {
    let (client, ns, _op, sites) = namespace_with_operator("backup-invalid", &[], &[]).await;
    let ar = ApiResource::erase::<ArticleSite>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let with = |backup: Value, database: Value| json!({"app": {"image": IMAGE}, "backup": backup, "database": database});
    let b = |f: &dyn Fn(&mut Value)| {
        let mut v = backup_spec();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "cron",
            with(b(&|v| v["fullSchedule"] = json!("every sunday")), json!({})),
            "spec.backup.fullSchedule must be a cron schedule",
        ),
        (
            "cron-fields",
            with(
                b(&|v| v["differentialSchedule"] = json!("0 1 * *")),
                json!({}),
            ),
            "spec.backup.differentialSchedule must be a cron schedule",
        ),
        (
            "retention",
            with(b(&|v| v["retentionFull"] = json!(0)), json!({})),
            "spec.backup.retentionFull",
        ),
        (
            "scheme",
            with(
                b(&|v| v["s3"]["endpoint"] = json!("https://s3.example.test")),
                json!({}),
            ),
            "spec.backup.s3.endpoint must be a host name",
        ),
        (
            "bucket",
            with(b(&|v| v["s3"]["bucket"] = json!("Bad_Bucket")), json!({})),
            "spec.backup.s3.bucket must be an S3 bucket name",
        ),
        (
            "path",
            with(b(&|v| v["path"] = json!("/a/../b")), json!({})),
            "spec.backup.path must be an absolute path",
        ),
        (
            "queue",
            with(b(&|v| v["archiveQueueMax"] = json!("1Mi")), json!({})),
            "spec.backup.archiveQueueMax must be a quantity of at least 64Mi",
        ),
        (
            "time-and-set",
            with(
                backup_spec(),
                json!({"bootstrap": {"recovery": {"sourceSite": "old", "targetTime": "2026-12-01T10:00:00Z", "backupSet": "20261201-010000F"}}}),
            ),
            "targetTime or backupSet, not both",
        ),
        (
            "no-source",
            with(
                backup_spec(),
                json!({"bootstrap": {"recovery": {"targetTime": "2026-12-01T10:00:00Z"}}}),
            ),
            "exactly one of sourceSite",
        ),
        (
            "time-format",
            with(
                backup_spec(),
                json!({"bootstrap": {"recovery": {"sourceSite": "old", "targetTime": "yesterday at noon"}}}),
            ),
            "targetTime must be an RFC 3339 time",
        ),
        (
            "no-repository",
            json!({"app": {"image": IMAGE}, "database": {"bootstrap": {"recovery": {"sourceSite": "old"}}}}),
            "restores from the bucket of spec.backup",
        ),
    ];
    let mut failures = Vec::new();
    for (case, spec, expected) in &cases {
        let obj = DynamicObject::new(&format!("bad-{case}"), &ar).data(json!({"spec": spec}));
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(expected) => {}
            Err(e) => failures.push(format!("{case}: {e}, expected {expected:?}")),
        }
    }
    // Restoring into an existing site is refused.
    sites
        .create(
            &PostParams::default(),
            &site("live", with(backup_spec(), json!({"instances": 1}))),
        )
        .await
        .expect("valid site");
    let patch = json!({"spec": {"database": {"bootstrap": {"recovery": {"sourceSite": "old"}}}}});
    match sites
        .patch("live", &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(kube::Error::Api(s))
            if s.code == 422
                && s.message.contains(
                    "spec.database.bootstrap can only be set when the site is created",
                ) => {}
        other => failures.push(format!("restore into a live site: {other:?}")),
    }
    assert!(
        failures.is_empty(),
        "not refused as expected:\n{}",
        failures.join("\n")
    );
    println!(
        "{} invalid specs refused, restore into a live site refused",
        cases.len()
    );

    // A target in the future passes the schema (it has no clock) and is refused by the
    // operator: Degraded, and no database is created.
    let future = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24)).to_string();
    let spec = with(
        backup_spec(),
        json!({"instances": 1, "bootstrap": {"recovery": {"sourceSite": "live", "targetTime": format!("{}Z", &future[..19])}}}),
    );
    sites
        .create(&PostParams::default(), &site("later", spec))
        .await
        .expect("accepted by the schema");
    // (The missing keys Secret is reported too; the first problem names the condition.)
    wait_for("later: Degraded for the future target", TIMEOUT, || async {
        let s = get(&sites, "later").await?;
        match condition(&s, "Degraded") {
            Some((st, _, m)) if st == "True" && m.contains("is in the future") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        sts.get_opt("later-postgresql").await.unwrap().is_none(),
        "no database for a future target"
    );
}
