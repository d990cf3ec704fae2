//! Backups with pgBackRest (docs/backup-and-restore.md): the ConfigMap with `pgbackrest.conf`,
//! what the database pods add (archiving in Patroni's configuration, the repository's
//! credentials by reference, the `backup-agent` container), and the backup Jobs: two CronJobs
//! and on-demand Jobs, with a ServiceAccount whose Role may only exec into this site's
//! database pods.
//!
//! Why the Jobs exec into the primary instead of running pgBackRest themselves: a backup
//! reads the data directory, which only the primary's pod has (its volume is ReadWriteOnce);
//! pgBackRest's alternative, its TLS server in every database pod, would need a certificate
//! authority per site. The Job runs `articlesite-operator backup` (`crate::backup_job`).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EnvVar, PodSpec, PodTemplateSpec,
    SecretVolumeSource, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde_json::json;

use super::deployment::{empty_dir, mount};
use super::patroni_config::{PGDATA, SOCKET_DIR, max_slot_wal_keep_size};
use super::security::{self, restricted_container_security};
use super::statefulset::{DATA_VOLUME, field_env, secret_env, value_env};
use super::{Component, DB_USERNAME_KEY, Names, fixed_requirements, labels, object_meta};
use crate::crd::{ArticleSite, BackupSpec, RecoverySpec};

/// pgBackRest's stanza: one per repository path, so the name can be the same for every site.
pub const STANZA: &str = "db";
pub const CONFIG_KEY: &str = "pgbackrest.conf";
/// pgBackRest's default configuration directory: the ConfigMap is mounted here.
pub const CONFIG_DIR: &str = "/etc/pgbackrest";
const CA_DIR: &str = "/etc/pgbackrest/ca";
const CA_FILE: &str = "/etc/pgbackrest/ca/ca.crt";
/// The asynchronous archive queue, on the data volume (it must survive a restart).
pub const SPOOL_PATH: &str = "/var/lib/postgresql/pgbackrest-spool";
/// Keys of `spec.backup.s3.credentialsSecret`.
pub const ACCESS_KEY_ID_KEY: &str = "accessKeyId";
pub const SECRET_ACCESS_KEY_KEY: &str = "secretAccessKey";
/// The agent's report on its pod (`crate::archive`).
pub const ARCHIVE_ANNOTATION: &str = "articlesite.io/archive";
/// Restores a backup at bootstrap; part of the PostgreSQL image.
const RESTORE_COMMAND: &str = "/usr/local/bin/patroni-restore";
/// Patroni's replica method that restores a new standby from the repository.
const REPLICA_COMMAND: &str = "/usr/local/bin/pgbackrest-replica";
const AGENT_COMMAND: &str = "/usr/local/bin/backup-agent";
pub const AGENT_CONTAINER: &str = "backup-agent";
/// The Job's container; its termination message carries the result (`crate::backup_job`).
pub const JOB_CONTAINER: &str = "backup";
/// Label of a backup Job: what it backs up (`full`, `diff`, `incr`).
pub const BACKUP_TYPE_LABEL: &str = "articlesite.io/backup-type";

/// Kinds of backup, as pgBackRest names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::Display, strum::EnumString)]
#[strum(serialize_all = "lowercase")]
pub enum BackupType {
    Full,
    Diff,
    Incr,
}

/// The repository path of a site: `spec.backup.path`, else `/<namespace>/<name>`.
pub fn repository_path(site: &ArticleSite, backup: &BackupSpec) -> String {
    backup.path.clone().unwrap_or_else(|| {
        format!(
            "/{}/{}",
            site.namespace().unwrap_or_default(),
            site.name_any()
        )
    })
}

/// `s3://bucket/path`, for the status.
pub fn repository_url(site: &ArticleSite, backup: &BackupSpec) -> String {
    format!("s3://{}{}", backup.s3.bucket, repository_path(site, backup))
}

