//! Pure builders: `ArticleSite` → desired child objects. No API calls here; every builder is a
//! function of the site (and, where the API forces it, of a live object) and is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::{ArticleSite, ComputeResources};

pub mod autoscaler;
pub mod backup;
pub mod deployment;
pub mod ingress;
pub mod network_policy;
pub mod patroni_config;
pub mod pdb;
pub mod placement;
pub mod rbac;
pub mod secret;
pub mod security;
pub mod service;
pub mod statefulset;

/// Value of `app.kubernetes.io/managed-by`; the operator watches children by this label.
pub const MANAGED_BY: &str = "articlesite-operator";
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=articlesite-operator";
/// PostgreSQL port inside the pod and on the database Services.
pub const POSTGRES_PORT: i32 = 5432;
/// Patroni's REST API (health probes, `/failsafe` between members).
pub const PATRONI_PORT: i32 = 8008;
/// Port of the app Service.
pub const HTTP_SERVICE_PORT: i32 = 80;
/// Key names inside the generated Secrets.
pub const DB_USERNAME_KEY: &str = "username";
pub const DB_PASSWORD_KEY: &str = "password";
pub const WRITE_TOKEN_KEY: &str = "token";

/// The two parts of a site, which get different `app.kubernetes.io/name` and `component` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    App,
    Database,
    /// The backup Jobs (`backup`).
    Backup,
}

impl Component {
    fn name_label(self) -> &'static str {
        match self {
            Component::App => "article-server",
            Component::Database => "postgresql",
            Component::Backup => "pgbackrest",
        }
    }
    fn component_label(self) -> &'static str {
        match self {
            Component::App => "app",
            Component::Database => "database",
            Component::Backup => "backup",
        }
    }
}

/// Names of every child of a site. The CRD limits `metadata.name` to 40 characters so that all of
/// these stay valid DNS labels.
pub struct Names;

impl Names {
    pub fn app(site: &str) -> String {
        site.to_string()
    }
    pub fn database(site: &str) -> String {
        format!("{site}-postgresql")
    }
    pub fn database_headless(site: &str) -> String {
        format!("{site}-postgresql-hl")
    }
    /// The read-only Service over the replicas.
    pub fn database_replicas(site: &str) -> String {
        format!("{site}-postgresql-replicas")
    }
    /// The headless selector-less Service that keeps Patroni's `-config` Endpoints alive.
    pub fn database_config(site: &str) -> String {
        format!("{site}-postgresql-config")
    }
    /// The ConfigMap with `patroni.yml`.
    pub fn patroni_config(site: &str) -> String {
        format!("{site}-postgresql-patroni")
    }
    /// ServiceAccount, Role and RoleBinding of the database pods (Patroni's API access).
    pub fn database_service_account(site: &str) -> String {
        Self::database(site)
    }
    /// The budget that keeps the primary from being evicted directly.
    pub fn database_primary_pdb(site: &str) -> String {
        format!("{site}-postgresql-primary")
    }
    pub fn database_credentials(site: &str) -> String {
        format!("{site}-postgresql-credentials")
    }
    pub fn write_token(site: &str) -> String {
        format!("{site}-write-token")
    }
    /// The site's own ServiceAccount (no RBAC), used by its app and database pods.
    pub fn service_account(site: &str) -> String {
        site.to_string()
    }
    /// ServiceAccount, Role and RoleBinding of the backup Jobs; prefix of their CronJobs.
    pub fn backup(site: &str) -> String {
        format!("{site}-backup")
    }
    /// The ConfigMap with `pgbackrest.conf`.
    pub fn backup_config(site: &str) -> String {
        format!("{site}-pgbackrest")
    }
    pub fn default_tls_secret(site: &str) -> String {
        format!("{site}-tls")
    }
}

/// Labels that select the pods of one component of one site. Never changes for a site: the
/// selectors of Deployments and StatefulSets are immutable.
pub fn selector_labels(site: &ArticleSite, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".into(),
            component.name_label().into(),
        ),
        ("app.kubernetes.io/instance".into(), site.name_any()),
        (
            "app.kubernetes.io/component".into(),
            component.component_label().into(),
        ),
    ])
}

/// The recommended `app.kubernetes.io/*` labels of every child.
pub fn labels(site: &ArticleSite, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(site, component);
    labels.insert("app.kubernetes.io/part-of".into(), "articlesite".into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    let image = match component {
        Component::App => &site.spec.app.image,
        Component::Database | Component::Backup => &site.spec.database.image,
    };
    if let Some(version) = image_version(image) {
        labels.insert("app.kubernetes.io/version".into(), version);
    }
    labels
}

/// `a=b,c=d` form of a label map (scale subresource selector).
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn label_selector(site: &ArticleSite, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(site, component)),
        ..Default::default()
    }
}

/// The tag of an image reference when it is a valid label value (digest-only images have none).
pub fn image_version(image: &str) -> Option<String> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let (_, tag) = last.split_once(':')?;
    let valid = !tag.is_empty()
        && tag.len() <= 63
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric())
        && tag.ends_with(|c: char| c.is_ascii_alphanumeric());
    valid.then(|| tag.to_string())
}

