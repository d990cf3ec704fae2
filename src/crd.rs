//! The `ArticleSite` custom resource: Rust types, schema defaults and CEL validation rules.
//!
//! Defaults live in the schema (`#[serde(default = ..)]` becomes `default:` in the CRD), so the
//! API server stores them and a re-applied manifest never drifts. Every rule that the API server
//! can check is declared here, with a message that names the field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
#[allow(unused_imports)] // used inside the KubeSchema attributes
use kube::core::{ListMerge, Rule};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

mod backup;
pub use backup::{
    BackupFailure, BackupRecord, BackupSpec, BackupStatus, BootstrapSpec, CaSecret, RecoverySpec,
    S3Repository, UriStyle,
};

/// Group of the custom resource.
pub const GROUP: &str = "articlesite.io";

/// OCI image reference: optional registry host (with port), lowercase repository path,
/// optional tag, optional sha256 digest. RE2 syntax without backslashes (CEL string escapes).
const IMAGE_RULE: &str = "self.matches('^(([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)([.]([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?))*(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')";

/// Every request and limit is a valid quantity (the schema alone accepts any int or string).
const QUANTITIES_RULE: &str = "(!has(self.requests) || self.requests.all(k, isQuantity(string(self.requests[k])))) && (!has(self.limits) || self.limits.all(k, isQuantity(string(self.limits[k]))))";

/// A request never exceeds the limit of the same resource.
const REQUESTS_WITHIN_LIMITS_RULE: &str = "!has(self.requests) || !has(self.limits) || self.limits.all(k, !(k in self.requests) || !isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k])) || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)";

/// PostgreSQL identifiers that need no quoting.
const PG_IDENTIFIER_RULE: &str = "self.matches('^[a-z_][a-z0-9_]{0,62}$')";

/// An article site: the article server Deployment, its PostgreSQL database and everything around
/// them (Services, PodDisruptionBudgets, NetworkPolicy, optional Ingress).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "articlesite.io",
    version = "v1alpha1",
    kind = "ArticleSite",
    plural = "articlesites",
    shortname = "asite",
    category = "articlesite",
    namespaced,
    status = "ArticleSiteStatus",
    derive = "PartialEq",
    doc = "ArticleSite runs a highly available article site: the article server and its PostgreSQL database.",
    scale(
        spec_replicas_path = ".spec.app.replicas",
        status_replicas_path = ".status.app.replicas",
        label_selector_path = ".status.app.selector"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Replicas", type_ = "string", description = "ready/desired app replicas", json_path = ".status.app.ready"),
    printcolumn(name = "Database", type_ = "string", json_path = ".status.database.state"),
    printcolumn(name = "URL", type_ = "string", priority = 1, json_path = ".status.url"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be at most 40 characters of lowercase letters, digits and '-', starting with a letter (it prefixes the names of Services and StatefulSet pods)"),
    validation = Rule::new("!has(self.spec.database) || !has(self.spec.database.bootstrap) || has(self.spec.backup)")
        .message("spec.database.bootstrap.recovery restores from the bucket of spec.backup: set spec.backup (the restored site archives to its own path there)")
)]
#[serde(rename_all = "camelCase")]
pub struct ArticleSiteSpec {
    /// Stops reconciliation: owned objects are left exactly as they are until set back to false.
    #[serde(default)]
    pub paused: bool,

    /// Title shown by the site (ARTICLES_SITE_TITLE). Defaults to the resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub title: Option<String>,

    /// The article server.
    pub app: AppSpec,

    /// The PostgreSQL database of the site.
    #[serde(default)]
    pub database: DatabaseSpec,

    /// Exposes the site outside the cluster through an Ingress. No Ingress when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Placement, disruption budgets, restarts and rollbacks (docs/high-availability.md).
    #[serde(default)]
    pub high_availability: HighAvailabilitySpec,

    /// Nodes the site's pods may run on (app and database alike). Anywhere when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,

    /// Continuous archiving and scheduled backups of the database to S3-compatible object
    /// storage (docs/backup-and-restore.md). No backups when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
}

