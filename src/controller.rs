//! Context, reconcile, error_policy and the Controller wiring.
//!
//! One reconcile: check what only the user can fix (StorageClass, TLS Secret), create the
//! generated Secrets once, apply each child that differs from its live object, then write the
//! status if it changed and publish Events for condition transitions. At steady state this sends
//! reads only.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, Node, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, PartialObjectMeta, Patch, PatchParams,
};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, info, info_span, warn};

use crate::MANAGER;
use crate::admission;
use crate::apply::{self, Outcome};
use crate::crd::{ArticleSite, AvailabilityStatus, CredentialsStatus, FailedRollout};
use crate::error::{Error, Result, backoff_with_jitter};
use crate::ha::{self, RestartPlan, RolloutPlan};
use crate::metrics::Metrics;
use crate::resources::{self, Names, statefulset};
use crate::secrets::{self, Created, Generated, WriteToken};
use crate::status::{self, Observed, Problem};
use crate::watches;

/// Settings of the `run` subcommand that the reconciler needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to reconcile; empty means all namespaces.
    pub namespaces: Vec<String>,
    pub concurrency: u16,
    pub cluster_domain: String,
    /// Periodic re-check of every site even without events (reads only at steady state).
    pub resync: Duration,
    /// Trailing-edge debounce of reconcile triggers (kube-runtime's `Config::debounce`).
    pub debounce: Duration,
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub settings: Settings,
    /// Consecutive failures per site, for per-object exponential backoff.
    failures: Mutex<HashMap<ObjectRef<ArticleSite>, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            failures: Mutex::default(),
        }
    }

    fn failures_of(&self, site: &ArticleSite, bump: bool) -> u32 {
        let key = ObjectRef::from(site);
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if bump {
            let n = map.entry(key).or_insert(0);
            *n += 1;
            *n
        } else {
            map.remove(&key);
            0
        }
    }
}

/// Typed APIs of one namespace.
struct Apis {
    deployments: Api<Deployment>,
    statefulsets: Api<StatefulSet>,
    services: Api<Service>,
    secrets: Api<Secret>,
    pdbs: Api<PodDisruptionBudget>,
    network_policies: Api<NetworkPolicy>,
    ingresses: Api<Ingress>,
    pvcs: Api<PersistentVolumeClaim>,
    service_accounts: Api<ServiceAccount>,
    events: Api<CoreEvent>,
    sites: Api<ArticleSite>,
    storage_classes: Api<StorageClass>,
}

impl Apis {
    fn new(client: &Client, ns: &str) -> Self {
        Self {
            deployments: Api::namespaced(client.clone(), ns),
            statefulsets: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client.clone(), ns),
            pdbs: Api::namespaced(client.clone(), ns),
            network_policies: Api::namespaced(client.clone(), ns),
            ingresses: Api::namespaced(client.clone(), ns),
            pvcs: Api::namespaced(client.clone(), ns),
            service_accounts: Api::namespaced(client.clone(), ns),
            events: Api::namespaced(client.clone(), ns),
            sites: Api::namespaced(client.clone(), ns),
            storage_classes: Api::all(client.clone()),
        }
    }
}

struct Reconciler<'a> {
    site: &'a ArticleSite,
    ctx: &'a Context,
    apis: Apis,
    name: String,
    problems: Vec<Problem>,
    /// Children the API server rejected during this reconcile (applies borrow `self` shared).
    rejected: Mutex<Vec<Problem>>,
    /// The write token's rotation state, when the Secret was read this reconcile.
    credentials: Option<CredentialsStatus>,
    /// What the high-availability checks saw and did during this reconcile.
    ha: HaState,
}

/// Observations and actions of the high-availability part of one reconcile.
#[derive(Default)]
struct HaState {
    /// Pods and nodes were read (not when paused).
    observed: bool,
    app_pods: Vec<Pod>,
    /// node → zone
    nodes: std::collections::BTreeMap<String, String>,
    restarted: bool,
    rolled_back: bool,
    failed: Option<FailedRollout>,
    /// Look again this soon (an unready pod nearing its threshold, a backoff ending).
    recheck: Option<Duration>,
}

/// What a reconcile read at its start (see `Reconciler::read_live`).
struct Live {
    statefulset: Option<StatefulSet>,
    deployment: Option<Deployment>,
    service_account: Option<ServiceAccount>,
    /// In the order of the desired Services, PDBs and NetworkPolicies of `run`.
    services: Vec<Option<Service>>,
    pdbs: Vec<Option<PodDisruptionBudget>>,
    policies: Vec<Option<NetworkPolicy>>,
    ingress: Option<Ingress>,
    credentials: Option<Secret>,
    write_token: Option<Secret>,
    /// The app's ReplicaSets (all with its labels; the owner is checked where they are used).
    replica_sets: Vec<ReplicaSet>,
    /// The site's pods, app and database.
    pods: Vec<Pod>,
    /// node → zone
    nodes: std::collections::BTreeMap<String, String>,
}

