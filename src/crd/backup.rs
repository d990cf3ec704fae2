//! `spec.backup` (continuous archiving and scheduled backups with pgBackRest to S3-compatible
//! object storage), `spec.database.bootstrap` (a new site restored from a repository) and
//! `status.backup`. What each field does to the running site: docs/backup-and-restore.md.

use kube::KubeSchema;
#[allow(unused_imports)] // used inside the KubeSchema attributes
use kube::core::Rule;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A cron schedule as the CronJob controller reads it: five fields (numbers, `*`, ranges,
/// steps, lists, or three-letter names) or a macro such as `@daily`. RE2 without backslashes.
const CRON_RULE: &str = "self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|([0-9*,/-]+|[A-Za-z]{3}(-[A-Za-z]{3})?)( +([0-9*,/-]+|[A-Za-z]{3}(-[A-Za-z]{3})?)){4})$')";

/// An RFC 3339 time with an explicit offset (`2026-12-01T10:00:00Z`).
const RFC3339_RULE: &str = "self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')";

/// A path inside the bucket: absolute, no `..`, no trailing slash.
const REPOSITORY_PATH_RULE: &str =
    "self.matches('^(/[A-Za-z0-9._-]+)+$') && !self.split('/').exists(p, p == '..' || p == '.')";

/// Continuous WAL archiving from the primary, full and differential backups on schedules, and
/// their retention, all in one pgBackRest repository on S3-compatible object storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The bucket that holds the repository.
    pub s3: S3Repository,

    /// The repository's path inside the bucket. Defaults to `/<namespace>/<site name>`; two
    /// live sites must never share one (pgBackRest refuses a second database in a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 512))]
    #[x_kube(validation = Rule::new(REPOSITORY_PATH_RULE).message("spec.backup.path must be an absolute path inside the bucket, such as /news/production: segments of letters, digits, '.', '_' and '-', no '..' and no trailing '/'"))]
    pub path: Option<String>,

    /// When a full backup runs (cron, in the controller-manager's time zone unless
    /// `timeZone` is set). Default: Sundays at 01:00.
    #[serde(default = "default_full_schedule")]
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(validation = Rule::new(CRON_RULE).message("spec.backup.fullSchedule must be a cron schedule of five fields, such as '0 1 * * 0', or a macro such as @weekly"))]
    pub full_schedule: String,

    /// When a differential backup (the changes since the last full one) runs. Default: 01:00
    /// every day but Sunday. Set to an empty string for none.
    #[serde(default = "default_differential_schedule")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new(format!("self == '' || {CRON_RULE}")).message("spec.backup.differentialSchedule must be a cron schedule of five fields, such as '0 1 * * 1-6', a macro such as @daily, or '' for none"))]
    pub differential_schedule: String,

    /// Time zone of the schedules (an IANA name such as `Europe/Berlin`); the
    /// controller-manager's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// Full backups kept; older ones, and the differential backups and WAL that only they
    /// need, are expired after each backup. At least 1.
    #[serde(default = "default_retention_full")]
    #[schemars(range(min = 1, max = 100))]
    pub retention_full: i32,

    /// Seconds after which PostgreSQL switches to a new WAL segment even when it is not full,
    /// so that it is archived: the most an idle site loses with all its volumes
    /// (`archive_timeout`).
    #[serde(default = "default_archive_timeout")]
    #[schemars(range(min = 10, max = 3600))]
    pub archive_timeout_seconds: i32,

    /// WAL that may wait in the primary's archive queue while the repository cannot take it.
    /// Beyond this, pgBackRest drops the waiting WAL (reported as an archiving failure)
    /// instead of filling the data volume: writes go on, but point-in-time recovery across
    /// the gap is lost until the next full backup. Defaults to a quarter of the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('64Mi')) >= 0").message("spec.backup.archiveQueueMax must be a quantity of at least 64Mi, such as 1Gi"))]
    pub archive_queue_max: Option<String>,
}

/// An S3-compatible bucket. pgBackRest speaks only HTTPS to it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Repository {
    /// Host name or address of the S3 API, with an optional port, without a scheme
    /// (`s3.eu-central-1.amazonaws.com`, `10.0.0.5:9000`).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$')").message("spec.backup.s3.endpoint must be a host name or IPv4 address with an optional :port and no scheme, such as s3.example.com or 10.0.0.5:9000"))]
    pub endpoint: String,

    /// The bucket; it must exist.
    #[schemars(length(min = 3, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]*[a-z0-9]$')").message("spec.backup.s3.bucket must be an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-'"))]
    pub bucket: String,

    /// The bucket's region (used to sign requests; any value for most self-hosted servers).
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,

    /// `Host` (virtual-host style, `bucket.endpoint`, AWS's default) or `Path`
    /// (`endpoint/bucket`, what most self-hosted servers need).
    #[serde(default)]
    pub uri_style: UriStyle,

    /// Name of a Secret in the site's namespace with keys `accessKeyId` and
    /// `secretAccessKey`. Given to pgBackRest only as environment references.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,

    /// A Secret with the CA certificate (PEM) that signed the server's certificate, when it
    /// is not a public CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<CaSecret>,
}