/// Which nodes run the pods of a site: a node selector and tolerations, applied to the pod
/// templates of the app Deployment and of the PostgreSQL StatefulSet. The spreading rules of
/// `highAvailability.spread` then act among the selected nodes only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Labels a node must carry, as in a pod's `nodeSelector` (for example `type: real`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pods tolerate, as in a pod's `tolerations`; added to the operator's own
    /// tolerations of node loss (`highAvailability.nodeLossTolerationSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("self.all(t, !has(t.operator) || t.operator in ['Exists', 'Equal'])").message("spec.placement.tolerations: operator must be Exists or Equal"),
        validation = Rule::new("self.all(t, !has(t.effect) || t.effect in ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute'])").message("spec.placement.tolerations: effect must be NoSchedule, PreferNoSchedule or NoExecute (or empty for all effects)"),
        validation = Rule::new("self.all(t, (has(t.key) && t.key != '') || (has(t.operator) && t.operator == 'Exists'))").message("spec.placement.tolerations: a toleration without a key must use operator Exists"),
        validation = Rule::new("self.all(t, !has(t.operator) || t.operator != 'Exists' || !has(t.value) || t.value == '')").message("spec.placement.tolerations: a toleration with operator Exists must not have a value"),
        validation = Rule::new("self.all(t, !has(t.tolerationSeconds) || (has(t.effect) && t.effect == 'NoExecute'))").message("spec.placement.tolerations: tolerationSeconds needs effect NoExecute")
    )]
    pub tolerations: Option<Vec<Toleration>>,
}

/// How the pods of a site spread over zones and nodes.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum SpreadPolicy {
    /// Spread over zones and nodes when the scheduler can (`ScheduleAnyway`); never blocks.
    #[default]
    Preferred,
    /// Never place a pod where it would unbalance zones or nodes by more than one
    /// (`DoNotSchedule`); nodes without a zone label are not used.
    Required,
    /// No spreading rules.
    None,
}

/// High-availability settings of a site. Every field has a safe default.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HighAvailabilitySpec {
    /// Spreading of app and database pods over zones and nodes.
    #[serde(default)]
    pub spread: SpreadPolicy,
    /// App pods a drain may take down at once (PodDisruptionBudget `maxUnavailable`).
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1, max = 50))]
    pub max_unavailable: i32,
    /// Keep the database pod through voluntary disruptions (PodDisruptionBudget `minAvailable: 1`):
    /// draining its node then waits for someone to delete the pod. By default a drain may move
    /// it (a short database outage) and never blocks.
    #[serde(default)]
    pub block_database_drain: bool,
    /// Seconds a pod stays bound to a NotReady or unreachable node before it is evicted
    /// (Kubernetes' default is 300).
    #[serde(default = "default_node_loss_toleration")]
    #[schemars(range(min = 0, max = 3600))]
    pub node_loss_toleration_seconds: i64,
    /// Seconds a new app pod must be ready before it counts as available (Deployment `minReadySeconds`).
    #[serde(default = "default_min_ready")]
    #[schemars(range(min = 0, max = 600))]
    pub min_ready_seconds: i32,
    /// Seconds the preStop hook waits before SIGTERM, so endpoints drop the pod first. 0 disables it.
    #[serde(default = "default_pre_stop_delay")]
    #[schemars(range(min = 0, max = 60))]
    pub pre_stop_delay_seconds: i32,
    /// Seconds a rollout may go without progress before it counts as failed.
    #[serde(default = "default_rollout_deadline")]
    #[schemars(range(min = 10, max = 3600))]
    pub rollout_deadline_seconds: i32,
    /// Roll a failed rollout back to the last pod template that was ready.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// Restart (evict) app pods that crash-loop or stay unready while their siblings are fine.
    #[serde(default = "default_true")]
    pub restart_unhealthy_pods: bool,
    /// Seconds an app pod may stay unready (while its siblings are ready) before it is restarted.
    #[serde(default = "default_unready_restart")]
    #[schemars(range(min = 10, max = 86400))]
    pub unready_restart_seconds: i64,
    /// At most this many restarts of a site's pods per hour.
    #[serde(default = "default_restart_budget")]
    #[schemars(range(min = 0, max = 100))]
    pub max_restarts_per_hour: i32,
}