/// The path a restore reads from.
pub fn recovery_path(site: &ArticleSite, recovery: &RecoverySpec) -> String {
    match (&recovery.path, &recovery.source_site) {
        (Some(p), _) => p.clone(),
        (None, Some(source)) => format!(
            "/{}/{source}",
            recovery
                .source_namespace
                .clone()
                .unwrap_or_else(|| site.namespace().unwrap_or_default())
        ),
        // Refused by the schema (exactly one of the two).
        (None, None) => String::new(),
    }
}

/// Bytes the archive queue may hold: `archiveQueueMax`, else a quarter of the volume.
pub fn archive_queue_max(backup: &BackupSpec, claim_size: &str) -> u64 {
    let spec = backup
        .archive_queue_max
        .as_deref()
        .and_then(crate::quantity::whole);
    let quarter = || {
        let mb: u64 = max_slot_wal_keep_size(claim_size)
            .trim_end_matches("MB")
            .parse()
            .unwrap_or(256);
        mb << 20
    };
    spec.unwrap_or_else(quarter)
}

/// `pgbackrest.conf`: the repository and the database; no secret (the keys come from the
/// environment, `PGBACKREST_REPO1_S3_KEY` and `PGBACKREST_REPO1_S3_KEY_SECRET`).
pub fn config_file(site: &ArticleSite, backup: &BackupSpec, claim_size: &str) -> String {
    let s3 = &backup.s3;
    let (host, port) = match s3.endpoint.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s3.endpoint.as_str(), None),
    };
    let mut global = vec![
        ("repo1-type", "s3".to_string()),
        ("repo1-s3-endpoint", host.to_string()),
        ("repo1-s3-bucket", s3.bucket.clone()),
        ("repo1-s3-region", s3.region.clone()),
        ("repo1-s3-uri-style", s3.uri_style.pgbackrest().to_string()),
        ("repo1-path", repository_path(site, backup)),
        ("repo1-retention-full", backup.retention_full.to_string()),
        ("repo1-retention-full-type", "count".into()),
    ];
    if let Some(port) = port {
        global.push(("repo1-storage-port", port.to_string()));
    }
    if s3.ca_secret.is_some() {
        global.push(("repo1-storage-ca-file", CA_FILE.to_string()));
    }
    global.extend([
        // PostgreSQL's archive_command returns at once; a background process pushes.
        ("archive-async", "y".to_string()),
        ("spool-path", SPOOL_PATH.to_string()),
        (
            "archive-push-queue-max",
            archive_queue_max(backup, claim_size).to_string(),
        ),
        // A WAL segment that cannot be pushed in this time fails the archive_command, which
        // PostgreSQL retries; short enough that the agent reports a broken repository soon.
        ("archive-timeout", "60".into()),
        // A request to an unreachable repository fails after this; pgBackRest retries some
        // up to eight times, so a broken repository shows within minutes, not an hour.
        ("io-timeout", "20".into()),
        ("process-max", "2".into()),
        ("compress-type", "gz".into()),
        ("compress-level", "3".into()),
        ("start-fast", "y".into()),
        ("delta", "y".into()),
        // The root filesystem is read-only: no log files, output on the console.
        ("log-level-console", "info".into()),
        ("log-level-stderr", "warn".into()),
        ("log-level-file", "off".into()),
        ("lock-path", "/tmp/pgbackrest".into()),
    ]);
    let db = [
        ("pg1-path", PGDATA.to_string()),
        ("pg1-socket-path", SOCKET_DIR.to_string()),
        ("pg1-port", super::POSTGRES_PORT.to_string()),
        // The bootstrap superuser is the site's user (there is no role "postgres").
        ("pg1-user", site.spec.database.user.clone()),
    ];
    let mut out = String::from("# Written by articlesite-operator from spec.backup.\n[global]\n");
    for (k, v) in &global {
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push_str(&format!("\n[{STANZA}]\n"));
    for (k, v) in &db {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

/// The ConfigMap `<site>-pgbackrest`.
pub fn config_map(site: &ArticleSite, backup: &BackupSpec, claim_size: &str) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(
            site,
            Names::backup_config(&site.name_any()),
            Component::Database,
        ),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_string(),
            config_file(site, backup, claim_size),
        )])),
        ..Default::default()
    }
}