/// A controller owner reference to the site, so that deleting the site garbage-collects the child.
pub fn owner_reference(site: &ArticleSite) -> OwnerReference {
    // Foreground deletion of the site waits for its children.
    OwnerReference {
        api_version: ArticleSite::api_version(&()).into_owned(),
        kind: ArticleSite::kind(&()).into_owned(),
        name: site.name_any(),
        uid: site.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of a child: name, namespace, labels and the owner reference.
pub fn object_meta(site: &ArticleSite, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: site.namespace(),
        labels: Some(labels(site, component)),
        owner_references: Some(vec![owner_reference(site)]),
        ..Default::default()
    }
}

pub fn resource_requirements(r: &ComputeResources) -> ResourceRequirements {
    ResourceRequirements {
        requests: r.requests.clone(),
        limits: r.limits.clone(),
        ..Default::default()
    }
}

/// Requests and limits of a small container of the operator's own, which users do not
/// size (the backup agent, the backup Job).
pub fn fixed_requirements(
    requests: &[(&str, &str)],
    limits: &[(&str, &str)],
) -> ResourceRequirements {
    resource_requirements(&ComputeResources {
        requests: crate::crd::quantities(requests),
        limits: crate::crd::quantities(limits),
    })
}

/// The site's in-cluster URL, served by the app Service on port 80.
pub fn in_cluster_url(site: &ArticleSite, cluster_domain: &str) -> String {
    format!(
        "http://{}.{}.svc.{cluster_domain}",
        Names::app(&site.name_any()),
        site.namespace().unwrap_or_default()
    )
}

/// ARTICLES_PUBLIC_URL: the Ingress host when there is one, else the in-cluster URL.
pub fn public_url(site: &ArticleSite, cluster_domain: &str) -> String {
    match &site.spec.ingress {
        Some(ingress) => {
            let scheme = if ingress.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", ingress.host.trim_start_matches("*."))
        }
        None => in_cluster_url(site, cluster_domain),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::crd::{ArticleSite, ArticleSiteSpec};

    /// A site as the API server returns it: defaults applied, uid and namespace set.
    pub fn site(name: &str) -> ArticleSite {
        let spec: ArticleSiteSpec = serde_json::from_value(serde_json::json!({
            "app": {"image": "ghcr.io/example/article-server:1.2.0", "replicas": 3},
        }))
        .expect("spec");
        let mut site = ArticleSite::new(name, spec);
        site.metadata.namespace = Some("news-ns".into());
        site.metadata.uid = Some("0d9e3c1a-5b2f-4a7e-9c1d-2f6b8e4a1c3d".into());
        site.metadata.generation = Some(1);
        site
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_recommended_set() {
        let site = testing::site("news");
        let l = labels(&site, Component::App);
        assert_eq!(l["app.kubernetes.io/name"], "article-server");
        assert_eq!(l["app.kubernetes.io/instance"], "news");
        assert_eq!(l["app.kubernetes.io/component"], "app");
        assert_eq!(l["app.kubernetes.io/part-of"], "articlesite");
        assert_eq!(l["app.kubernetes.io/managed-by"], "articlesite-operator");
        assert_eq!(l["app.kubernetes.io/version"], "1.2.0");
        let db = labels(&site, Component::Database);
        assert_eq!(db["app.kubernetes.io/name"], "postgresql");
        assert_eq!(db["app.kubernetes.io/version"], "0.1.0");
    }

    #[test]
    fn image_versions() {
        assert_eq!(image_version("postgres:17").as_deref(), Some("17"));
        assert_eq!(
            image_version("localhost:5000/a/b:v1.2").as_deref(),
            Some("v1.2")
        );
        assert_eq!(image_version("localhost:5000/a/b"), None);
        assert_eq!(image_version(&format!("a@sha256:{}", "0".repeat(64))), None);
    }

    #[test]
    fn owner_reference_is_controller() {
        let site = testing::site("news");
        let o = owner_reference(&site);
        assert_eq!(o.kind, "ArticleSite");
        assert_eq!(o.api_version, "articlesite.io/v1alpha1");
        assert_eq!(o.controller, Some(true));
        assert_eq!(o.block_owner_deletion, Some(true));
    }

    #[test]
    fn urls() {
        let mut site = testing::site("news");
        assert_eq!(
            in_cluster_url(&site, "cluster.local"),
            "http://news.news-ns.svc.cluster.local"
        );
        assert_eq!(
            public_url(&site, "cluster.local"),
            "http://news.news-ns.svc.cluster.local"
        );
        site.spec.ingress = Some(
            serde_json::from_value(
                serde_json::json!({"host": "news.example.com", "tls": {"secretName": "x"}}),
            )
            .expect("ingress"),
        );
        assert_eq!(
            public_url(&site, "cluster.local"),
            "https://news.example.com"
        );
    }
}
