//! Observe: everything one reconcile reads, in one round of concurrent requests, into a plain
//! value. Nothing after this stage reads the API again (except the answers to its own writes),
//! so the plan and the status see one consistent snapshot and a steady reconcile costs one round
//! trip.
//!
//! Secrets are read as metadata only: the operator never reads a Secret's data after creating it.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::Resource as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;

use crate::act::CreatedSecret;
use crate::admission;
use crate::caches::Caches;
use crate::crd::ArticleSite;
use crate::error::{Error, Result};
use crate::resources::{self, Component, Names, statefulset};
use crate::secrets::Generated;
use crate::spread::NodeFacts;

/// What the cluster looked like at the start of a reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The cluster's DNS domain (a setting of the operator), for in-cluster URLs.
    pub cluster_domain: String,
    /// The image the backup Jobs run (a setting of the operator: its own image).
    pub backup_image: String,
    /// The backup objects, while `spec.backup` is set or was (`status.backup`).
    pub backup: BackupObserved,
    pub deployment: Option<Deployment>,
    pub statefulset: Option<StatefulSet>,
    pub service_account: Option<ServiceAccount>,
    /// The site's Services, budgets and policies that exist (looked up by their names).
    pub services: Vec<Service>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    pub ingress: Option<Ingress>,
    /// The app's HorizontalPodAutoscaler (the operator's while `spec.app.autoscaling` is set).
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// Metadata of the generated Secrets (never their data).
    pub credentials: Option<ObjectMeta>,
    pub write_token: Option<ObjectMeta>,
    /// Whether `spec.ingress.tls.secretName` exists; `None` when the spec names none to check.
    pub tls_secret_exists: Option<bool>,
    pub storage_class: StorageClassSeen,
    /// The database's data claims that exist.
    pub claims: Vec<PersistentVolumeClaim>,
    /// The app's ReplicaSets (by label; owners are checked where they are used).
    pub replica_sets: Vec<ReplicaSet>,
    /// The site's pods, app and database.
    pub pods: Vec<Pod>,
    /// node → zone ("" without a zone label), of every node of the cluster.
    pub nodes: BTreeMap<String, String>,
    /// What decides whether the scheduler could place a pod on each node (`spread`).
    pub node_facts: Vec<NodeFacts>,
    /// The newest fresh admission refusal of a database pod, when the StatefulSet lacks pods
    /// (a refusal shows only in a `FailedCreate` Event; see `admission`).
    pub database_refusal: Option<String>,
    /// The database's ServiceAccount, Role, RoleBinding and Patroni ConfigMap.
    pub database_service_account: Option<ServiceAccount>,
    pub database_role: Option<Role>,
    pub database_role_binding: Option<RoleBinding>,
    pub patroni_config: Option<ConfigMap>,
    /// The database's Endpoints, one list: Patroni's leader, config, sync and failover objects
    /// (`patroni::State::read` picks them by name).
    pub endpoints: Vec<Endpoints>,
    /// EndpointSlices the endpointslice controller made for the client Service while it still
    /// had a selector (before the upgrade to Patroni); the controller never removes them.
    pub stale_endpoint_slices: Vec<String>,
}

/// What exists of a site's backups.
#[derive(Clone, Debug, Default)]
pub struct BackupObserved {
    /// Whether `spec.backup` was looked at (else everything below is empty).
    pub looked: bool,
    pub config: Option<ConfigMap>,
    pub service_account: Option<ServiceAccount>,
    pub role: Option<Role>,
    pub role_binding: Option<RoleBinding>,
    pub cron_jobs: Vec<CronJob>,
    /// Every backup Job of the site (scheduled and on demand), by label.
    pub jobs: Vec<Job>,
    /// Whether the repository's credentials Secret exists (metadata only).
    pub credentials_exist: bool,
    /// Whether the CA Secret exists; `None` when the spec names none.
    pub ca_exists: Option<bool>,
}

impl Observed {
    /// Patroni's view of the site's database, from its Endpoints and database pods.
    pub fn patroni(&self, site: &ArticleSite) -> crate::patroni::State {
        crate::patroni::State::read(&site.name_any(), &self.endpoints, &self.database_pods())
    }