/// What `patroni.yml` adds for backups: archiving, a restore_command for standbys that fall
/// behind the primary's WAL, and pgBackRest as the first way to build a new standby (it reads
/// the repository, not the primary; Patroni falls back to `pg_basebackup` while the repository
/// has no backup).
pub fn patroni_postgresql(backup: &BackupSpec) -> serde_json::Value {
    json!({
        "parameters": {
            "archive_mode": "on",
            "archive_command": format!("pgbackrest --stanza={STANZA} archive-push \"%p\""),
            "archive_timeout": format!("{}s", backup.archive_timeout_seconds),
        },
        "recovery_conf": {
            "restore_command": format!("pgbackrest --stanza={STANZA} archive-get %f \"%p\""),
        },
        "create_replica_methods": ["pgbackrest", "basebackup"],
        "pgbackrest": {
            "command": REPLICA_COMMAND,
            "keep_data": true,
            "no_params": true,
        },
    })
}

/// Patroni's custom bootstrap for a restore: `patroni-restore` fetches the backup (the files),
/// then PostgreSQL replays the source's WAL up to the target and promotes; only then does
/// Patroni declare the cluster initialized.
pub fn patroni_bootstrap(site: &ArticleSite, recovery: &RecoverySpec) -> serde_json::Value {
    let source = recovery_path(site, recovery);
    let mut recovery_conf = json!({
        "restore_command": format!(
            "pgbackrest --stanza={STANZA} --repo1-path={source} archive-get %f \"%p\""
        ),
        "recovery_target_timeline": "latest",
    });
    if let Some(time) = &recovery.target_time {
        recovery_conf["recovery_target_time"] = json!(time);
        recovery_conf["recovery_target_action"] = json!("promote");
    } else if recovery.backup_set.is_some() {
        recovery_conf["recovery_target"] = json!("immediate");
        recovery_conf["recovery_target_action"] = json!("promote");
    }
    json!({
        "method": "pgbackrest_restore",
        "pgbackrest_restore": {
            "command": RESTORE_COMMAND,
            "no_params": true,
            "keep_existing_recovery_conf": false,
            "recovery_conf": recovery_conf,
        },
    })
}

/// The repository's keys, by reference only, and optional: a missing Secret must never keep
/// the database from starting (archiving fails, and the site reports it, instead).
pub fn credentials_env(backup: &BackupSpec) -> Vec<EnvVar> {
    let secret = &backup.s3.credentials_secret;
    let optional = |mut e: EnvVar| {
        if let Some(r) = e
            .value_from
            .as_mut()
            .and_then(|v| v.secret_key_ref.as_mut())
        {
            r.optional = Some(true);
        }
        e
    };
    vec![
        optional(secret_env(
            "PGBACKREST_REPO1_S3_KEY",
            secret,
            ACCESS_KEY_ID_KEY,
        )),
        optional(secret_env(
            "PGBACKREST_REPO1_S3_KEY_SECRET",
            secret,
            SECRET_ACCESS_KEY_KEY,
        )),
    ]
}

/// What `patroni-restore` restores (read at bootstrap only).
pub fn restore_env(site: &ArticleSite, recovery: &RecoverySpec) -> Vec<EnvVar> {
    let mut env = vec![value_env(
        "ARTICLESITE_RESTORE_PATH",
        &recovery_path(site, recovery),
    )];
    if let Some(t) = &recovery.target_time {
        env.push(value_env("ARTICLESITE_RESTORE_TIME", t));
    }
    if let Some(s) = &recovery.backup_set {
        env.push(value_env("ARTICLESITE_RESTORE_SET", s));
    }
    env
}

/// Mounts of pgBackRest's configuration (and the CA), in the database and agent containers.
pub fn config_mounts(backup: &BackupSpec) -> Vec<VolumeMount> {
    let mut mounts = vec![VolumeMount {
        read_only: Some(true),
        ..mount("pgbackrest", CONFIG_DIR)
    }];
    if backup.s3.ca_secret.is_some() {
        mounts.push(VolumeMount {
            read_only: Some(true),
            ..mount("pgbackrest-ca", CA_DIR)
        });
    }
    mounts
}

