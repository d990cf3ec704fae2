//! The PostgreSQL StatefulSet: `instances` pods running Patroni (contract in
//! docs/high-availability.md, "Replicated database"), each on its own claim.
//!
//! Fields that are immutable on a StatefulSet (selector, serviceName, podManagementPolicy,
//! claim templates) keep the values of the single-instance StatefulSet, so an upgraded site's
//! StatefulSet is updated in place: same name, same claim `data-<site>-postgresql-0`, same
//! PGDATA, and its pod is rolled once to Patroni, which takes the data directory over.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec,
    PodTemplateSpec, Probe, SecretKeySelector, Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::backup;
use super::deployment::{affinity, empty_dir, mount, topology_spread};
use super::patroni_config::{self, PGDATA, SOCKET_DIR};
use super::placement;
use super::security::{self, restricted_container_security};
use super::{
    Component, DB_PASSWORD_KEY, DB_USERNAME_KEY, MANAGED_BY, Names, PATRONI_PORT, POSTGRES_PORT,
    label_selector, object_meta, resource_requirements, selector_labels,
};
use crate::crd::ArticleSite;
use crate::patroni;

pub const CONTAINER_NAME: &str = "postgresql";
pub const DATA_VOLUME: &str = "data";
/// The volume is mounted at the parent of PGDATA so the data directory is a fresh subdirectory
/// (no lost+found).
const DATA_MOUNT: &str = "/var/lib/postgresql";
/// Pod template annotation: the hash of the backup configuration (`backup::config_hash`).
pub const BACKUP_CONFIG_ANNOTATION: &str = "articlesite.io/backup-config";
/// Instances of a new site when `spec.database.instances` is unset.
pub const DEFAULT_INSTANCES: i32 = 3;

/// Name of the PVC of database pod `ordinal`.
pub fn pvc_name(site: &str, ordinal: u32) -> String {
    format!("{DATA_VOLUME}-{}-{ordinal}", Names::database(site))
}

/// The instances to run: the spec's; when unset, the live StatefulSet's replica count (a site
/// created before the field existed keeps its single instance), else 3. Not a schema default:
/// the API server applies schema defaults to stored objects too, which would triple every
/// existing single-instance site on upgrade.
///
/// A live StatefulSet grows only once Patroni has `initialized` the cluster: on an upgraded
/// site, pod 0 first takes its data directory over; a new pod started before that finds no
/// cluster in the API and initdb's an empty one of its own, and pod 0's data would then belong
/// to "another cluster".
pub fn instances(site: &ArticleSite, live: Option<&StatefulSet>, initialized: bool) -> i32 {
    let live_replicas = live
        .and_then(|s| s.spec.as_ref()?.replicas)
        .filter(|n| *n >= 1);
    let wanted = site
        .spec
        .database
        .instances
        .unwrap_or_else(|| live_replicas.unwrap_or(DEFAULT_INSTANCES));
    match live_replicas {
        Some(now) if !initialized => wanted.min(now),
        _ => wanted,
    }
}

fn http_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("patroni".into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        success_threshold: Some(1),
        ..Default::default()
    }
}

