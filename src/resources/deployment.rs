//! The article server Deployment, configured through the env contract of `app/`.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    Lifecycle, LifecycleHandler, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe,
    SecretKeySelector, SleepAction, TopologySpreadConstraint, Volume, VolumeMount,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    Component, DB_PASSWORD_KEY, DB_USERNAME_KEY, Names, POSTGRES_PORT, WRITE_TOKEN_KEY,
    label_selector, object_meta, placement, public_url, resource_requirements, security,
};
use crate::crd::{ArticleSite, SpreadPolicy};

pub const CONTAINER_NAME: &str = "article-server";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn secret_env(name: &str, secret: String, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The environment of the article server (contract in `app/`), then the user's extra variables.
pub fn app_env(site: &ArticleSite, cluster_domain: &str) -> Vec<EnvVar> {
    let name = site.name_any();
    let ns = site.namespace().unwrap_or_default();
    let app = &site.spec.app;
    let db = &site.spec.database;
    let credentials = Names::database_credentials(&name);
    let mut vars = vec![
        env("ARTICLES_LISTEN_ADDR", format!("0.0.0.0:{}", app.port)),
        env(
            "ARTICLES_DATABASE_HOST",
            format!("{}.{ns}.svc.{cluster_domain}", Names::database(&name)),
        ),
        // The replicas, read-only: the server's fallback pool for reads while the primary is
        // unreachable (a failover).
        env(
            "ARTICLES_DATABASE_READ_HOST",
            format!(
                "{}.{ns}.svc.{cluster_domain}",
                Names::database_replicas(&name)
            ),
        ),
        env("ARTICLES_DATABASE_PORT", POSTGRES_PORT.to_string()),
        env("ARTICLES_DATABASE_NAME", db.name.clone()),
        secret_env(
            "ARTICLES_DATABASE_USER",
            credentials.clone(),
            DB_USERNAME_KEY,
        ),
        secret_env("ARTICLES_DATABASE_PASSWORD", credentials, DB_PASSWORD_KEY),
        secret_env(
            "ARTICLES_WRITE_TOKEN",
            Names::write_token(&name),
            WRITE_TOKEN_KEY,
        ),
        env(
            "ARTICLES_DATABASE_POOL_SIZE",
            app.database_pool_size.to_string(),
        ),
        env(
            "ARTICLES_DRAIN_DELAY_SECONDS",
            app.drain_delay_seconds.to_string(),
        ),
        env(
            "ARTICLES_SHUTDOWN_TIMEOUT_SECONDS",
            app.shutdown_timeout_seconds.to_string(),
        ),
        env("ARTICLES_CACHE_ENABLED", app.cache.enabled.to_string()),
        env(
            "ARTICLES_CACHE_TTL_SECONDS",
            app.cache.ttl_seconds.to_string(),
        ),
        // The CRD admits whole byte counts only; the server's own default otherwise.
        env(
            "ARTICLES_CACHE_MAX_BYTES",
            crate::quantity::whole(&app.cache.max_bytes)
                .map_or_else(|| (64u64 << 20).to_string(), |b| b.to_string()),
        ),
        env(
            "ARTICLES_SITE_TITLE",
            site.spec.title.clone().unwrap_or_else(|| name.clone()),
        ),
        env("ARTICLES_PUBLIC_URL", public_url(site, cluster_domain)),
        env("RUST_LOG", app.log_level.clone()),
    ];
    // Only for sites that still carry the deprecated bound.
    if let Some(n) = app.cache.max_entries {
        vars.push(env("ARTICLES_CACHE_MAX_ENTRIES", n.to_string()));
    }
    vars.extend(app.env.iter().flatten().cloned());
    vars
}

/// preStop delay, drain, then finish in-flight requests, then a margin before SIGKILL.
pub fn termination_grace_period(site: &ArticleSite) -> i64 {
    i64::from(site.spec.high_availability.pre_stop_delay_seconds)
        + i64::from(site.spec.app.drain_delay_seconds)
        + i64::from(site.spec.app.shutdown_timeout_seconds)
        + 5
}

fn http_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        success_threshold: Some(1),
        ..Default::default()
    }
}

