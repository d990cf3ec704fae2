//! Context, reconcile, error_policy and the Controller wiring.
//!
//! One reconcile is four stages, and data flows one way through them:
//!
//! ```text
//! observe ──▶ plan (pure) ──▶ act ──▶ report
//! reads       decisions       writes   status + Events
//! ```
//!
//! `observe` reads everything at once, `plan` decides every write (`Plan` lists them all), `act`
//! carries the plan out and returns the API server's answers, and `status` and `events` report
//! from the three. At steady state the plan is empty and the status unchanged: no write at all.
//! One exception to "once": a plan that creates the generated Secrets writes nothing else, and
//! the reconcile plans and acts a second time with the create's answers added to `Observed`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tracing::{Instrument, info, info_span, warn};

use crate::MANAGER;
use crate::act::{self, EvictionOutcome};
use crate::caches::Caches;
use crate::crd::ArticleSite;
use crate::error::{Error, Result, backoff_with_jitter};
use crate::events;
use crate::metrics::Metrics;
use crate::observe;
use crate::plan;
use crate::status;
use crate::watches;

/// Settings of the `run` subcommand that the reconciler needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to reconcile; empty means all namespaces.
    pub namespaces: Vec<String>,
    pub concurrency: u16,
    pub cluster_domain: String,
    /// Image of the backup Jobs (`articlesite-operator backup`): the operator's own.
    pub backup_image: String,
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
    pub caches: Caches,
    /// Consecutive failures per site, for per-object exponential backoff.
    failures: Mutex<HashMap<ObjectRef<ArticleSite>, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: Settings, caches: Caches) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            caches,
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
    let action = reconcile_site(&site, &ctx).instrument(span).await?;
    ctx.failures_of(&site, false);
    Ok(action)
}

async fn reconcile_site(site: &ArticleSite, ctx: &Context) -> Result<Action> {
    let mut observed = observe::observe(
        &ctx.client,
        &ctx.caches,
        site,
        &ctx.settings.cluster_domain,
        &ctx.settings.backup_image,
    )
    .await?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut plan = plan::plan(site, &observed, now);
    let mut outcomes = act::act(&ctx.client, &ctx.metrics, site, &plan).await?;
    // A plan that creates Secrets does nothing else (the app's pod template carries their
    // version). Plan once more with the create's answers, so a new site's children follow in
    // this reconcile rather than in the one their watch events bring, which at a thousand new
    // sites queues behind every other site's first reconcile. A 409 (another writer was first)
    // leaves the Secret unobserved and the second plan waiting: the watch brings it.
    if plan.waiting_for_secrets {
        observed.record_created(&outcomes.secrets_created);
        let second = plan::plan(site, &observed, now);
        if !second.waiting_for_secrets {
            let more = act::act(&ctx.client, &ctx.metrics, site, &second).await?;
            plan = second;
            outcomes = more.after(outcomes);
        }
    }

    // The API server stores seconds; a whole-second time compares equal after a round trip.
    let now = Time(
        k8s_openapi::jiff::Timestamp::from_second(now.as_second())
            .map_err(|_| Error::MissingField("clock"))?,
    );
    let new = status::compute(site, &observed, &plan, &outcomes, &now);
    let events = events::transitions(site, &observed, &plan, &outcomes, &new);
    if let Some(db) = &new.database {
        let old = site.status.as_ref().and_then(|s| s.database.as_ref());
        let ns = site.namespace().unwrap_or_default();
        ctx.metrics.database(&ns, &site.name_any(), old, db);
    }
    ctx.metrics.backup(
        &site.namespace().unwrap_or_default(),
        &site.name_any(),
        &new,
    );
    let written = if site.status.as_ref() == Some(&new) {
        Ok(())
    } else {
        write_status(ctx, site, &new).await
    };
    // The actions happened whatever the status write did; the condition transitions only
    // happened if the status was stored (otherwise the retry reports them).
    let events = match written {
        Ok(()) => events,
        Err(_) => events.into_iter().filter(|e| !e.is_condition()).collect(),
    };
    events::publish(&ctx.recorder, &ctx.metrics, site, events);
    written?;

    let refused = matches!(outcomes.eviction, Some(EvictionOutcome::Refused(_)));
    let next = [
        Some(ctx.settings.resync),
        plan.recheck,
        refused.then_some(Duration::from_secs(5)),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(ctx.settings.resync);
    Ok(Action::requeue(next))
}

async fn write_status(
    ctx: &Context,
    site: &ArticleSite,
    status: &crate::crd::ArticleSiteStatus,
) -> Result<()> {
    let sites: Api<ArticleSite> =
        Api::namespaced(ctx.client.clone(), &site.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": ArticleSite::api_version(&()),
        "kind": ArticleSite::kind(&()),
        "status": status,
    });
    ctx.metrics.write("apply", "ArticleSite/status");
    sites
        .patch_status(
            &site.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::kube("apply status", "ArticleSite"))?;
    Ok(())
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

/// Runs one Controller per namespace (or one for all namespaces) until SIGTERM/SIGINT.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>) {
    let caches = Caches::start(&client, &settings.namespaces, metrics.clone());
    // A reconcile before the caches are filled would see no nodes and no StorageClass.
    caches.wait_until_ready().await;
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        settings.clone(),
        caches,
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
            .owns_stream(watches::children::<ConfigMap>(&client, ns, m.clone()))
            .owns_stream(watches::children::<Role>(&client, ns, m.clone()))
            .owns_stream(watches::children::<RoleBinding>(&client, ns, m.clone()))
            .owns_stream(watches::children::<Ingress>(&client, ns, m.clone()))
            .owns_stream(watches::children::<CronJob>(&client, ns, m.clone()))
            // Its status (the replica count it wants, whether it is limited) is reported.
            .owns_stream(watches::children::<HorizontalPodAutoscaler>(
                &client,
                ns,
                m.clone(),
            ))
            // Pods belong to ReplicaSets, not to the site: map them by their instance label, so
            // a crash-loop or a lost readiness is seen at once.
            .watches_stream(
                watches::children::<Pod>(&client, ns, m.clone()),
                |pod: PartialObjectMeta<Pod>| {
                    let site = pod.labels().get("app.kubernetes.io/instance")?.clone();
                    Some(ObjectRef::new(&site).within(&pod.namespace()?))
                },
            )
            // Backup Jobs belong to their CronJobs: mapped by instance label, like pods.
            .watches_stream(
                watches::children::<Job>(&client, ns, m.clone()),
                |job: PartialObjectMeta<Job>| {
                    let site = job.labels().get("app.kubernetes.io/instance")?.clone();
                    Some(ObjectRef::new(&site).within(&job.namespace()?))
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