pub fn config_volumes(site: &ArticleSite, backup: &BackupSpec) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: "pgbackrest".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: Names::backup_config(&site.name_any()),
            default_mode: Some(0o444),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if let Some(ca) = &backup.s3.ca_secret {
        volumes.push(Volume {
            name: "pgbackrest-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                default_mode: Some(0o444),
                optional: Some(true),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.crt".into(),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
    }
    volumes
}

/// The agent beside PostgreSQL: on the primary it creates the stanza, and on every instance it
/// publishes `pg_stat_archiver` and pgBackRest's last archive error in its pod's
/// `articlesite.io/archive` annotation (with the token Patroni uses; pods `patch` is already
/// in the database Role). The operator reads the annotation, never the pod.
pub fn agent_container(site: &ArticleSite, backup: &BackupSpec) -> Container {
    let db = &site.spec.database;
    let mut env = credentials_env(backup);
    env.extend([
        value_env("PGHOST", SOCKET_DIR),
        secret_env(
            "PGUSER",
            &Names::database_credentials(&site.name_any()),
            DB_USERNAME_KEY,
        ),
        value_env("PGDATABASE", "postgres"),
        value_env("PGDATA", PGDATA),
        value_env("ARTICLESITE_STANZA", STANZA),
        value_env("ARTICLESITE_SPOOL", SPOOL_PATH),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ]);
    let mut mounts = vec![
        // The spool's error files, and the socket.
        VolumeMount {
            read_only: Some(true),
            ..mount(DATA_VOLUME, "/var/lib/postgresql")
        },
        mount("run", SOCKET_DIR),
        // pgBackRest's lock directory is shared with the archive-push of the database container.
        mount("tmp", "/tmp"),
    ];
    mounts.extend(config_mounts(backup));
    Container {
        name: AGENT_CONTAINER.into(),
        image: Some(db.image.clone()),
        image_pull_policy: Some(db.image_pull_policy.as_str().into()),
        command: Some(vec![AGENT_COMMAND.into()]),
        env: Some(env),
        resources: Some(fixed_requirements(
            &[("cpu", "10m"), ("memory", "32Mi")],
            &[("memory", "128Mi")],
        )),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// A hash of everything backups change in the database pods, for their template: a change
/// of the repository or of archiving restarts the instances (replicas first, the primary last)
/// so that PostgreSQL and the agent read the new files.
pub fn config_hash(site: &ArticleSite, backup: &BackupSpec, claim_size: &str) -> String {
    crate::diff::desired_hash(&json!({
        "config": config_file(site, backup, claim_size),
        "patroni": patroni_postgresql(backup),
    }))
}

/// The ServiceAccount of the backup Jobs; its token is mounted by the Job's pods only.
pub fn service_account(site: &ArticleSite) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(site, Names::backup(&site.name_any()), Component::Backup),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// What a backup Job may do: find the primary among this site's pods (`list` with a label
/// selector; `get` to re-read it) and exec into the database pods by name (`pods/exec`
/// `create`, and `get` for the websocket upgrade). Nothing else: no Secrets, no writes.
pub fn role(site: &ArticleSite) -> Role {
    let name = site.name_any();
    let pods: Vec<String> = (0..9)
        .map(|i| format!("{}-{i}", Names::database(&name)))
        .collect();
    Role {
        metadata: object_meta(site, Names::backup(&name), Component::Backup),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                verbs: vec!["get".into(), "list".into()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods/exec".into()]),
                resource_names: Some(pods),
                verbs: vec!["create".into(), "get".into()],
                ..Default::default()
            },
        ]),
    }
}

pub fn role_binding(site: &ArticleSite) -> RoleBinding {
    super::rbac::binding(site, Names::backup(&site.name_any()), Component::Backup)
}

/// The pod template of a backup Job: `articlesite-operator backup` from the operator's image.
fn job_spec(site: &ArticleSite, image: &str, kind: BackupType) -> JobSpec {
    let name = site.name_any();
    let mut pod_labels = labels(site, Component::Backup);
    pod_labels.insert(BACKUP_TYPE_LABEL.into(), kind.to_string());
    JobSpec {
        // pgBackRest resumes nothing across attempts, but a second attempt after a failover
        // finds the new primary.
        backoff_limit: Some(2),
        active_deadline_seconds: Some(6 * 3600),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(pod_labels),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                service_account_name: Some(Names::backup(&name)),
                automount_service_account_token: Some(true),
                enable_service_links: Some(false),
                security_context: Some(security::job_pod_security()),
                node_selector: super::placement::node_selector(site),
                tolerations: Some(super::placement::tolerations(site)),
                containers: vec![Container {
                    name: JOB_CONTAINER.into(),
                    image: Some(image.into()),
                    image_pull_policy: Some(site.spec.app.image_pull_policy.as_str().into()),
                    args: Some(vec![
                        "backup".into(),
                        "--site".into(),
                        name.clone(),
                        "--type".into(),
                        kind.to_string(),
                    ]),
                    env: Some(vec![field_env("POD_NAMESPACE", "metadata.namespace")]),
                    resources: Some(fixed_requirements(
                        &[("cpu", "10m"), ("memory", "32Mi")],
                        &[("memory", "64Mi")],
                    )),
                    termination_message_policy: Some("File".into()),
                    security_context: Some(restricted_container_security()),
                    volume_mounts: Some(vec![mount("tmp", "/tmp")]),
                    ..Default::default()
                }],
                volumes: Some(vec![empty_dir("tmp", "16Mi")]),
                ..Default::default()
            }),
        },
        ..Default::default()
    }
}