impl Default for HighAvailabilitySpec {
    fn default() -> Self {
        Self {
            spread: SpreadPolicy::default(),
            max_unavailable: default_max_unavailable(),
            block_database_drain: false,
            node_loss_toleration_seconds: default_node_loss_toleration(),
            min_ready_seconds: default_min_ready(),
            pre_stop_delay_seconds: default_pre_stop_delay(),
            rollout_deadline_seconds: default_rollout_deadline(),
            auto_rollback: true,
            restart_unhealthy_pods: true,
            unready_restart_seconds: default_unready_restart(),
            max_restarts_per_hour: default_restart_budget(),
        }
    }
}

fn default_max_unavailable() -> i32 {
    1
}
fn default_node_loss_toleration() -> i64 {
    30
}
fn default_min_ready() -> i32 {
    5
}
fn default_pre_stop_delay() -> i32 {
    2
}
fn default_rollout_deadline() -> i32 {
    300
}
fn default_unready_restart() -> i64 {
    120
}
fn default_restart_budget() -> i32 {
    5
}

/// The highest `maxReplicas` the CRD admits (docs/autoscaling.md): the same ceiling as
/// `spec.app.replicas`.
pub const MAX_AUTOSCALING_REPLICAS: i32 = 50;

/// The article server Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.autoscaling) || self.replicas >= 1").message("spec.app.autoscaling cannot be combined with spec.app.replicas: 0 (a HorizontalPodAutoscaler never scales up from zero); remove spec.app.autoscaling to stop the site"),
    validation = Rule::new("!has(self.autoscaling) || (has(self.autoscaling.minReplicas) ? self.autoscaling.minReplicas : self.replicas) <= self.autoscaling.maxReplicas").message("spec.app.autoscaling: minReplicas (spec.app.replicas when minReplicas is unset) must not be above maxReplicas"),
    validation = Rule::new("!has(self.autoscaling) || (has(self.resources.requests) && 'cpu' in self.resources.requests)").message("spec.app.autoscaling needs spec.app.resources.requests.cpu: the CPU target is a percentage of the request"),
    validation = Rule::new("!has(self.autoscaling) || !has(self.autoscaling.targetMemoryUtilizationPercentage) || (has(self.resources.requests) && 'memory' in self.resources.requests)").message("spec.app.autoscaling.targetMemoryUtilizationPercentage needs spec.app.resources.requests.memory: the target is a percentage of the request")
)]
pub struct AppSpec {
    /// Image of the article server, for example `ghcr.io/example/article-server:1.2.0`.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(IMAGE_RULE).message("spec.app.image must be an image reference such as registry.example.com/team/article-server:1.2.0 (lowercase repository, optional :tag, optional @sha256:digest)"))]
    pub image: String,

    /// When the kubelet pulls the image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// Number of article server pods (scale subresource: `kubectl scale`). With
    /// `autoscaling`, the least number of pods unless `autoscaling.minReplicas` sets it.
    #[serde(default = "default_app_replicas")]
    #[schemars(range(min = 0, max = 50))]
    pub replicas: i32,

    /// HTTP port of the article server inside the pod (ARTICLES_LISTEN_ADDR). The Service serves port 80.
    #[serde(default = "default_app_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,

    /// CPU and memory requests and limits of the article server container.
    #[serde(default = "default_app_resources")]
    pub resources: ComputeResources,

    /// Extra environment variables. Names starting with ARTICLES_ and RUST_LOG are managed by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('ARTICLES_') && e.name != 'RUST_LOG')").message("spec.app.env must not set ARTICLES_* or RUST_LOG: the operator sets them from the other spec.app fields"))]
    pub env: Option<Vec<EnvVar>>,