pub async fn reconcile(site: Arc<ArticleSite>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start_reconcile();
    let ns = site
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    if site.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector delete every child.
        return Ok(Action::await_change());
    }
    let span = info_span!("reconcile", site = %site.name_any(), namespace = %ns);
    let r = Reconciler {
        site: &site,
        ctx: &ctx,
        apis: Apis::new(&ctx.client, &ns),
        name: site.name_any(),
        problems: Vec::new(),
        rejected: Mutex::default(),
        credentials: None,
        ha: HaState::default(),
    };
    let action = r.run().instrument(span).await?;
    ctx.failures_of(&site, false);
    Ok(action)
}

/// Transient errors retry with per-site exponential backoff with jitter (sites that failed
/// together retry spread out); other sites are unaffected because the controller reconciles sites
/// concurrently and schedules each retry per object.
pub fn error_policy(site: Arc<ArticleSite>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failures_of(&site, true);
    let delay = backoff_with_jitter(failures.saturating_sub(1));
    ctx.metrics.error(error.reason());
    warn!(site = %site.name_any(), namespace = ?site.namespace(), %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

impl Reconciler<'_> {
    async fn run(mut self) -> Result<Action> {
        let site = self.site;
        let resync = self.ctx.settings.resync;
        if site.spec.paused {
            let (app, database) = (Names::app(&self.name), Names::database(&self.name));
            let (deployment, sts) = futures::try_join!(
                apply::get_opt(&self.apis.deployments, &app),
                apply::get_opt(&self.apis.statefulsets, &database),
            )?;
            self.update_status(deployment.as_ref(), sts.as_ref(), true)
                .await?;
            return Ok(Action::requeue(resync));
        }

        // Desired objects that need nothing live; then one round of concurrent reads.
        let service_account = resources::security::service_account(site);
        let services = [
            resources::service::app(site),
            resources::service::database_headless(site),
            resources::service::database_client(site),
        ];
        let pdbs = [resources::pdb::app(site), resources::pdb::database(site)];
        let policies = [
            resources::network_policy::database(site),
            resources::network_policy::app(site),
        ];
        let mut live = self
            .read_live(&service_account, &services, &pdbs, &policies)
            .await?;

        self.check_environment(live.statefulset.is_some()).await?;
        if self
            .ensure_secrets(live.statefulset.is_some(), &live)
            .await?
        {
            // Rare (first reconcile): the checksum below is of the Secrets as created.
            (live.credentials, live.write_token) = self.read_secrets().await?;
        }
        let write_token = self.rotate_write_token(live.write_token.as_ref()).await?;
        if write_token.as_ref().is_some_and(|t| t.rotated_now) {
            (live.credentials, live.write_token) = self.read_secrets().await?;
        }

        // Pods name the ServiceAccount: it must exist before they are created.
        self.apply_child_with_live(
            &self.apis.service_accounts,
            service_account,
            live.service_account.take(),
        )
        .await?;
        let domain = self.ctx.settings.cluster_domain.clone();
        let mut desired_deployment = resources::deployment::build(site, &domain);
        if let (Some(token), Some(spec)) = (&write_token, desired_deployment.spec.as_mut()) {
            resources::security::set_credentials_version(&mut spec.template, &token.version);
        }
        let desired = self.ha_deployment(desired_deployment, &live).await?;

        let storage_blocked = self.problems.iter().any(|p| p.blocks_database);
        let sts_live = live.statefulset.take();
        let had_sts = sts_live.is_some();
        let claim_size = sts_live
            .as_ref()
            .and_then(statefulset::claim_template_size)
            .unwrap_or_else(|| site.spec.database.storage.size.clone());
        let desired_sts = (!storage_blocked).then(|| statefulset::build(site, &claim_size));

        // The children do not depend on one another: apply (or confirm) them all at once.
        let (deployment, sts, _, _, _, _) = futures::try_join!(
            self.apply_child_with_live(&self.apis.deployments, desired, live.deployment.take()),
            async {
                match desired_sts {
                    Some(d) => {
                        self.apply_child_with_live(&self.apis.statefulsets, d, sts_live)
                            .await
                    }
                    None => Ok(sts_live),
                }
            },
            self.apply_all(
                &self.apis.services,
                Vec::from(services),
                std::mem::take(&mut live.services)
            ),
            self.apply_all(
                &self.apis.pdbs,
                Vec::from(pdbs),
                std::mem::take(&mut live.pdbs)
            ),
            self.apply_all(
                &self.apis.network_policies,
                Vec::from(policies),
                std::mem::take(&mut live.policies)
            ),
            self.reconcile_ingress(live.ingress.take()),
        )?;
        if had_sts && !storage_blocked {
            self.expand_storage(&claim_size).await?;
        }

        // A refused database pod shows only in an Event, which triggers no reconcile: look
        // again soon while the pod is missing.
        let mut next = resync;
        if let Some(sts) = &sts
            && admission::missing_pods(sts)
        {
            next = next.min(Duration::from_secs(5));
            if let Some(problem) = admission::statefulset_refusal(&self.apis.events, sts).await? {
                self.problems.push(problem);
            }
        }

        self.ha_heal(deployment.as_ref(), sts.as_ref(), live.pods, live.nodes)
            .await?;
        self.update_status(deployment.as_ref(), sts.as_ref(), false)
            .await?;
        Ok(Action::requeue(
            self.ha.recheck.map_or(next, |r| r.min(next)),
        ))
    }

    /// Everything a reconcile reads, in one round of concurrent requests: at steady state a
    /// reconcile then costs one round trip instead of a dozen sequential ones (the latency that
    /// bounded convergence at 1,000 sites).
    async fn read_live(
        &self,
        service_account: &ServiceAccount,
        services: &[Service],
        pdbs: &[PodDisruptionBudget],
        policies: &[NetworkPolicy],
    ) -> Result<Live> {
        let a = &self.apis;
        let site = self.site;
        let app_selector = resources::selector_string(&resources::selector_labels(
            site,
            resources::Component::App,
        ));
        let instance_selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={}",
            self.name,
            resources::MANAGED_BY
        );
        let (app, database) = (Names::app(&self.name), Names::database(&self.name));
        let service_account = service_account.name_any();
        let replica_sets: Api<ReplicaSet> = Api::namespaced(
            self.ctx.client.clone(),
            &site.namespace().unwrap_or_default(),
        );
        let (
            statefulset,
            deployment,
            service_account,
            services,
            pdbs,
            policies,
            ingress,
            (credentials, write_token),
            replica_sets,
            pods,
            nodes,
        ) = futures::try_join!(
            apply::get_opt(&a.statefulsets, &database),
            apply::get_opt(&a.deployments, &app),
            apply::get_opt(&a.service_accounts, &service_account),
            get_all(&a.services, services),
            get_all(&a.pdbs, pdbs),
            get_all(&a.network_policies, policies),
            apply::get_opt(&a.ingresses, &app),
            self.read_secrets(),
            async {
                replica_sets
                    .list(&ListParams::default().labels(&app_selector))
                    .await
                    .map_err(Error::kube("list", "ReplicaSet"))
            },
            async {
                self.pods_api()
                    .list(&ListParams::default().labels(&instance_selector))
                    .await
                    .map_err(Error::kube("list", "Pod"))
            },
            self.read_nodes(),
        )?;
        Ok(Live {
            statefulset,
            deployment,
            service_account,
            services,
            pdbs,
            policies,
            ingress,
            credentials,
            write_token,
            replica_sets: replica_sets.items,
            pods: pods.items,
            nodes,
        })
    }

    /// The two generated Secrets (database credentials, write token), read concurrently.
    async fn read_secrets(&self) -> Result<(Option<Secret>, Option<Secret>)> {
        let credentials = Names::database_credentials(&self.name);
        let write_token = Names::write_token(&self.name);
        futures::try_join!(
            apply::get_opt(&self.apis.secrets, &credentials),
            apply::get_opt(&self.apis.secrets, &write_token),
        )
    }

    /// node → zone, from node metadata.
    async fn read_nodes(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(Api::<Node>::all(self.ctx.client.clone())
            .list_metadata(&ListParams::default())
            .await
            .map_err(Error::kube("list", "Node"))?
            .items
            .into_iter()
            .map(|n| (n.name_any(), ha::zone_of(n.metadata.labels.as_ref())))
            .collect())
    }

    /// Rotates the write token when a new `articlesite.io/rotate-credentials` value asks for it.
    async fn rotate_write_token(&mut self, live: Option<&Secret>) -> Result<Option<WriteToken>> {
        let token = secrets::reconcile_write_token(&self.apis.secrets, self.site, live).await?;
        if let Some(t) = &token {
            self.credentials = t.rotation.as_ref().map(|r| CredentialsStatus {
                write_token_rotation: Some(r.clone()),
            });
            if t.rotated_now {
                self.ctx.metrics.write("update", "Secret");
                let name = Names::write_token(&self.name);
                info!(secret = %name, "rotated the write token");
                self.event(
                    false,
                    "CredentialsRotated",
                    format!(
                        "generated a new write token in Secret {name} for {} {:?}; the app pods roll to it",
                        secrets::ROTATE_ANNOTATION,
                        t.rotation.as_deref().unwrap_or_default()
                    ),
                );
            }
        }
        Ok(token)
    }

    /// Problems only the user can fix. StorageClasses are checked before the StatefulSet exists:
    /// its claim template is immutable, so it is not created with a class that is missing.
    async fn check_environment(&mut self, sts_exists: bool) -> Result<()> {
        let site = self.site;
        if !sts_exists {
            match &site.spec.database.storage.storage_class {
                Some(class) => {
                    if apply::get_opt(&self.apis.storage_classes, class)
                        .await?
                        .is_none()
                    {
                        self.problems.push(Problem {
                            reason: "StorageClassNotFound",
                            message: format!(
                                "spec.database.storage.storageClass: StorageClass {class:?} does not exist; create it or choose an existing class"
                            ),
                            blocks_database: true,
                        });
                    }
                }
                None => {
                    let classes = self
                        .apis
                        .storage_classes
                        .list_metadata(&ListParams::default())
                        .await
                        .map_err(Error::kube("list", "StorageClass"))?;
                    let has_default = classes.items.iter().any(|c| {
                        let a = c.annotations();
                        a.get("storageclass.kubernetes.io/is-default-class")
                            .map(String::as_str)
                            == Some("true")
                            || a.get("storageclass.beta.kubernetes.io/is-default-class")
                                .map(String::as_str)
                                == Some("true")
                    });
                    if !has_default {
                        self.problems.push(Problem {
                            reason: "NoDefaultStorageClass",
                            message: "spec.database.storage.storageClass is unset and the cluster has no default StorageClass; set storageClass".into(),
                            blocks_database: true,
                        });
                    }
                }
            }
        }
        if let Some(tls) = site.spec.ingress.as_ref().and_then(|i| i.tls.as_ref())
            && let Some(secret) = &tls.secret_name
            && tls.issuer.is_none()
            && tls.cluster_issuer.is_none()
        {
            let found = self
                .apis
                .secrets
                .get_metadata_opt(secret)
                .await
                .map_err(Error::kube("get", "Secret"))?;
            if found.is_none() {
                self.problems.push(Problem {
                    reason: "TLSSecretNotFound",
                    message: format!(
                        "spec.ingress.tls.secretName: Secret {secret:?} does not exist in namespace {}",
                        self.site.namespace().unwrap_or_default()
                    ),
                    blocks_database: false,
                });
            }
        }
        Ok(())
    }

    /// Creates the generated Secrets that do not exist yet; whether it sent a create.
    async fn ensure_secrets(&self, database_exists: bool, live: &Live) -> Result<bool> {
        let missing: Vec<Generated> = [
            (Generated::DatabaseCredentials, live.credentials.is_some()),
            (Generated::WriteToken, live.write_token.is_some()),
        ]
        .into_iter()
        .filter_map(|(which, exists)| (!exists).then_some(which))
        .collect();
        let created = futures::future::try_join_all(missing.iter().map(|&which| async move {
            self.ctx.metrics.write("create", "Secret");
            secrets::ensure(&self.apis.secrets, self.site, which)
                .await
                .map(|created| (which, created))
        }))
        .await?;
        for (which, created) in created {
            if created != Created::Now {
                continue;
            }
            let name = which.name(&self.name);
            info!(secret = %name, "created generated Secret");
            let (warning, reason, note) = if which == Generated::DatabaseCredentials
                && database_exists
            {
                (
                    true,
                    "CredentialsRecreated",
                    format!(
                        "Secret {name} was missing and has been generated anew; the existing database keeps its old password until it is reset"
                    ),
                )
            } else {
                (
                    false,
                    "SecretCreated",
                    format!("created Secret {name} with a generated value"),
                )
            };
            self.event(warning, reason, note);
        }
        Ok(!missing.is_empty())
    }

    /// Applies children of one kind concurrently, each with its live object (same order).
    async fn apply_all<K>(
        &self,
        api: &Api<K>,
        desired: Vec<K>,
        live: Vec<Option<K>>,
    ) -> Result<Vec<Option<K>>>
    where
        K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
        K::DynamicType: Default,
    {
        futures::future::try_join_all(
            desired
                .into_iter()
                .zip(live)
                .map(|(d, l)| self.apply_child_with_live(api, d, l)),
        )
        .await
    }

    /// Applies one child if it differs. A rejection the user must fix (invalid, forbidden) is
    /// recorded as a problem and the other children still get reconciled.
    async fn apply_child_with_live<K>(
        &self,
        api: &Api<K>,
        desired: K,
        live: Option<K>,
    ) -> Result<Option<K>>
    where
        K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
        K::DynamicType: Default,
    {
        let kind = apply::kind_of::<K>();
        let name = desired.meta().name.clone().unwrap_or_default();
        match apply::apply(api, &desired, live.clone()).await {
            Ok((obj, outcome)) => {
                self.ctx.metrics.child(kind, outcome_label(outcome));
                if outcome != Outcome::Unchanged {
                    self.ctx.metrics.write("apply", kind);
                    info!(kind, name = %name, outcome = outcome_label(outcome), "applied child");
                }
                if outcome == Outcome::Restored {
                    self.event(
                        false,
                        "DriftCorrected",
                        format!("restored {kind} {name} after a change made outside the operator"),
                    );
                }
                Ok(Some(obj))
            }
            Err(e) if e.is_permanent() => {
                warn!(kind, name = %name, error = %e, "child rejected by the API server");
                self.push_problem(Problem {
                    reason: "ChildRejected",
                    message: format!("{kind} {name} was rejected: {}", api_message(&e)),
                    blocks_database: false,
                });
                Ok(live)
            }
            Err(e) => Err(e),
        }
    }

    fn push_problem(&self, problem: Problem) {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(problem);
    }

    async fn reconcile_ingress(&self, live: Option<Ingress>) -> Result<()> {
        match resources::ingress::build(self.site) {
            Some(desired) => {
                self.apply_child_with_live(&self.apis.ingresses, desired, live)
                    .await?;
            }
            None => {
                let uid = self.site.uid().unwrap_or_default();
                if apply::delete_if_owned(&self.apis.ingresses, live, &uid).await? {
                    self.ctx.metrics.write("delete", "Ingress");
                    self.event(false, "IngressDeleted", "spec.ingress was removed".into());
                }
            }
        }
        Ok(())
    }

    /// Claim templates are immutable, so a larger `storage.size` is applied to the PVC itself.
    async fn expand_storage(&mut self, template_size: &str) -> Result<()> {
        let wanted = &self.site.spec.database.storage.size;
        let bigger = |a: &str, b: &str| match (apply::parse_quantity(a), apply::parse_quantity(b)) {
            (Some(a), Some(b)) => a > b,
            _ => false,
        };
        if !bigger(wanted, template_size) {
            return Ok(());
        }
        let pvc_name = statefulset::pvc_name(&self.name, 0);
        let Some(pvc) = apply::get_opt(&self.apis.pvcs, &pvc_name).await? else {
            return Ok(());
        };
        let current = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default();
        if !bigger(wanted, &current) {
            return Ok(());
        }
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": pvc_name},
            "spec": {"resources": {"requests": {"storage": wanted}}},
        });
        self.ctx.metrics.write("apply", "PersistentVolumeClaim");
        match self
            .apis
            .pvcs
            .patch(
                &pvc_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                self.event(
                    false,
                    "StorageExpanding",
                    format!("requested {wanted} for PVC {pvc_name} (was {current})"),
                );
                Ok(())
            }
            Err(e) => {
                let e = Error::kube("expand", "PersistentVolumeClaim")(e);
                if e.is_permanent() {
                    self.problems.push(Problem {
                        reason: "StorageExpansionFailed",
                        message: format!("spec.database.storage.size: PVC {pvc_name} cannot grow to {wanted}: {}", api_message(&e)),
                        blocks_database: false,
                    });
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn update_status(
        &mut self,
        deployment: Option<&Deployment>,
        sts: Option<&StatefulSet>,
        paused: bool,
    ) -> Result<()> {
        let rejected = std::mem::take(self.rejected.get_mut().unwrap_or_else(|p| p.into_inner()));
        self.problems.extend(rejected);
        // The API server stores seconds; a whole-second time compares equal after a round trip.
        let now = Time(
            k8s_openapi::jiff::Timestamp::from_second(
                k8s_openapi::jiff::Timestamp::now().as_second(),
            )
            .map_err(|_| Error::MissingField("clock"))?,
        );
        let observed = Observed {
            deployment,
            statefulset: sts,
            problems: &self.problems,
            paused,
            cluster_domain: &self.ctx.settings.cluster_domain,
        };
        let mut new = status::compute(self.site, &observed, &now);
        if self.credentials.is_some() {
            new.credentials = self.credentials.clone();
        }
        self.ha_status(&mut new, &now);
        if self.site.status.as_ref() == Some(&new) {
            return Ok(());
        }
        let body = serde_json::json!({
            "apiVersion": ArticleSite::api_version(&()),
            "kind": ArticleSite::kind(&()),
            "status": new,
        });
        self.ctx.metrics.write("apply", "ArticleSite/status");
        self.apis
            .sites
            .patch_status(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(Error::kube("apply status", "ArticleSite"))?;
        for (warning, reason, note) in status::transitions(self.site.status.as_ref(), &new) {
            self.event(warning, &reason, note);
        }
        self.ha_events(&new).await;
        Ok(())
    }

    /// Publishes an Event on the site in the background: Events are best-effort, so a reconcile
    /// never waits for them (a site's first reconcile publishes several). Never carries secret
    /// values.
    fn event(&self, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        self.ctx.metrics.write("create", "Event");
        let recorder = self.ctx.recorder.clone();
        let object = self.site.object_ref(&());
        let reason = reason.to_string();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &object).await {
                warn!(error = %e, reason, "could not publish event");
            }
        });
    }
}