/// CronJob names: `<site>-backup-full` and `<site>-backup-diff` (at most 52 characters, the
/// CronJob limit, for a 40-character site name).
pub fn cron_job_name(site: &str, kind: BackupType) -> String {
    format!("{}-{kind}", Names::backup(site))
}

/// The scheduled backups: a full one, and a differential one unless its schedule is empty.
pub fn cron_jobs(site: &ArticleSite, backup: &BackupSpec, image: &str) -> Vec<CronJob> {
    let name = site.name_any();
    let mut schedules = vec![(BackupType::Full, backup.full_schedule.clone())];
    if !backup.differential_schedule.is_empty() {
        schedules.push((BackupType::Diff, backup.differential_schedule.clone()));
    }
    schedules
        .into_iter()
        .map(|(kind, schedule)| CronJob {
            metadata: object_meta(site, cron_job_name(&name, kind), Component::Backup),
            spec: CronJobSpec {
                schedule,
                time_zone: backup.time_zone.clone(),
                // pgBackRest holds a lock per stanza: a second backup would only fail.
                concurrency_policy: Some("Forbid".into()),
                starting_deadline_seconds: Some(3600),
                successful_jobs_history_limit: Some(3),
                failed_jobs_history_limit: Some(3),
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some({
                            let mut l = labels(site, Component::Backup);
                            l.insert(BACKUP_TYPE_LABEL.into(), kind.to_string());
                            l
                        }),
                        ..Default::default()
                    }),
                    spec: Some(job_spec(site, image, kind)),
                },
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

/// A backup Job outside the schedules: the first full backup once archiving works, or one
/// asked for with the `articlesite.io/backup` annotation.
pub fn job(site: &ArticleSite, name: String, image: &str, kind: BackupType) -> Job {
    let mut metadata = object_meta(site, name, Component::Backup);
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(BACKUP_TYPE_LABEL.into(), kind.to_string());
    Job {
        metadata,
        spec: Some(JobSpec {
            // The CronJobs' history limits keep theirs; these go a week after they finish
            // (the status keeps the last result).
            ttl_seconds_after_finished: Some(7 * 24 * 3600),
            ..job_spec(site, image, kind)
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    fn backup() -> BackupSpec {
        serde_json::from_value(json!({
            "s3": {"endpoint": "10.88.0.1:9443", "bucket": "backups", "uriStyle": "Path",
                   "credentialsSecret": "s3-keys", "caSecret": {"name": "s3-ca"}},
        }))
        .unwrap()
    }

    #[test]
    fn config_names_the_repository_and_no_secret() {
        let s = site("news");
        let b = backup();
        let conf = config_file(&s, &b, "1Gi");
        for line in [
            "repo1-type=s3",
            "repo1-s3-endpoint=10.88.0.1",
            "repo1-storage-port=9443",
            "repo1-s3-bucket=backups",
            "repo1-s3-region=us-east-1",
            "repo1-s3-uri-style=path",
            "repo1-path=/news-ns/news",
            "repo1-retention-full=2",
            "repo1-storage-ca-file=/etc/pgbackrest/ca/ca.crt",
            "archive-async=y",
            "archive-push-queue-max=268435456",
            "log-level-file=off",
            "[db]",
            "pg1-path=/var/lib/postgresql/pgdata",
            "pg1-user=articles",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} in\n{conf}");
        }
        assert!(!conf.contains("s3-key"), "keys only from the environment");
        let env = credentials_env(&b);
        assert!(env.iter().all(|e| e.value.is_none()));
        assert_eq!(repository_url(&s, &b), "s3://backups/news-ns/news");
    }

    #[test]
    fn cron_jobs_follow_the_schedules() {
        let s = site("news");
        let mut b = backup();
        let jobs = cron_jobs(&s, &b, "articlesite/articlesite-operator:0.1.0");
        let names: Vec<_> = jobs.iter().map(|j| j.name_any()).collect();
        assert_eq!(names, ["news-backup-full", "news-backup-diff"]);
        let spec = &jobs[0].spec;
        assert_eq!(spec.schedule, "0 1 * * 0");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let pod = spec
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("news-backup"));
        assert_eq!(
            pod.containers[0].args.as_deref().unwrap(),
            ["backup", "--site", "news", "--type", "full"]
        );
        assert!(
            pod.containers[0]
                .env
                .iter()
                .flatten()
                .all(|e| e.value_from.is_some())
        );
        b.differential_schedule = String::new();
        assert_eq!(cron_jobs(&s, &b, "x").len(), 1);
        let long = "a".repeat(40);
        assert_eq!(cron_job_name(&long, BackupType::Diff).len(), 52);
    }

    #[test]
    fn the_role_only_execs_into_this_sites_database_pods() {
        let r = role(&site("news"));
        let rules = r.rules.unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].verbs, ["get", "list"]);
        let names = rules[1].resource_names.as_ref().unwrap();
        assert_eq!(names.first().map(String::as_str), Some("news-postgresql-0"));
        assert_eq!(names.len(), 9);
        assert_eq!(rules[1].resources.as_deref().unwrap(), ["pods/exec"]);
    }

    #[test]
    fn restore_reads_the_source_and_stops_at_the_target() {
        let s = site("copy");
        let recovery: RecoverySpec = serde_json::from_value(json!({
            "sourceSite": "news", "targetTime": "2026-12-01T10:00:00Z"
        }))
        .unwrap();
        let b = patroni_bootstrap(&s, &recovery);
        let conf = &b["pgbackrest_restore"]["recovery_conf"];
        assert_eq!(
            conf["restore_command"],
            "pgbackrest --stanza=db --repo1-path=/news-ns/news archive-get %f \"%p\""
        );
        assert_eq!(conf["recovery_target_time"], "2026-12-01T10:00:00Z");
        assert_eq!(conf["recovery_target_action"], "promote");
        assert_eq!(b["method"], "pgbackrest_restore");
        let latest: RecoverySpec = serde_json::from_value(json!({"path": "/old/news"})).unwrap();
        let conf = &patroni_bootstrap(&s, &latest)["pgbackrest_restore"]["recovery_conf"];
        assert!(conf.get("recovery_target_time").is_none());
        assert!(conf.get("recovery_target_action").is_none());
    }
}