    /// Log filter of the article server (RUST_LOG), for example `info` or `info,article_server=debug`.
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_=:,./-]+$')").message("spec.app.logLevel must be a RUST_LOG filter such as info or info,article_server=debug"))]
    pub log_level: String,

    /// Size of the database connection pool of each pod (ARTICLES_DATABASE_POOL_SIZE).
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = 1, max = 100))]
    pub database_pool_size: i32,

    /// Seconds a terminating pod keeps serving while endpoints drain (ARTICLES_DRAIN_DELAY_SECONDS).
    #[serde(default = "default_drain_delay")]
    #[schemars(range(min = 0, max = 120))]
    pub drain_delay_seconds: i32,

    /// Seconds in-flight requests get to finish after draining (ARTICLES_SHUTDOWN_TIMEOUT_SECONDS).
    #[serde(default = "default_shutdown_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub shutdown_timeout_seconds: i32,

    /// In-memory response cache of each pod.
    #[serde(default)]
    pub cache: CacheSpec,

    /// User and group ids of the article server pods, for platforms that assign them. Only ids:
    /// the rest of the hardening is fixed, and the namespace's Pod Security admission judges the
    /// result (see docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityOverride>,

    /// Scales the pods with load through a HorizontalPodAutoscaler (docs/autoscaling.md). The
    /// operator then leaves the Deployment's replica count to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// Bounds and targets of the article server's HorizontalPodAutoscaler.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// The least number of pods; `spec.app.replicas` when unset (so `kubectl scale asite`
    /// moves the floor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.app.autoscaling.minReplicas must be at least 1"))]
    pub min_replicas: Option<i32>,

    /// The most pods the autoscaler may run, at most 50.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 50").message("spec.app.autoscaling.maxReplicas must be between 1 and 50 (the ceiling of spec.app.replicas)"))]
    pub max_replicas: i32,

    /// Average CPU use the autoscaler aims at, in percent of the CPU request (1-100).
    #[serde(
        rename = "targetCPUUtilizationPercentage",
        default = "default_cpu_target"
    )]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("spec.app.autoscaling.targetCPUUtilizationPercentage must be between 1 and 100 (percent of the CPU request)"))]
    pub target_cpu_utilization_percentage: i32,

    /// Average memory use to aim at, in percent of the memory request (1-100). No memory
    /// target when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("spec.app.autoscaling.targetMemoryUtilizationPercentage must be between 1 and 100 (percent of the memory request)"))]
    pub target_memory_utilization_percentage: Option<i32>,

    /// Seconds the load must stay low before pods are removed (the scale-down stabilization
    /// window); then one pod a minute goes. At least 60: the autoscaler's one-pod-a-minute
    /// policy counts from the size a minute ago, so a shorter window would let it remove, at
    /// once, every pod a scale-up added within that minute.
    #[serde(default = "default_scale_down_stabilization")]
    #[schemars(range(min = 60, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
}

impl AppSpec {
    /// The least number of pods while autoscaling: `autoscaling.minReplicas`, else `replicas`.
    pub fn min_replicas(&self) -> Option<i32> {
        self.autoscaling
            .as_ref()
            .map(|a| a.min_replicas.unwrap_or(self.replicas))
    }
}

fn default_cpu_target() -> i32 {
    70
}
fn default_scale_down_stabilization() -> i32 {
    300
}

/// Ids of the article server pods; unset fields keep the image's ids (65532).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityOverride {
    /// uid of the process (`runAsUser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_user: Option<i64>,
    /// Primary gid of the process (`runAsGroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_group: Option<i64>,
    /// gid that owns the pod's volumes (`fsGroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub fs_group: Option<i64>,
    /// Additional gids of the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub supplemental_groups: Option<Vec<i64>>,
}

/// Image pull policy of the containers.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Response cache settings (ARTICLES_CACHE_*). Every replica's cache is kept coherent through
/// PostgreSQL notifications (`docs/article-server.md`), so the lifetime is only a safety net.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_cache_ttl")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl_seconds: i32,
    /// Memory the cache may hold per replica (`ARTICLES_CACHE_MAX_BYTES`), a quantity between
    /// 64Ki and 64Gi; count it in `resources.limits.memory`.
    #[serde(default = "default_cache_bytes")]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('64Ki')) >= 0 && quantity(self).compareTo(quantity('64Gi')) <= 0 && quantity(self).isInteger()").message("spec.app.cache.maxBytes must be a whole number of bytes between 64Ki and 64Gi, such as 64Mi"))]
    pub max_bytes: String,
    /// Deprecated: an extra bound on the number of entries (the bound of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_entries: Option<i32>,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: default_cache_ttl(),
            max_bytes: default_cache_bytes(),
            max_entries: None,
        }
    }
}