    /// The site's database pods.
    pub fn database_pods(&self) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| {
                p.labels()
                    .get("app.kubernetes.io/component")
                    .map(String::as_str)
                    == Some("database")
            })
            .collect()
    }

    /// The archive report of the primary's backup agent: the Patroni leader's pod, else the
    /// pod whose agent says it is the primary.
    pub fn archive_report(&self, site: &ArticleSite) -> Option<crate::archive::ArchiveReport> {
        let pods = self.database_pods();
        let leader = self.patroni(site).leader;
        let report = |p: &&Pod| crate::archive::ArchiveReport::of(p);
        pods.iter()
            .find(|p| leader.as_deref() == Some(p.name_any().as_str()))
            .and_then(report)
            .or_else(|| pods.iter().filter_map(report).find(|r| r.primary))
    }

    /// What is known of node `name` (cordon, taints), from the node cache.
    pub fn node(&self, name: &str) -> Option<&NodeFacts> {
        self.node_facts.iter().find(|n| n.name == name)
    }
}

impl Observed {
    /// Completes the observation with the Secrets this reconcile created (the create's answers),
    /// so that a second plan sees them without reading them again.
    pub fn record_created(&mut self, created: &[CreatedSecret]) {
        for c in created {
            let seen = match c.which {
                Generated::DatabaseCredentials => &mut self.credentials,
                Generated::WriteToken => &mut self.write_token,
            };
            *seen = Some(c.metadata.clone());
        }
    }
}

/// What the cluster offers for `spec.database.storage.storageClass`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StorageClassSeen {
    /// The named class exists, or a default class exists for a spec without one.
    #[default]
    Available,
    /// The named class does not exist.
    NamedMissing(String),
    /// No class is named and the cluster has no default class.
    NoDefault,
}

fn namespaced<K>(client: &Client, ns: &str) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), ns)
}

/// GET that maps 404 to `None`.
async fn get_opt<K>(api: Api<K>, name: String) -> Result<Option<K>>
where
    K: k8s_openapi::Resource + kube::Resource + DeserializeOwned + Clone + Debug,
{
    api.get_opt(&name)
        .await
        .map_err(Error::kube("get", K::KIND))
}

/// The objects of `names` that exist, read concurrently.
async fn get_named<K>(api: Api<K>, names: Vec<String>) -> Result<Vec<K>>
where
    K: k8s_openapi::Resource + kube::Resource + DeserializeOwned + Clone + Debug,
{
    let found =
        futures::future::try_join_all(names.into_iter().map(|n| get_opt(api.clone(), n))).await?;
    Ok(found.into_iter().flatten().collect())
}

async fn list<K>(api: Api<K>, selector: &str) -> Result<Vec<K>>
where
    K: k8s_openapi::Resource + kube::Resource + DeserializeOwned + Clone + Debug,
{
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(Error::kube("list", K::KIND))?
        .items)
}