/// The live objects named like `desired`, read concurrently (same order).
async fn get_all<K>(api: &Api<K>, desired: &[K]) -> Result<Vec<Option<K>>>
where
    K: Resource + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    futures::future::try_join_all(desired.iter().map(|d| {
        let name = d.name_any();
        async move { apply::get_opt(api, &name).await }
    }))
    .await
}

fn is_app_pod(p: &Pod) -> bool {
    p.labels()
        .get("app.kubernetes.io/component")
        .map(String::as_str)
        == Some("app")
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Unchanged => "unchanged",
        Outcome::Created => "created",
        Outcome::Updated => "updated",
        Outcome::Restored => "restored",
    }
}

/// The API server's own message of a rejection (it names the field and the rule).
fn api_message(e: &Error) -> String {
    match e {
        Error::Kube { source, .. } => match source.as_ref() {
            kube::Error::Api(s) => s.message.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// Runs one Controller per namespace (or one for all namespaces) until SIGTERM/SIGINT.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>) {
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        settings.clone(),
    ));
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let config = controller::Config::default()
        .concurrency(settings.concurrency)
        .debounce(settings.debounce);
    let mut stores = Vec::new();
    let mut runs = Vec::new();
    for scope in &scopes {
        let ns = scope.as_deref();
        // Each watch backs off on its own, and a site that cannot be read never stops the
        // others (`watches`); after an outage every site is reconciled at once.
        let (store, sites) = watches::sites(&client, ns, metrics.clone());
        let m = &metrics;
        let controller = Controller::for_stream(sites, store)
            .with_config(config.clone())
            .owns_stream(watches::children::<Deployment>(&client, ns, m.clone()))
            .owns_stream(watches::children::<StatefulSet>(&client, ns, m.clone()))
            .owns_stream(watches::children::<Service>(&client, ns, m.clone()))
            .owns_stream(watches::children::<Secret>(&client, ns, m.clone()))
            .owns_stream(watches::children::<ServiceAccount>(&client, ns, m.clone()))
            .owns_stream(watches::children::<PodDisruptionBudget>(
                &client,
                ns,
                m.clone(),
            ))
            .owns_stream(watches::children::<NetworkPolicy>(&client, ns, m.clone()))
            .owns_stream(watches::children::<Ingress>(&client, ns, m.clone()))
            // Pods belong to ReplicaSets, not to the site: map them by their instance label, so
            // a crash-loop or a lost readiness is seen at once.
            .watches_stream(
                watches::children::<Pod>(&client, ns, m.clone()),
                |pod: PartialObjectMeta<Pod>| {
                    let site = pod.labels().get("app.kubernetes.io/instance")?.clone();
                    Some(ObjectRef::new(&site).within(&pod.namespace()?))
                },
            )
            .reconcile_all_on(metrics.api_recoveries())
            .shutdown_on_signal();
        stores.push(controller.store());
        runs.push(
            controller
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|res| async move {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "controller event");
                    }
                }),
        );
    }
    info!(namespaces = ?settings.namespaces, "controllers started");
    tokio::spawn(async move {
        for store in stores {
            // The store's ready signal wakes only its most recent waiter (the controller also
            // waits on it), so poll it again every half second.
            loop {
                match tokio::time::timeout(Duration::from_millis(500), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        warn!(error = %e, "cache never became ready");
                        return;
                    }
                    Err(_) => continue,
                }
            }
        }
        metrics.set_ready();
        info!("caches synced, ready");
    });
    futures::future::join_all(runs).await;
    info!("controllers stopped");
}