/// Requests and limits, as in a container's `resources` (for example `cpu: 500m`, `memory: 256Mi`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(QUANTITIES_RULE).message("every request and limit must be a quantity such as 500m, 2 or 256Mi"),
    validation = Rule::new(REQUESTS_WITHIN_LIMITS_RULE).message("a request must not exceed the limit of the same resource")
)]
pub struct ComputeResources {
    /// Minimum resources reserved for the container, by resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_map")]
    pub requests: Option<BTreeMap<String, Quantity>>,
    /// Maximum resources of the container, by resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_map")]
    pub limits: Option<BTreeMap<String, Quantity>>,
}

/// A resource list with bounded size, so that the CEL rules above stay within the API server's
/// cost budget.
fn quantity_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "maxProperties": 8,
        "additionalProperties": {
            "x-kubernetes-int-or-string": true,
            "maxLength": 64,
        },
    })
}

/// The PostgreSQL cluster: instances under Patroni (one primary, the others hot standbys), its
/// replication mode and its credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.synchronousMode != 'Strict' || (has(self.instances) && self.instances >= 2)")
        .message("spec.database.synchronousMode Strict needs spec.database.instances set to at least 2: with one instance every write would wait forever for a synchronous standby that does not exist (use Synchronous, which writes alone while no standby is left)"),
    validation = Rule::new("!has(self.bootstrap) || (has(oldSelf.bootstrap) && self.bootstrap == oldSelf.bootstrap)")
        .message("spec.database.bootstrap can only be set when the site is created: restoring into an existing site would replace its database; create a new ArticleSite to restore into")
)]
pub struct DatabaseSpec {
    /// Number of PostgreSQL instances: one primary and `instances - 1` hot standbys, placed one
    /// per zone and node where the cluster allows. 1 is allowed and reported as not highly
    /// available. When unset: the live StatefulSet's replica count if the database exists
    /// (a site created before this field keeps its single instance after an operator upgrade),
    /// else 3. Set it to change the count; raising it adds standbys that clone the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9))]
    pub instances: Option<i32>,

    /// How a write is acknowledged (Patroni `synchronous_mode: quorum`): `Synchronous` (the
    /// default) waits for the first of the healthy standbys to confirm it, so a failover loses no
    /// acknowledged write, and keeps writing alone when none is left; `Strict` refuses writes
    /// while no synchronous standby is healthy (`synchronous_mode_strict`, needs at least 2
    /// instances); `Asynchronous` never waits, and a failover may lose the last acknowledged
    /// writes. A change is applied to the running cluster's dynamic configuration.
    #[serde(default)]
    pub synchronous_mode: SynchronousMode,

    /// Image of PostgreSQL with Patroni: the project's `postgresql` image (images/), or one
    /// that keeps its contract (docs/high-availability.md, "Replicated database").
    #[serde(default = "default_postgres_image")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(IMAGE_RULE).message("spec.database.image must be an image reference such as articlesite/postgresql:0.1.0 (lowercase repository, optional :tag, optional @sha256:digest)"))]
    pub image: String,

