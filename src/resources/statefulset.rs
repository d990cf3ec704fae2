//! The PostgreSQL StatefulSet: one instance of the official `postgres` image on a PVC.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, SecretKeySelector,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::deployment::{affinity, empty_dir, mount, topology_spread};
use super::placement;
use super::security::{self, restricted_container_security};
use super::{
    Component, DB_PASSWORD_KEY, DB_USERNAME_KEY, MANAGED_BY, Names, POSTGRES_PORT, label_selector,
    object_meta, resource_requirements, selector_labels,
};
use crate::crd::ArticleSite;

pub const CONTAINER_NAME: &str = "postgresql";
pub const DATA_VOLUME: &str = "data";
/// The volume is mounted at the parent of PGDATA so the data directory is a fresh subdirectory
/// (no lost+found), which works for the image layouts of PostgreSQL ≤17 and 18+.
const DATA_MOUNT: &str = "/var/lib/postgresql";
const PGDATA: &str = "/var/lib/postgresql/pgdata";

/// Name of the PVC of database pod `ordinal`.
pub fn pvc_name(site: &str, ordinal: u32) -> String {
    format!("{DATA_VOLUME}-{}-{ordinal}", Names::database(site))
}

fn pg_isready_probe(period: i32, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            // Exec probes get no $(VAR) expansion, so a shell reads the environment.
            command: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "exec pg_isready -h 127.0.0.1 -p 5432 -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\""
                    .into(),
            ]),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        success_threshold: Some(1),
        ..Default::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
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

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Labels of the claim template. Without the version label: volumeClaimTemplates are immutable,
/// so nothing in them may change with the spec.
fn claim_labels(site: &ArticleSite) -> BTreeMap<String, String> {
    let mut labels = selector_labels(site, Component::Database);
    labels.insert("app.kubernetes.io/part-of".into(), "articlesite".into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels
}

/// `claim_size` is the size in the claim template: the spec's size for a new StatefulSet, the
/// live template's size afterwards (templates are immutable; growth is applied to the PVCs).
pub fn build(site: &ArticleSite, claim_size: &str) -> StatefulSet {
    let name = site.name_any();
    let db = &site.spec.database;
    let meta = object_meta(site, Names::database(&name), Component::Database);
    let pod_labels = meta.labels.clone();
    let credentials = Names::database_credentials(&name);
    StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(Names::database_headless(&name)),
            selector: label_selector(site, Component::Database),
            pod_management_policy: Some("OrderedReady".into()),
            revision_history_limit: Some(5),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
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
                    labels: pod_labels,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(60),
                    service_account_name: Some(Names::service_account(&name)),
                    security_context: Some(security::database_pod_security()),
                    topology_spread_constraints: Some(topology_spread(site, Component::Database)),
                    affinity: affinity(site, Component::Database),
                    node_selector: placement::node_selector(site),
                    tolerations: Some(placement::tolerations(site)),
                    containers: vec![Container {
                        name: CONTAINER_NAME.into(),
                        image: Some(db.image.clone()),
                        image_pull_policy: Some(db.image_pull_policy.as_str().into()),
                        ports: Some(vec![ContainerPort {
                            name: Some("postgresql".into()),
                            container_port: POSTGRES_PORT,
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }]),
                        env: Some(vec![
                            secret_env("POSTGRES_USER", &credentials, DB_USERNAME_KEY),
                            secret_env("POSTGRES_PASSWORD", &credentials, DB_PASSWORD_KEY),
                            value_env("POSTGRES_DB", &db.name),
                            value_env("PGDATA", PGDATA),
                        ]),
                        resources: Some(resource_requirements(&db.resources)),
                        startup_probe: Some(pg_isready_probe(5, 60)),
                        readiness_probe: Some(pg_isready_probe(5, 3)),
                        liveness_probe: Some(pg_isready_probe(10, 6)),
                        security_context: Some(restricted_container_security()),
                        volume_mounts: Some(vec![
                            mount(DATA_VOLUME, DATA_MOUNT),
                            mount("run", "/var/run/postgresql"),
                            mount("tmp", "/tmp"),
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![empty_dir("run", "16Mi"), empty_dir("tmp", "256Mi")]),
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

    #[test]
    fn postgres_follows_the_image_conventions() {
        let s = site("news");
        let sts = build(&s, "1Gi");
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.service_name.as_deref(), Some("news-postgresql-hl"));
        assert_eq!(spec.replicas, Some(1));
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        let names: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "POSTGRES_USER",
                "POSTGRES_PASSWORD",
                "POSTGRES_DB",
                "PGDATA"
            ]
        );
        let pgdata = &c.env.as_ref().unwrap()[3];
        assert!(pgdata.value.as_ref().unwrap().starts_with(DATA_MOUNT));
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 5432);
        let probe = c.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap();
        assert!(probe.command.as_ref().unwrap()[2].contains("pg_isready"));
        assert_eq!(claim_template_size(&sts).as_deref(), Some("1Gi"));
        assert_eq!(pvc_name("news", 0), "data-news-postgresql-0");
    }

    #[test]
    fn claim_template_ignores_image_changes() {
        let mut s = site("news");
        let a = build(&s, "1Gi");
        s.spec.database.image = "postgres:18".into();
        let b = build(&s, "1Gi");
        assert_eq!(
            a.spec.as_ref().unwrap().volume_claim_templates,
            b.spec.as_ref().unwrap().volume_claim_templates
        );
    }
}