/// Spread pods over zones and then nodes, max skew 1. `Preferred` (`ScheduleAnyway`) keeps
/// single-zone clusters working; `Required` (`DoNotSchedule`) never unbalances. Cordoned and
/// tainted nodes do not count as domains (`nodeTaintsPolicy: Honor`), so a drain never leaves
/// an evicted pod unschedulable.
pub fn topology_spread(site: &ArticleSite, component: Component) -> Vec<TopologySpreadConstraint> {
    let when = match site.spec.high_availability.spread {
        SpreadPolicy::None => return Vec::new(),
        SpreadPolicy::Preferred => "ScheduleAnyway",
        SpreadPolicy::Required => "DoNotSchedule",
    };
    ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: when.into(),
            label_selector: Some(label_selector(site, component)),
            node_taints_policy: Some("Honor".into()),
            ..Default::default()
        })
        .collect()
}

pub use super::security::restricted_container_security;

/// Node anti-affinity between pods of the same component. Always preferred: a required rule
/// would block surge rollouts and drains once there are as many pods as nodes.
pub fn affinity(site: &ArticleSite, component: Component) -> Option<Affinity> {
    if site.spec.high_availability.spread == SpreadPolicy::None {
        return None;
    }
    Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(label_selector(site, component)),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub fn empty_dir(name: &str, limit: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(limit.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

/// A preStop sleep, so endpoints drop the pod before it gets SIGTERM (sleep action: the
/// image needs no shell).
fn pre_stop(site: &ArticleSite) -> Option<Lifecycle> {
    let seconds = site.spec.high_availability.pre_stop_delay_seconds;
    (seconds > 0).then(|| Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: i64::from(seconds),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub fn build(site: &ArticleSite, cluster_domain: &str) -> Deployment {
    let name = site.name_any();
    let app = &site.spec.app;
    let meta = object_meta(site, Names::app(&name), Component::App);
    let pod_labels = meta.labels.clone();
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            // With autoscaling the HorizontalPodAutoscaler owns the count: not sending the
            // field keeps server-side apply from ever resetting it (`plan::children`, handover).
            replicas: app.autoscaling.is_none().then_some(app.replicas),
            revision_history_limit: Some(5),
            progress_deadline_seconds: Some(site.spec.high_availability.rollout_deadline_seconds),
            min_ready_seconds: Some(site.spec.high_availability.min_ready_seconds),
            selector: label_selector(site, Component::App),
            // Surge first, never below the desired count: a rollout keeps full capacity.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: pod_labels,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(termination_grace_period(site)),
                    service_account_name: Some(Names::service_account(&name)),
                    security_context: Some(security::app_pod_security(site)),
                    topology_spread_constraints: Some(topology_spread(site, Component::App)),
                    affinity: affinity(site, Component::App),
                    node_selector: placement::node_selector(site),
                    tolerations: Some(placement::tolerations(site)),
                    containers: vec![Container {
                        name: CONTAINER_NAME.into(),
                        image: Some(app.image.clone()),
                        image_pull_policy: Some(app.image_pull_policy.as_str().into()),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: app.port,
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }]),
                        env: Some(app_env(site, cluster_domain)),
                        resources: Some(resource_requirements(&app.resources)),
                        startup_probe: Some(http_probe("/livez", 2, 30)),
                        liveness_probe: Some(http_probe("/livez", 10, 3)),
                        readiness_probe: Some(http_probe("/readyz", 5, 2)),
                        lifecycle: pre_stop(site),
                        security_context: Some(restricted_container_security()),
                        volume_mounts: Some(vec![mount("tmp", "/tmp")]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![empty_dir("tmp", "64Mi")]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    fn env_map(d: &Deployment) -> Vec<(String, Option<String>, Option<String>)> {
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .iter()
            .flatten()
            .map(|e| {
                (
                    e.name.clone(),
                    e.value.clone(),
                    e.value_from
                        .as_ref()
                        .and_then(|v| v.secret_key_ref.as_ref())
                        .map(|s| format!("{}/{}", s.name, s.key)),
                )
            })
            .collect()
    }

    #[test]
    fn env_follows_the_app_contract() {
        let d = build(&site("news"), "cluster.local");
        let env = env_map(&d);
        let get = |n: &str| {
            env.iter()
                .find(|(name, _, _)| name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
                .clone()
        };
        assert_eq!(
            get("ARTICLES_LISTEN_ADDR").1.as_deref(),
            Some("0.0.0.0:8080")
        );
        assert_eq!(
            get("ARTICLES_DATABASE_HOST").1.as_deref(),
            Some("news-postgresql.news-ns.svc.cluster.local")
        );
        assert_eq!(get("ARTICLES_DATABASE_PORT").1.as_deref(), Some("5432"));
        assert_eq!(get("ARTICLES_DATABASE_NAME").1.as_deref(), Some("articles"));
        assert_eq!(
            get("ARTICLES_DATABASE_PASSWORD").2.as_deref(),
            Some("news-postgresql-credentials/password")
        );
        assert_eq!(
            get("ARTICLES_WRITE_TOKEN").2.as_deref(),
            Some("news-write-token/token")
        );
        assert_eq!(get("ARTICLES_DRAIN_DELAY_SECONDS").1.as_deref(), Some("5"));
        assert_eq!(get("ARTICLES_CACHE_ENABLED").1.as_deref(), Some("true"));
        assert_eq!(
            get("ARTICLES_CACHE_MAX_BYTES").1.as_deref(),
            Some("67108864")
        );
        assert_eq!(get("ARTICLES_CACHE_TTL_SECONDS").1.as_deref(), Some("600"));
        assert!(
            env.iter()
                .all(|(n, _, _)| n != "ARTICLES_CACHE_MAX_ENTRIES"),
            "the deprecated bound is set only when the spec has it"
        );
        let mut old = site("news");
        old.spec.app.cache.max_entries = Some(10_000);
        assert!(
            env_map(&build(&old, "cluster.local"))
                .iter()
                .any(|(n, v, _)| n == "ARTICLES_CACHE_MAX_ENTRIES" && v.as_deref() == Some("10000"))
        );
        assert_eq!(get("RUST_LOG").1.as_deref(), Some("info"));
        for n in [
            "ARTICLES_DATABASE_USER",
            "ARTICLES_DATABASE_POOL_SIZE",
            "ARTICLES_SHUTDOWN_TIMEOUT_SECONDS",
            "ARTICLES_CACHE_TTL_SECONDS",
            "ARTICLES_CACHE_MAX_BYTES",
            "ARTICLES_SITE_TITLE",
            "ARTICLES_PUBLIC_URL",
        ] {
            get(n);
        }
    }

    #[test]
    fn pods_are_hardened_and_spread() {
        let site = site("news");
        let d = build(&site, "cluster.local");
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(2 + 5 + 20 + 5));
        assert_eq!(spec.min_ready_seconds, Some(5));
        assert_eq!(
            spec.strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.clone()),
            Some(IntOrString::Int(0))
        );
        let pre_stop = pod.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref();
        assert_eq!(pre_stop.unwrap().sleep.as_ref().unwrap().seconds, 2);
        let tolerations = pod.tolerations.as_ref().unwrap();
        assert!(tolerations.iter().all(|t| t.toleration_seconds == Some(30)));
        assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let keys: Vec<_> = pod
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|t| t.topology_key.as_str())
            .collect();
        assert_eq!(
            keys,
            ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        );
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap().len(),
            3,
            "selector holds only the immutable labels"
        );
        assert_eq!(d.metadata.owner_references.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn spread_policy_requires_or_relaxes() {
        let mut site = site("news");
        let when = |site: &ArticleSite| -> Vec<String> {
            topology_spread(site, Component::App)
                .into_iter()
                .map(|t| t.when_unsatisfiable)
                .collect()
        };
        assert_eq!(when(&site), ["ScheduleAnyway", "ScheduleAnyway"]);
        site.spec.high_availability.spread = SpreadPolicy::Required;
        assert_eq!(when(&site), ["DoNotSchedule", "DoNotSchedule"]);
        assert!(
            topology_spread(&site, Component::App)
                .iter()
                .all(|t| t.max_skew == 1 && t.node_taints_policy.as_deref() == Some("Honor"))
        );
        site.spec.high_availability.spread = SpreadPolicy::None;
        assert!(when(&site).is_empty());
        assert!(affinity(&site, Component::App).is_none());
    }

    #[test]
    fn autoscaling_leaves_replicas_out() {
        let mut site = site("news");
        site.spec.app.autoscaling =
            Some(serde_json::from_value(serde_json::json!({"maxReplicas": 6})).unwrap());
        let d = build(&site, "cluster.local");
        assert_eq!(d.spec.as_ref().unwrap().replicas, None);
        let body = serde_json::to_value(&d).unwrap();
        assert!(
            body["spec"].get("replicas").is_none(),
            "the applied body has no replicas field: {}",
            body["spec"]
        );
    }

    #[test]
    fn extra_env_comes_last() {
        let mut site = site("news");
        site.spec.app.env = Some(vec![env("FEATURE_X", "1")]);
        let d = build(&site, "cluster.local");
        let env = env_map(&d);
        assert_eq!(env.last().unwrap().0, "FEATURE_X");
    }
}