    /// When the kubelet pulls the image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// Name of the database the article server uses. Immutable.
    #[serde(default = "default_db_name")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = Rule::new(PG_IDENTIFIER_RULE).message("spec.database.name must be a PostgreSQL identifier: lowercase letters, digits and '_', not starting with a digit"),
        validation = Rule::new("self == oldSelf").message("spec.database.name is immutable: the database already exists")
    )]
    pub name: String,

    /// Owner of the database, the user the article server logs in as. Immutable.
    #[serde(default = "default_db_user")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = Rule::new(PG_IDENTIFIER_RULE).message("spec.database.user must be a PostgreSQL identifier: lowercase letters, digits and '_', not starting with a digit"),
        validation = Rule::new("self == oldSelf").message("spec.database.user is immutable: the credentials already exist")
    )]
    pub user: String,

    /// The persistent volume of the database.
    #[serde(default)]
    pub storage: StorageSpec,

    /// CPU and memory requests and limits of the PostgreSQL container.
    #[serde(default = "default_db_resources")]
    pub resources: ComputeResources,

    /// Seconds a standby may keep failing (its container crash-looping, or Patroni reporting
    /// that its PostgreSQL does not start) while the primary serves, before the operator
    /// rebuilds it: it deletes the standby's volume and pod, and Patroni clones the primary into
    /// the new volume. Never the primary, never a standby on a pod template other than the
    /// primary's, at most one rebuild per 30 minutes. 0 turns this off.
    #[serde(default = "default_rebuild_failing_standby")]
    #[schemars(range(min = 0, max = 86400))]
    pub rebuild_failing_standby_seconds: i64,

    /// Start a new site's database from a backup instead of empty. Only at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
}

fn default_rebuild_failing_standby() -> i64 {
    300
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        Self {
            instances: None,
            synchronous_mode: SynchronousMode::default(),
            image: default_postgres_image(),
            image_pull_policy: PullPolicy::default(),
            name: default_db_name(),
            user: default_db_user(),
            storage: StorageSpec::default(),
            resources: default_db_resources(),
            rebuild_failing_standby_seconds: default_rebuild_failing_standby(),
            bootstrap: None,
        }
    }
}

/// Replication mode of the database, named after what a write waits for. (Not `on`/`off`: YAML
/// reads those as booleans.)
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum SynchronousMode {
    /// Patroni `synchronous_mode: quorum`: commits wait for one of the healthy standbys (the
    /// first to answer); only a member with every acknowledged commit may be promoted.
    #[default]
    Synchronous,
    /// `synchronous_mode_strict: true` as well: no write is acknowledged without a standby.
    Strict,
    /// No synchronous replication: a failover may lose acknowledged writes.
    Asynchronous,
}

/// The PersistentVolumeClaim of the database.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!isQuantity(self.size) || !isQuantity(oldSelf.size) || quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0")
        .message("spec.database.storage.size may grow but never shrink"),
    validation = Rule::new("has(self.storageClass) == has(oldSelf.storageClass) && (!has(self.storageClass) || self.storageClass == oldSelf.storageClass)")
        .message("spec.database.storage.storageClass is immutable")
)]
pub struct StorageSpec {
    /// Size of the volume, for example `10Gi`. May grow (when the StorageClass allows expansion), never shrink.
    #[serde(default = "default_storage_size")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('1Mi')) >= 0").message("spec.database.storage.size must be a quantity of at least 1Mi, such as 10Gi"))]
    pub size: String,

    /// StorageClass of the volume; the cluster's default StorageClass when unset. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class: None,
        }
    }
}

/// Ingress of the site.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name of the site, for example `news.example.com`.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^([*][.])?[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("spec.ingress.host must be a lowercase DNS name such as news.example.com"))]
    pub host: String,

    /// IngressClass to use; the cluster's default IngressClass when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// Extra annotations of the Ingress (for example for the ingress controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub annotations: Option<BTreeMap<String, String>>,

    /// TLS of the Ingress: an existing certificate Secret, or a cert-manager issuer that creates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// TLS: `secretName` alone uses an existing Secret; `issuer` or `clusterIssuer` asks cert-manager
/// to write the certificate into `secretName` (default `<site>-tls`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.issuer) && has(self.clusterIssuer))").message("spec.ingress.tls: set at most one of issuer and clusterIssuer"),
    validation = Rule::new("has(self.secretName) || has(self.issuer) || has(self.clusterIssuer)").message("spec.ingress.tls needs secretName (an existing TLS Secret) or a cert-manager issuer or clusterIssuer")
)]
pub struct TlsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Name of a cert-manager Issuer in the site's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub issuer: Option<String>,
    /// Name of a cert-manager ClusterIssuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cluster_issuer: Option<String>,
}

/// Observed state, written only by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArticleSiteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppStatus>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,

    /// In-cluster URL of the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Generated credentials: which rotation request was handled (never a secret value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsStatus>,
    /// Placement of the ready app pods, restarts and rollbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<AvailabilityStatus>,
    /// The backup repository, while `spec.backup` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
}