/// One round of concurrent reads (plus, only while the StatefulSet lacks pods, its Events);
/// nodes, StorageClasses and claims come from the watch-backed `caches`.
pub async fn observe(
    client: &Client,
    caches: &Caches,
    site: &ArticleSite,
    cluster_domain: &str,
    backup_image: &str,
) -> Result<Observed> {
    let ns = site
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = site.name_any();
    let secrets: Api<Secret> = namespaced(client, &ns);
    let app_selector =
        resources::selector_string(&resources::selector_labels(site, Component::App));
    let instance_selector = format!(
        "app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={}",
        resources::MANAGED_BY
    );
    // Patroni labels its Endpoints with the database pods' selector labels.
    let database_selector =
        format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=database");
    let database_service = Names::database(&name);
    let secret_meta = |secret: String| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_metadata_opt(&secret)
                .await
                .map(|m| m.map(|m| m.metadata))
                .map_err(Error::kube("get", Secret::KIND))
        }
    };
    let tls_secret = site
        .spec
        .ingress
        .as_ref()
        .and_then(|i| i.tls.as_ref())
        .filter(|t| t.issuer.is_none() && t.cluster_issuer.is_none())
        .and_then(|t| t.secret_name.clone());

    let (
        deployment,
        statefulset,
        service_account,
        services,
        pdbs,
        network_policies,
        ingress,
        credentials,
        write_token,
        tls_secret_exists,
        replica_sets,
        pods,
        (
            database_service_account,
            database_role,
            database_role_binding,
            patroni_config,
            autoscaler,
        ),
        endpoints,
        stale_endpoint_slices,
        backup,
    ) = futures::try_join!(
        get_opt(namespaced::<Deployment>(client, &ns), Names::app(&name)),
        get_opt(
            namespaced::<StatefulSet>(client, &ns),
            Names::database(&name)
        ),
        get_opt(
            namespaced::<ServiceAccount>(client, &ns),
            Names::service_account(&name)
        ),
        get_named(
            namespaced::<Service>(client, &ns),
            vec![
                Names::app(&name),
                Names::database_headless(&name),
                Names::database(&name),
                Names::database_replicas(&name),
                Names::database_config(&name)
            ]
        ),
        get_named(
            namespaced::<PodDisruptionBudget>(client, &ns),
            vec![
                Names::app(&name),
                Names::database(&name),
                Names::database_primary_pdb(&name)
            ]
        ),
        get_named(
            namespaced::<NetworkPolicy>(client, &ns),
            vec![Names::database(&name), Names::app(&name)]
        ),
        get_opt(namespaced::<Ingress>(client, &ns), Names::app(&name)),
        secret_meta(Names::database_credentials(&name)),
        secret_meta(Names::write_token(&name)),
        async {
            match &tls_secret {
                Some(s) => secret_meta(s.clone()).await.map(|m| Some(m.is_some())),
                None => Ok(None),
            }
        },
        list(namespaced::<ReplicaSet>(client, &ns), &app_selector),
        list(namespaced::<Pod>(client, &ns), &instance_selector),
        async {
            futures::try_join!(
                get_opt(
                    namespaced::<ServiceAccount>(client, &ns),
                    Names::database_service_account(&name)
                ),
                get_opt(
                    namespaced::<Role>(client, &ns),
                    Names::database_service_account(&name)
                ),
                get_opt(
                    namespaced::<RoleBinding>(client, &ns),
                    Names::database_service_account(&name)
                ),
                get_opt(
                    namespaced::<ConfigMap>(client, &ns),
                    Names::patroni_config(&name)
                ),
                get_opt(
                    namespaced::<HorizontalPodAutoscaler>(client, &ns),
                    Names::app(&name)
                ),
            )
        },
        list(namespaced::<Endpoints>(client, &ns), &database_selector),
        controller_slices(client, &ns, &database_service),
        observe_backup(client, site, &ns),
    )?;
    let storage_class = storage_class(caches, site);
    let claims = caches
        .claim(&ns, &statefulset::pvc_name(&name, 0))
        .map(|c| (*c).clone())
        .into_iter()
        .collect();
    let node_facts: Vec<NodeFacts> = caches.nodes().iter().map(|n| NodeFacts::of(n)).collect();
    let nodes = node_facts
        .iter()
        .map(|n| (n.name.clone(), n.zone.clone()))
        .collect();

    let database_refusal = match &statefulset {
        Some(sts) if admission::missing_pods(sts) => {
            let events = statefulset_events(&namespaced::<Event>(client, &ns), sts).await?;
            let newest_pod = pods
                .iter()
                .filter(|p| {
                    p.labels()
                        .get("app.kubernetes.io/component")
                        .map(String::as_str)
                        == Some("database")
                })
                .filter_map(|p| p.metadata.creation_timestamp.as_ref())
                .map(|t| t.0.as_second())
                .max()
                .unwrap_or(0);
            admission::latest_failure(
                &events,
                k8s_openapi::jiff::Timestamp::now().as_second(),
                newest_pod,
            )
        }
        _ => None,
    };

    Ok(Observed {
        cluster_domain: cluster_domain.to_string(),
        backup_image: backup_image.to_string(),
        backup,
        deployment,
        statefulset,
        service_account,
        services,
        pdbs,
        network_policies,
        ingress,
        autoscaler,
        credentials,
        write_token,
        tls_secret_exists,
        storage_class,
        claims,
        replica_sets,
        pods,
        nodes,
        node_facts,
        database_refusal,
        database_service_account,
        database_role,
        database_role_binding,
        patroni_config,
        endpoints,
        stale_endpoint_slices,
    })
}