/// High availability: pod template decisions (checksum, rollback), restarts, orphaned pods and
/// the availability status. Decisions are in `ha`; this layer reads and acts.
impl Reconciler<'_> {
    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(
            self.ctx.client.clone(),
            &self.site.namespace().unwrap_or_default(),
        )
    }

    /// Stamps the inputs checksum on the pod template and swaps in the last ready template
    /// when a rollout of this spec failed.
    async fn ha_deployment(&mut self, mut desired: Deployment, live: &Live) -> Result<Deployment> {
        let site = self.site;
        let creds_name = Names::database_credentials(&self.name);
        let token_name = Names::write_token(&self.name);
        let checksum = ha::inputs_checksum(&[
            (creds_name.as_str(), live.credentials.as_ref()),
            (token_name.as_str(), live.write_token.as_ref()),
        ]);
        let Some(spec) = desired.spec.as_mut() else {
            return Ok(desired);
        };
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ha::INPUTS_CHECKSUM_ANNOTATION.into(), checksum);
        let spec_hash = ha::template_hash(&spec.template);

        let deployment = live.deployment.as_ref();
        let replica_sets: Vec<ReplicaSet> = match deployment.and_then(|d| d.uid()) {
            Some(uid) => live
                .replica_sets
                .iter()
                .filter(|rs| rs.owner_references().iter().any(|o| o.uid == uid))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        self.ha_scale_down(deployment, site.spec.app.replicas, live)
            .await?;
        match ha::plan_rollout(site, &spec_hash, deployment, &replica_sets) {
            RolloutPlan::Spec => {}
            RolloutPlan::Restored(template, failed) => {
                spec.template = *template;
                self.ha.failed = Some(failed);
            }
            RolloutPlan::RollBack(template, failed) => {
                spec.template = *template;
                warn!(image = %failed.image, restored = %failed.restored_revision, "rollout failed, rolling back");
                self.ctx.metrics.rollbacks.inc();
                self.event(
                    true,
                    "RolledBack",
                    format!(
                        "the rollout of image {} made no progress within {}s; rolled back to the last ready pod template (ReplicaSet {}-{})",
                        failed.image,
                        site.spec.high_availability.rollout_deadline_seconds,
                        self.name,
                        failed.restored_revision
                    ),
                );
                self.ha.rolled_back = true;
                self.ha.failed = Some(failed);
            }
        }
        if let Some(failed) = &self.ha.failed {
            self.problems.push(Problem {
                reason: "RolloutFailed",
                message: format!(
                    "the rollout of image {} never became ready and was rolled back; change spec.app to roll out again",
                    failed.image
                ),
                blocks_database: false,
            });
        }
        desired
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ha::TEMPLATE_HASH_ANNOTATION.into(), spec_hash);
        Ok(desired)
    }

    /// Before a scale-down, marks the pods to remove with a low deletion cost, so that the
    /// ReplicaSet controller keeps the remaining pods spread over zones and nodes.
    async fn ha_scale_down(
        &self,
        deployment: Option<&Deployment>,
        desired: i32,
        live: &Live,
    ) -> Result<()> {
        let current = deployment
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        if desired >= current || desired < 1 {
            return Ok(());
        }
        let pods_api = self.pods_api();
        let app_pods: Vec<Pod> = live
            .pods
            .iter()
            .filter(|p| is_app_pod(p))
            .cloned()
            .collect();
        let keep = usize::try_from(desired).unwrap_or(0);
        for name in ha::scale_down_victims(&app_pods, &live.nodes, keep) {
            let patch = serde_json::json!({"metadata": {"annotations": {
                "controller.kubernetes.io/pod-deletion-cost": "-1000"}}});
            self.ctx.metrics.write("patch", "Pod");
            match pods_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("patch", "Pod")(e)),
            }
        }
        Ok(())
    }

    /// Force-deletes pods whose node is gone, and restarts at most one unhealthy app pod.
    async fn ha_heal(
        &mut self,
        deployment: Option<&Deployment>,
        sts: Option<&StatefulSet>,
        pods: Vec<Pod>,
        nodes: std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let pods_api = self.pods_api();

        for pod in ha::orphaned(&pods, &nodes) {
            let name = pod.name_any();
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            self.ctx.metrics.write("delete", "Pod");
            match pods_api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => {
                    self.ctx.metrics.orphaned_pods_deleted.inc();
                    info!(pod = %name, node = %node, "force-deleted pod of a deleted node");
                    self.event(
                        true,
                        "OrphanedPodDeleted",
                        format!("pod {name} was bound to node {node}, which no longer exists; deleted it so that it is replaced"),
                    );
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("delete", "Pod")(e)),
            }
        }

        let app_pods: Vec<Pod> = pods.into_iter().filter(is_app_pod).collect();
        let database_ready = sts
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            >= 1;
        let now = k8s_openapi::jiff::Timestamp::now();
        let restarts = self
            .site
            .status
            .as_ref()
            .and_then(|s| s.availability.as_ref())
            .map(|a| a.recent_restarts.clone())
            .unwrap_or_default();
        match ha::plan_restart(
            self.site,
            &app_pods,
            deployment,
            database_ready,
            &restarts,
            now,
        ) {
            RestartPlan::Later(recheck) => self.ha.recheck = recheck,
            RestartPlan::Now(restart) => {
                self.ctx.metrics.write("create", "Pod/eviction");
                match pods_api.evict(&restart.pod, &EvictParams::default()).await {
                    Ok(_) => {
                        self.ctx
                            .metrics
                            .pod_restarts
                            .get_or_create(&crate::metrics::ErrorLabels {
                                reason: restart.reason.into(),
                            })
                            .inc();
                        info!(pod = %restart.pod, reason = restart.reason, "restarted pod");
                        self.event(
                            true,
                            "PodRestarted",
                            format!(
                                "evicted pod {} ({}): {}",
                                restart.pod, restart.reason, restart.message
                            ),
                        );
                        self.ha.restarted = true;
                    }
                    // A budget refusal (429) or a pod already gone: look again shortly.
                    Err(kube::Error::Api(s)) if matches!(s.code, 404 | 429) => {
                        self.ha.recheck = Some(Duration::from_secs(5));
                    }
                    Err(e) => return Err(Error::kube("evict", "Pod")(e)),
                }
            }
        }
        self.ha.observed = true;
        self.ha.app_pods = app_pods;
        self.ha.nodes = nodes;
        Ok(())
    }

    /// Availability counts, restart and rollback records and the `HighlyAvailable` condition.
    fn ha_status(&self, new: &mut crate::crd::ArticleSiteStatus, now: &Time) {
        let previous = self.site.status.as_ref();
        let prev_availability = previous.and_then(|s| s.availability.clone());
        let prev_condition = previous.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ha::HIGHLY_AVAILABLE)
                .cloned()
        });
        if !self.ha.observed {
            new.availability = prev_availability;
            new.conditions.extend(prev_condition);
            return;
        }
        let prev = prev_availability.unwrap_or_default();
        let (zones, nodes) = ha::placement(&self.ha.app_pods, &self.ha.nodes);
        let mut recent = ha::recent(&prev.recent_restarts, now.0);
        if self.ha.restarted {
            recent.push(now.clone());
        }
        new.availability = Some(AvailabilityStatus {
            zones,
            nodes,
            pod_restarts: prev.pod_restarts + i32::from(self.ha.restarted),
            recent_restarts: recent,
            rollbacks: prev.rollbacks + i32::from(self.ha.rolled_back),
            failed_rollout: self.ha.failed.clone(),
        });
        let cluster_zones = self
            .ha
            .nodes
            .values()
            .filter(|z| !z.is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        new.conditions.push(ha::condition(
            self.site,
            ha::ready_count(&self.ha.app_pods),
            zones,
            nodes,
            cluster_zones,
            now,
        ));
    }

    /// Events for transitions of `HighlyAvailable`.
    async fn ha_events(&self, new: &crate::crd::ArticleSiteStatus) {
        let find = |s: Option<&crate::crd::ArticleSiteStatus>| {
            s.and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == ha::HIGHLY_AVAILABLE)
                    .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            })
        };
        let before = find(self.site.status.as_ref());
        let Some((status, reason, message)) = find(Some(new)) else {
            return;
        };
        if before.as_ref().map(|(s, r, _)| (s, r)) == Some((&status, &reason)) {
            return;
        }
        if status == "True" {
            self.event(false, "HighlyAvailable", message);
        } else if before.is_some_and(|(s, _, _)| s == "True") {
            self.event(true, &reason, message);
        }
    }
}