/// What the operator observed and did for high availability.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AvailabilityStatus {
    /// Distinct zones of the nodes that run ready app pods.
    pub zones: i32,
    /// Distinct nodes that run ready app pods.
    pub nodes: i32,
    /// App pods the operator restarted (evicted), in total.
    #[serde(default)]
    pub pod_restarts: i32,
    /// Times of the restarts within the last hour (the restart budget and backoff).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_restarts: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Automatic rollbacks, in total.
    #[serde(default)]
    pub rollbacks: i32,
    /// The rollout that failed and was rolled back; cleared when the pod template in the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_rollout: Option<FailedRollout>,
}

/// A rollout that never became ready, and what it was rolled back to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailedRollout {
    /// Image of the failed pod template.
    pub image: String,
    /// Hash of the pod template built from the spec that failed.
    pub template_hash: String,
    /// `pod-template-hash` of the ReplicaSet that was restored.
    pub restored_revision: String,
}

/// Rotation state of the generated credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// The value of the `articlesite.io/rotate-credentials` annotation that the current write
    /// token was generated for; unset until the first rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_token_rotation: Option<String>,
}

/// Replica counts of the article server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// Pods of the Deployment (scale subresource `status.replicas`).
    pub replicas: i32,
    pub ready_replicas: i32,
    pub desired_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    pub ready: String,
    /// Label selector of the pods (scale subresource, for HorizontalPodAutoscalers).
    pub selector: String,
    /// The HorizontalPodAutoscaler's view, while `spec.app.autoscaling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

/// What the site's HorizontalPodAutoscaler reports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Pods the autoscaler last saw.
    pub current_replicas: i32,
    /// Pods the autoscaler asks for.
    pub desired_replicas: i32,
    /// Average CPU use of the pods, in percent of the request, when metrics are available.
    #[serde(
        rename = "currentCPUUtilizationPercentage",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub current_cpu_utilization_percentage: Option<i32>,
    /// The autoscaler wants more (or fewer) pods than maxReplicas (minReplicas) allows: its
    /// `ScalingLimited` condition.
    pub scaling_limited: bool,
    /// Why, as the autoscaler says (`TooManyReplicas`, `TooFewReplicas`, `DesiredWithinRange`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The autoscaler's message (metrics missing, limited, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// State of the database, from the StatefulSet and from what Patroni publishes in the
/// Kubernetes API (never by dialing the pods).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// `Ready`, `Provisioning`, `NotReady`, `Failed` or `Unknown` (paused).
    pub state: String,
    pub ready_replicas: i32,
    /// The instances asked for (`spec.database.instances`, resolved).
    pub desired_replicas: i32,
    /// Pod name of the primary (Patroni's leader), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// PostgreSQL timeline of the primary; it grows by one with each promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// Pod name of a synchronous standby, when one is in sync (the first of
    /// `synchronousStandbys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_standby: Option<String>,
    /// Every standby that votes in the synchronous quorum: a commit is acknowledged once one
    /// of them has it (Patroni's `synchronous_mode: quorum`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synchronous_standbys: Vec<String>,
    /// Every instance Patroni reports, by pod name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
    /// The last pod that held the leader lock; kept while none holds it, so that a failover
    /// through a moment without a leader is still seen as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_primary: Option<String>,
    /// The last change of primary the operator saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_leader_change: Option<LeaderChange>,
    /// Unplanned changes of primary, in total.
    #[serde(default)]
    pub failovers: i32,
    /// Requested (or drain-triggered) changes of primary, in total.
    #[serde(default)]
    pub switchovers: i32,
    /// A switchover the operator asked Patroni for that has not happened yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_switchover: Option<SwitchoverRequest>,
    /// The last standby the operator rebuilt because it kept failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebuild: Option<StandbyRebuild>,
    /// The last replica the operator moved off a node that held too many instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_move: Option<InstanceMoved>,
}