/// The backup objects of a site whose spec asks for backups, or whose status says it did
/// (their removal is then planned); nothing is read for the others.
async fn observe_backup(client: &Client, site: &ArticleSite, ns: &str) -> Result<BackupObserved> {
    let had = site.status.as_ref().is_some_and(|s| s.backup.is_some());
    if site.spec.backup.is_none() && !had {
        return Ok(BackupObserved::default());
    }
    let name = site.name_any();
    let secrets: Api<Secret> = namespaced(client, ns);
    let exists = |secret: Option<String>| {
        let secrets = secrets.clone();
        async move {
            match secret {
                Some(s) => secrets
                    .get_metadata_opt(&s)
                    .await
                    .map(|m| Some(m.is_some()))
                    .map_err(Error::kube("get", Secret::KIND)),
                None => Ok(None),
            }
        }
    };
    let spec = site.spec.backup.as_ref();
    let selector = resources::selector_string(&resources::selector_labels(site, Component::Backup));
    let (config, service_account, role, role_binding, cron_jobs, jobs, credentials, ca) = futures::try_join!(
        get_opt(
            namespaced::<ConfigMap>(client, ns),
            Names::backup_config(&name)
        ),
        get_opt(
            namespaced::<ServiceAccount>(client, ns),
            Names::backup(&name)
        ),
        get_opt(namespaced::<Role>(client, ns), Names::backup(&name)),
        get_opt(namespaced::<RoleBinding>(client, ns), Names::backup(&name)),
        get_named(
            namespaced::<CronJob>(client, ns),
            [
                resources::backup::BackupType::Full,
                resources::backup::BackupType::Diff
            ]
            .into_iter()
            .map(|k| resources::backup::cron_job_name(&name, k))
            .collect()
        ),
        list(namespaced::<Job>(client, ns), &selector),
        exists(spec.map(|b| b.s3.credentials_secret.clone())),
        exists(spec.and_then(|b| b.s3.ca_secret.as_ref().map(|c| c.name.clone()))),
    )?;
    Ok(BackupObserved {
        looked: true,
        config,
        service_account,
        role,
        role_binding,
        cron_jobs,
        jobs,
        credentials_exist: credentials.unwrap_or(false),
        ca_exists: ca,
    })
}

/// Names of the EndpointSlices of Service `service` that the endpointslice controller manages.
async fn controller_slices(client: &Client, ns: &str, service: &str) -> Result<Vec<String>> {
    let selector = format!(
        "kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
    );
    Ok(namespaced::<EndpointSlice>(client, ns)
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list", EndpointSlice::KIND))?
        .items
        .into_iter()
        .map(|s| s.name_any())
        .collect())
}

/// Whether the StorageClass the database claims would use exists.
fn storage_class(caches: &Caches, site: &ArticleSite) -> StorageClassSeen {
    match &site.spec.database.storage.storage_class {
        Some(class) => match caches.storage_class(class) {
            Some(_) => StorageClassSeen::Available,
            None => StorageClassSeen::NamedMissing(class.clone()),
        },
        None => {
            let is_default = |c: &PartialObjectMeta<StorageClass>| {
                let a = c.annotations();
                [
                    "storageclass.kubernetes.io/is-default-class",
                    "storageclass.beta.kubernetes.io/is-default-class",
                ]
                .iter()
                .any(|k| a.get(*k).map(String::as_str) == Some("true"))
            };
            if caches.storage_classes().iter().any(|c| is_default(c)) {
                StorageClassSeen::Available
            } else {
                StorageClassSeen::NoDefault
            }
        }
    }
}

/// The `FailedCreate` Events of this StatefulSet (its uid, not only its name).
async fn statefulset_events(events: &Api<Event>, sts: &StatefulSet) -> Result<Vec<Event>> {
    let fields = format!(
        "involvedObject.kind=StatefulSet,involvedObject.name={},reason=FailedCreate",
        sts.name_any()
    );
    let list = events
        .list(&ListParams::default().fields(&fields))
        .await
        .map_err(Error::kube("list", Event::KIND))?;
    let uid = sts.uid();
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.involved_object.uid == uid)
        .collect())
}