/// A key of a Secret that holds a CA certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecret {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Default `ca.crt`.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum UriStyle {
    #[default]
    Host,
    Path,
}

impl UriStyle {
    /// pgBackRest's `repo1-s3-uri-style`.
    pub fn pgbackrest(self) -> &'static str {
        match self {
            UriStyle::Host => "host",
            UriStyle::Path => "path",
        }
    }
}

/// How a new site's database comes to life. Only when the site is created: a site's
/// database is never replaced underneath it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore another site's backup (from `spec.backup`'s bucket) instead of starting empty.
    pub recovery: RecoverySpec,
}

/// Where to restore from, and to which point. The restored site then archives to its own
/// repository (`spec.backup.path`), never to the source's.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.sourceSite) != has(self.path)")
        .message("spec.database.bootstrap.recovery needs exactly one of sourceSite (a site whose repository is at its default path) and path (a repository path in the bucket)"),
    validation = Rule::new("!has(self.targetTime) || !has(self.backupSet)")
        .message("spec.database.bootstrap.recovery takes targetTime or backupSet, not both: a backup set is restored to its own end")
)]
pub struct RecoverySpec {
    /// A site (deleted or not) whose repository is at the default path
    /// `/<sourceNamespace>/<sourceSite>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 40))]
    pub source_site: Option<String>,

    /// Namespace of `sourceSite`; the new site's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub source_namespace: Option<String>,

    /// A repository path in the bucket, instead of `sourceSite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 512))]
    #[x_kube(validation = Rule::new(REPOSITORY_PATH_RULE).message("spec.database.bootstrap.recovery.path must be an absolute path inside the bucket, such as /news/production"))]
    pub path: Option<String>,

    /// Recover up to this time (RFC 3339) and stop there; the latest archived point when
    /// unset. It must lie in the past and after the first backup (checked by the operator:
    /// the API server has no clock in its validation rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 20, max = 40))]
    #[x_kube(validation = Rule::new(RFC3339_RULE).message("spec.database.bootstrap.recovery.targetTime must be an RFC 3339 time with an offset, such as 2026-12-01T10:00:00Z"))]
    pub target_time: Option<String>,

    /// Restore this backup (its label, as in `status.backup.lastBackup.label`) to the point
    /// where it ended, instead of a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$')").message("spec.database.bootstrap.recovery.backupSet must be a pgBackRest backup label such as 20261201-010000F or 20261201-010000F_20261202-010000D"))]
    pub backup_set: Option<String>,
}

/// What the repository holds and how archiving goes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// `s3://<bucket><path>`.
    pub repository: String,
    /// The newest backup that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
    /// The newest backup Job that failed, while no backup succeeded after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<BackupFailure>,
    /// Backups in the repository (after retention).
    #[serde(default)]
    pub backups: i32,
    /// The earliest time a restore can reach: the end of the oldest backup kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recoverable_point: Option<Time>,
    /// The latest time a restore can reach: the last archived WAL segment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recoverable_point: Option<Time>,
    /// Name of the last WAL segment the primary archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_at: Option<Time>,
    /// Where the site was restored from, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}

/// One backup in the repository.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// pgBackRest's label (`20261201-010000F`), what `bootstrap.recovery.backupSet` takes.
    pub label: String,
    /// `full`, `diff` or `incr`.
    #[serde(rename = "type")]
    pub kind: String,
    pub started: Time,
    pub finished: Time,
    /// Size of the database when backed up, and of the backup in the repository (compressed,
    /// only what changed for `diff`/`incr`).
    pub database_bytes: i64,
    pub repository_bytes: i64,
}

/// A backup Job that failed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupFailure {
    /// The Job.
    pub job: String,
    pub at: Time,
    /// What the backup reported (pgBackRest's error).
    pub message: String,
}

fn default_full_schedule() -> String {
    "0 1 * * 0".into()
}
fn default_differential_schedule() -> String {
    "0 1 * * 1-6".into()
}
fn default_retention_full() -> i32 {
    2
}
fn default_archive_timeout() -> i32 {
    60
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_ca_key() -> String {
    "ca.crt".into()
}