/// A replica evicted so that the database spreads over the nodes again (its replacement is
/// placed by the scheduler's spreading).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMoved {
    /// Pod name of the replica.
    pub instance: String,
    /// The node it was moved off.
    pub from: String,
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// A standby rebuilt from the primary: its volume deleted, Patroni cloned the primary anew.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StandbyRebuild {
    /// Pod name of the standby.
    pub instance: String,
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// What the operator saw (its container crash-looping, or PostgreSQL failing to start).
    pub reason: String,
}

/// One PostgreSQL instance as Patroni reports it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Pod name.
    pub name: String,
    /// `primary`, `replica`, or what Patroni reports while it is neither (`uninitialized`, ...).
    pub role: String,
    /// Node of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Patroni's state of the instance (`running`, `streaming`, `starting`, `stopped`, ...).
    pub state: String,
    /// Bytes of WAL the instance has not replayed yet, against the primary's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
}

/// A change of primary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaderChange {
    pub from: String,
    pub to: String,
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// `Failover` (unplanned) or `Switchover` (asked for).
    pub kind: String,
}

/// A switchover written to Patroni's failover object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverRequest {
    /// The primary when it was asked for.
    pub from: String,
    /// The pod asked to take over; unset lets Patroni choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub requested_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Why: `Requested` (the `articlesite.io/switchover` annotation) or `NodeDrain` (the
    /// primary's node is cordoned or tainted out of service).
    pub reason: String,
}

fn default_true() -> bool {
    true
}
fn default_app_replicas() -> i32 {
    2
}
fn default_app_port() -> i32 {
    8080
}
fn default_log_level() -> String {
    "info".into()
}
fn default_pool_size() -> i32 {
    10
}
fn default_drain_delay() -> i32 {
    5
}
fn default_shutdown_timeout() -> i32 {
    20
}
fn default_cache_ttl() -> i32 {
    600
}
fn default_cache_bytes() -> String {
    "64Mi".into()
}
fn default_postgres_image() -> String {
    // The project's image: PostgreSQL with Patroni, which every database runs under.
    "articlesite/postgresql:0.1.0".into()
}
fn default_db_name() -> String {
    "articles".into()
}
fn default_db_user() -> String {
    "articles".into()
}
fn default_storage_size() -> String {
    "1Gi".into()
}

pub(crate) fn quantities(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect(),
    )
}

fn default_app_resources() -> ComputeResources {
    ComputeResources {
        requests: quantities(&[("cpu", "100m"), ("memory", "128Mi")]),
        limits: quantities(&[("memory", "256Mi")]),
    }
}

fn default_db_resources() -> ComputeResources {
    ComputeResources {
        requests: quantities(&[("cpu", "100m"), ("memory", "256Mi")]),
        limits: quantities(&[("memory", "512Mi")]),
    }
}

/// The CRD as YAML, exactly as committed in `crds/articlesite.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&ArticleSite::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/articlesite.yaml` must be what the types generate; regenerate with
    /// `cargo run -- crd > crds/articlesite.yaml`.
    #[test]
    fn committed_crd_is_current() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/articlesite.yaml"
        ))
        .expect("crds/articlesite.yaml exists");
        let generated = crd_yaml().expect("CRD serializes");
        assert!(
            committed == generated,
            "crds/articlesite.yaml is stale: run `cargo run -- crd > crds/articlesite.yaml`"
        );
    }

    #[test]
    fn crd_has_names_subresources_and_columns() {
        let crd = ArticleSite::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.short_names, Some(vec!["asite".to_string()]));
        let version = &crd.spec.versions[0];
        let subresources = version.subresources.as_ref().expect("subresources");
        assert!(subresources.status.is_some());
        let scale = subresources.scale.as_ref().expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.app.replicas");
        assert_eq!(scale.status_replicas_path, ".status.app.replicas");
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Ready", "Replicas", "Database", "URL", "Age"]);
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec: ArticleSiteSpec =
            serde_json::from_value(serde_json::json!({"app": {"image": "article-server:1"}}))
                .expect("minimal spec parses");
        assert_eq!(spec.app.replicas, 2);
        assert_eq!(spec.database, DatabaseSpec::default());
        assert!(!spec.paused);
    }
}