pub(super) fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Patroni's environment. Credentials only by reference: the app's user is the bootstrap
/// superuser today and doubles as replication and REST API user (a dedicated replication role
/// is a documented follow-up).
fn patroni_env(site: &ArticleSite) -> Vec<EnvVar> {
    let name = site.name_any();
    let credentials = Names::database_credentials(&name);
    let labels = serde_json::to_string(&patroni::labels(site)).unwrap_or_default();
    // The leader's Endpoints port must carry the Service port's name, or the selector-less
    // client Service would not route to it.
    let ports = format!(r#"[{{"name":"postgresql","port":{POSTGRES_PORT}}}]"#);
    let mut env = vec![
        field_env("PATRONI_NAME", "metadata.name"),
        value_env("PATRONI_SCOPE", &patroni::scope(&name)),
        field_env("PATRONI_KUBERNETES_NAMESPACE", "metadata.namespace"),
        field_env("PATRONI_KUBERNETES_POD_IP", "status.podIP"),
        value_env("PATRONI_KUBERNETES_USE_ENDPOINTS", "true"),
        value_env("PATRONI_KUBERNETES_LABELS", &labels),
        value_env("PATRONI_KUBERNETES_PORTS", &ports),
        // What the other members dial (Patroni would otherwise advertise 0.0.0.0).
        value_env(
            "PATRONI_POSTGRESQL_CONNECT_ADDRESS",
            &format!("$(PATRONI_KUBERNETES_POD_IP):{POSTGRES_PORT}"),
        ),
        value_env(
            "PATRONI_RESTAPI_CONNECT_ADDRESS",
            &format!("$(PATRONI_KUBERNETES_POD_IP):{PATRONI_PORT}"),
        ),
    ];
    for prefix in ["SUPERUSER", "REPLICATION", "RESTAPI"] {
        env.push(secret_env(
            &format!("PATRONI_{prefix}_USERNAME"),
            &credentials,
            DB_USERNAME_KEY,
        ));
        env.push(secret_env(
            &format!("PATRONI_{prefix}_PASSWORD"),
            &credentials,
            DB_PASSWORD_KEY,
        ));
    }
    env.push(value_env("POSTGRES_DB", &site.spec.database.name));
    env.push(value_env("PGDATA", PGDATA));
    if let Some(b) = &site.spec.backup {
        env.extend(backup::credentials_env(b));
        if let Some(boot) = &site.spec.database.bootstrap {
            env.extend(backup::restore_env(site, &boot.recovery));
        }
    }
    env
}

/// Labels of the claim template. Without the version label: volumeClaimTemplates are immutable,
/// so nothing in them may change with the spec.
fn claim_labels(site: &ArticleSite) -> BTreeMap<String, String> {
    let mut labels = selector_labels(site, Component::Database);
    labels.insert("app.kubernetes.io/part-of".into(), "articlesite".into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// `claim_size` is the size in the claim template: the spec's size for a new StatefulSet, the
/// live template's size afterwards (templates are immutable; growth is applied to the PVCs).
pub fn build(site: &ArticleSite, claim_size: &str, instances: i32) -> StatefulSet {
    let name = site.name_any();
    let db = &site.spec.database;
    let meta = object_meta(site, Names::database(&name), Component::Database);
    // Patroni finds its members by its labels plus the scope label.
    let mut pod_labels = meta.labels.clone().unwrap_or_default();
    pod_labels.insert(patroni::SCOPE_LABEL.into(), patroni::scope(&name));
    let mut mounts = vec![
        mount(DATA_VOLUME, DATA_MOUNT),
        mount("run", SOCKET_DIR),
        mount("tmp", "/tmp"),
        k8s_openapi::api::core::v1::VolumeMount {
            read_only: Some(true),
            ..mount("patroni", patroni_config::MOUNT_DIR)
        },
    ];
    let mut volumes = vec![empty_dir("run", "16Mi"), empty_dir("tmp", "256Mi")];
    let mut sidecars = Vec::new();
    let mut pod_annotations = None;
    if let Some(b) = &site.spec.backup {
        mounts.extend(backup::config_mounts(b));
        volumes.extend(backup::config_volumes(site, b));
        sidecars.push(backup::agent_container(site, b));
        pod_annotations = Some(BTreeMap::from([(
            BACKUP_CONFIG_ANNOTATION.to_string(),
            backup::config_hash(site, b, claim_size),
        )]));
    }
    let config_volume = Volume {
        name: "patroni".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: Names::patroni_config(&name),
            default_mode: Some(0o444),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            replicas: Some(instances),
            service_name: Some(Names::database_headless(&name)),
            selector: label_selector(site, Component::Database),
            // Immutable, and what Patroni wants anyway: pod-0 bootstraps (or takes the data
            // over) before the replicas clone it.
            pod_management_policy: Some("OrderedReady".into()),
            revision_history_limit: Some(5),
            // The operator restarts the pods on a new template itself: replicas first, the
            // primary last after a switchover (`plan::database`).
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            // Deleting the site deletes its data too; scaling never does.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: pod_annotations,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    // The only pods with a token: Patroni keeps its lock in the API.
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(60),
                    service_account_name: Some(Names::database_service_account(&name)),
                    security_context: Some(security::database_pod_security()),
                    topology_spread_constraints: Some(topology_spread(site, Component::Database)),
                    affinity: affinity(site, Component::Database),
                    node_selector: placement::node_selector(site),
                    tolerations: Some(placement::tolerations(site)),
                    containers: [Container {
                        name: CONTAINER_NAME.into(),
                        image: Some(db.image.clone()),
                        image_pull_policy: Some(db.image_pull_policy.as_str().into()),
                        ports: Some(vec![
                            port("postgresql", POSTGRES_PORT),
                            port("patroni", PATRONI_PORT),
                        ]),
                        env: Some(patroni_env(site)),
                        resources: Some(resource_requirements(&db.resources)),
                        // Ready = PostgreSQL runs (Patroni's /health), whatever its role:
                        // /readiness also wants a replica streaming, so every replica left
                        // the read Service exactly while the primary was lost and reads
                        // needed them. Whether a replica streams is judged from Patroni's
                        // annotations instead (`State::serving`). /liveness answers while
                        // Patroni's loop runs (also during a long clone).
                        readiness_probe: Some(http_probe("/health", 5, 3)),
                        liveness_probe: Some(http_probe("/liveness", 10, 6)),
                        security_context: Some(restricted_container_security()),
                        volume_mounts: Some(mounts),
                        ..Default::default()
                    }]
                    .into_iter()
                    .chain(sidecars)
                    .collect(),
                    volumes: Some(volumes.into_iter().chain([config_volume]).collect()),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.into()),
                    labels: Some(claim_labels(site)),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: db.storage.storage_class.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(claim_size.to_string()),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The size in the claim template: the live StatefulSet's (templates are immutable), else the
/// spec's. What `max_slot_wal_keep_size` and the archive queue are a share of.
pub fn claim_size_of(site: &ArticleSite, live: Option<&StatefulSet>) -> String {
    live.and_then(claim_template_size)
        .unwrap_or_else(|| site.spec.database.storage.size.clone())
}

/// The storage request of the live StatefulSet's claim template.
pub fn claim_template_size(sts: &StatefulSet) -> Option<String> {
    claim_size(
        sts.spec
            .as_ref()?
            .volume_claim_templates
            .as_ref()?
            .iter()
            .find(|t| t.metadata.name.as_deref() == Some(DATA_VOLUME))?,
    )
}

/// The storage request of a claim (or claim template).
pub fn claim_size(claim: &PersistentVolumeClaim) -> Option<String> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    fn env_of(sts: &StatefulSet) -> BTreeMap<String, EnvVar> {
        sts.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    }

    #[test]
    fn patroni_pods_follow_the_contract() {
        let s = site("news");
        let sts = build(&s, "1Gi", 3);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.service_name.as_deref(), Some("news-postgresql-hl"));
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(pod.service_account_name.as_deref(), Some("news-postgresql"));
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(labels["cluster-name"], "news-postgresql");
        let c = &pod.containers[0];
        let env = env_of(&sts);
        assert_eq!(
            env["PATRONI_SCOPE"].value.as_deref(),
            Some("news-postgresql")
        );
        assert_eq!(
            env["PATRONI_KUBERNETES_USE_ENDPOINTS"].value.as_deref(),
            Some("true")
        );
        let labels: BTreeMap<String, String> =
            serde_json::from_str(env["PATRONI_KUBERNETES_LABELS"].value.as_ref().unwrap()).unwrap();
        assert_eq!(labels, selector_labels(&s, Component::Database));
        assert_eq!(
            env["PATRONI_NAME"]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        // Every credential by reference, none by value.
        for key in ["SUPERUSER", "REPLICATION", "RESTAPI"] {
            for part in ["USERNAME", "PASSWORD"] {
                let e = &env[&format!("PATRONI_{key}_{part}")];
                assert!(e.value.is_none());
                let r = e
                    .value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap();
                assert_eq!(r.name, "news-postgresql-credentials");
            }
        }
        assert_eq!(env["PGDATA"].value.as_deref(), Some(PGDATA));
        assert!(PGDATA.starts_with(DATA_MOUNT), "PGDATA is on the claim");
        let ports: Vec<_> = c.ports.iter().flatten().map(|p| p.container_port).collect();
        assert_eq!(ports, [5432, 8008]);
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/health"));
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/liveness"));
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.as_str(), m.read_only.unwrap_or(false)))
            .collect();
        assert!(mounts.contains(&("/etc/patroni", true)));
        assert!(mounts.contains(&("/tmp", false)));
        assert!(mounts.contains(&("/var/run/postgresql", false)));
        assert_eq!(claim_template_size(&sts).as_deref(), Some("1Gi"));
        assert_eq!(pvc_name("news", 0), "data-news-postgresql-0");
    }

    #[test]
    fn instances_default_to_the_live_count_then_three() {
        let mut s = site("news");
        assert_eq!(instances(&s, None, false), 3);
        let live = build(&s, "1Gi", 1);
        assert_eq!(
            instances(&s, Some(&live), true),
            1,
            "an upgraded site keeps one"
        );
        s.spec.database.instances = Some(5);
        assert_eq!(instances(&s, Some(&live), true), 5);
        // Raised before Patroni took pod 0's data directory over: wait for it.
        assert_eq!(instances(&s, Some(&live), false), 1);
        // A new site's StatefulSet starts at its full count (pod 0 bootstraps first).
        let fresh = build(&s, "1Gi", 5);
        assert_eq!(instances(&s, Some(&fresh), false), 5);
        // Lowering needs no wait.
        s.spec.database.instances = Some(3);
        assert_eq!(instances(&s, Some(&fresh), false), 3);
    }

    #[test]
    fn claim_template_ignores_image_changes() {
        let mut s = site("news");
        let a = build(&s, "1Gi", 3);
        s.spec.database.image = "postgres:18".into();
        let b = build(&s, "1Gi", 3);
        assert_eq!(
            a.spec.as_ref().unwrap().volume_claim_templates,
            b.spec.as_ref().unwrap().volume_claim_templates
        );
    }
}
