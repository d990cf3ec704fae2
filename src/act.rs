//! Act: carries out a `Plan` and returns what the API server answered. The only module that
//! writes to the cluster (the status is written by the controller). Nothing is decided here:
//! every write is in the plan, in the order below.
//!
//! 1. the generated Secrets (create; the write token's rotation is an update with the
//!    resourceVersion that was read, so a concurrent change is a 409 and a retry);
//! 2. deletion costs on the pods a scale-down should remove, before the Deployment shrinks
//!    (and, with autoscaling, off the pods that are no longer next); the autoscaler no longer
//!    asked for, and the handover of `replicas` to a new one, before the Deployment's apply;
//! 3. the ServiceAccounts (the pods name them) and the database's Role (its RoleBinding is
//!    checked against it), then every other child at once (server-side apply);
//! 4. the rest at once: the Ingress no longer asked for, storage expansion, force deletion of
//!    orphaned pods, the eviction of an unhealthy pod;
//! 5. what the operator asks of Patroni, and the switchover annotation;
//! 6. a backup Job, the backup annotation, and the leftovers of a removed `spec.backup`.
//!
//! A refusal the user must fix (invalid, forbidden) is recorded and the other writes go on; any
//! other error fails the reconcile, which is retried with backoff.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Endpoints, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::MANAGER;
use crate::crd::ArticleSite;
use crate::diff::Outcome;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::patroni;
use crate::plan::backup::{BACKUP_ANNOTATION, Leftover};
use crate::plan::database::{
    ConfigPatch, InstanceMove, Rebuild, SWITCHOVER_ANNOTATION, Switchover,
};
use crate::plan::{Apply, Child, Eviction, Expansion, Orphan, Plan, Rollout, Rotation};
use crate::reason::Reason;
use crate::secrets::{self, Generated};

/// What the API server answered to the writes of one plan.
#[derive(Clone, Debug, Default)]
pub struct Outcomes {
    /// Secrets this reconcile created (a 409 means another writer was first: not ours).
    pub secrets_created: Vec<CreatedSecret>,
    /// The rotation request a new write token was written for.
    pub rotated: Option<String>,
    pub children: Vec<ChildOutcome>,
    /// The Deployment and StatefulSet as the API server returned them, when applied.
    pub deployment: Option<Deployment>,
    pub statefulset: Option<StatefulSet>,
    pub ingress_deleted: Option<String>,
    pub expansions: Vec<ExpansionOutcome>,
    pub pods_marked: Vec<String>,
    pub pods_unmarked: Vec<String>,
    pub autoscaler_deleted: Option<String>,
    /// The replica count handed over to the autoscaler.
    pub handed_over: Option<i32>,
    pub pods_deleted: Vec<Orphan>,
    pub eviction: Option<EvictionOutcome>,
    pub pdbs_deleted: Vec<String>,
    /// The switchover written to Patroni's failover object.
    pub switchover: Option<Switchover>,
    /// The switchover annotation was removed from the site.
    pub annotation_cleared: bool,
    /// The synchronous keys were written into Patroni's dynamic configuration.
    pub config_patched: bool,
    pub endpoint_slices_deleted: Vec<String>,
    /// The endpoints controller's leftover of the client Service (`DatabasePlan::delete_endpoints`).
    pub endpoints_deleted: Vec<String>,
    /// The database pod deleted to move it to the new pod template.
    pub database_pod_restarted: Option<String>,
    /// The failing standby whose claim and pod were deleted.
    pub standby_rebuilt: Option<Rebuild>,
    /// The replica evicted to restore the spread.
    pub instance_moved: Option<InstanceMove>,
    /// The backup Job this reconcile created (a 409 means it exists: not ours).
    pub backup_job_created: Option<String>,
    /// The backup annotation was removed from the site.
    pub backup_request_cleared: bool,
    /// Leftovers of a removed `spec.backup` that were deleted (`Kind/name`).
    pub backup_deleted: Vec<String>,
}

/// A generated Secret as the create's answer described it: metadata only, the value dropped.
#[derive(Clone, Debug)]
pub struct CreatedSecret {
    pub which: Generated,
    pub metadata: ObjectMeta,
}

#[derive(Clone, Debug)]
pub struct ChildOutcome {
    pub kind: &'static str,
    pub name: String,
    pub why: Outcome,
    /// The API server's message when it refused the object.
    pub rejected: Option<String>,
}

#[derive(Clone, Debug)]
pub enum ExpansionOutcome {
    Requested(Expansion),
    Refused(Expansion, String),
}

#[derive(Clone, Debug)]
pub enum EvictionOutcome {
    Evicted(Eviction),
    /// The budget refused it (429) or the pod is gone (404): look again shortly.
    Refused(Eviction),
}

impl Outcomes {
    /// The answers of a reconcile's first round (`earlier`, which only created Secrets) and its
    /// second (`self`), as one.
    pub fn after(mut self, earlier: Outcomes) -> Outcomes {
        let mut created = earlier.secrets_created;
        created.append(&mut self.secrets_created);
        self.secrets_created = created;
        self.rotated = self.rotated.or(earlier.rotated);
        self
    }

    pub fn rolled_back(&self, plan: &Plan) -> bool {
        matches!(plan.rollout, Rollout::RollBack(_))
            && self.children.iter().any(|c| {
                c.kind == <Deployment as k8s_openapi::Resource>::KIND && c.rejected.is_none()
            })
    }
}

/// Typed API of one namespace.
fn api<K>(client: &Client, ns: &str) -> Api<K>
where
    K: kube::Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), ns)
}

/// Creates and replaces carry the operator's field manager, like its applies.
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

pub async fn act(
    client: &Client,
    metrics: &Metrics,
    site: &ArticleSite,
    plan: &Plan,
) -> Result<Outcomes> {
    let ns = site
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let mut out = Outcomes::default();
    let secrets: Api<Secret> = api(client, &ns);
    let pods: Api<Pod> = api(client, &ns);

    // 1. Secrets.
    let created = futures::future::try_join_all(
        plan.create_secrets
            .iter()
            .map(|&which| create_secret(&secrets, metrics, site, which)),
    )
    .await?;
    out.secrets_created = created.into_iter().flatten().collect();
    if let Some(rotation) = &plan.rotate_write_token {
        rotate_write_token(&secrets, metrics, site, rotation).await?;
        out.rotated = Some(rotation.request.clone());
    }

    // 2. Deletion costs before the scale-down.
    for name in &plan.pods.mark_for_scale_down {
        let patch = serde_json::json!({"metadata": {"annotations": {
            crate::plan::DELETION_COST_ANNOTATION: crate::plan::SCALE_DOWN_COST}}});
        metrics.write("patch", "Pod");
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => out.pods_marked.push(name.clone()),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube("patch", "Pod")(e)),
        }
    }

    for name in &plan.pods.unmark_for_scale_down {
        let patch = serde_json::json!({"metadata": {"annotations": {
            crate::plan::DELETION_COST_ANNOTATION: null}}});
        metrics.write("patch", "Pod");
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => out.pods_unmarked.push(name.clone()),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube("patch", "Pod")(e)),
        }
    }
    if let Some(name) = &plan.delete_autoscaler {
        out.autoscaler_deleted =
            delete_named::<HorizontalPodAutoscaler>(client, &ns, metrics, name).await?;
    }
    if let Some(replicas) = plan.handover_replicas {
        hand_over_replicas(client, &ns, metrics, site, replicas).await?;
        out.handed_over = Some(replicas);
    }

    // 3. Children: the ServiceAccounts and the database's Role first (pods name the accounts;
    // the RBAC escalation check of a RoleBinding looks its Role up, and answers 404 while it is
    // missing), then the rest concurrently.
    let (first, rest): (Vec<&Apply>, Vec<&Apply>) = plan
        .applies
        .iter()
        .partition(|a| matches!(a.child, Child::ServiceAccount(_) | Child::Role(_)));
    for a in first {
        out.children
            .push(apply_child(client, &ns, metrics, a, &mut None, &mut None).await?);
    }
    let mut deployment = None;
    let mut statefulset = None;
    let answers = futures::future::try_join_all(rest.into_iter().map(|a| async {
        let mut d = None;
        let mut s = None;
        let outcome = apply_child(client, &ns, metrics, a, &mut d, &mut s).await?;
        Ok::<_, Error>((outcome, d, s))
    }))
    .await?;
    for (outcome, d, s) in answers {
        out.children.push(outcome);
        deployment = deployment.or(d);
        statefulset = statefulset.or(s);
    }
    out.deployment = deployment;
    out.statefulset = statefulset;
    if out.rolled_back(plan) {
        metrics.rollbacks.inc();
    }

    // 4. Deletions, expansions, evictions.
    let (ingress_deleted, expansions, deleted, eviction) = futures::try_join!(
        delete_ingress(client, &ns, metrics, plan.delete_ingress.as_deref()),
        futures::future::try_join_all(
            plan.expand_claims
                .iter()
                .map(|e| expand_claim(client, &ns, metrics, e))
        ),
        futures::future::try_join_all(
            plan.pods
                .force_delete
                .iter()
                .map(|o| force_delete(&pods, metrics, o))
        ),
        evict(&pods, metrics, plan.pods.evict.as_ref()),
    )?;
    out.ingress_deleted = ingress_deleted;
    out.expansions = expansions;
    out.pods_deleted = deleted.into_iter().flatten().collect();
    out.eviction = eviction;

    // 5. What the operator asks of Patroni, the budgets and slices no longer wanted, and the
    // switchover annotation last (so a failed write leaves the request to be retried).
    let db = &plan.database;
    let (pdbs, slices, endpoints, switchover, config_patched, restarted, rebuilt, moved) = futures::try_join!(
        futures::future::try_join_all(plan.delete_pdbs.iter().map(|n| delete_named::<
            PodDisruptionBudget,
        >(
            client, &ns, metrics, n
        ))),
        futures::future::try_join_all(db.delete_endpoint_slices.iter().map(|n| delete_named::<
            EndpointSlice,
        >(
            client, &ns, metrics, n
        ))),
        futures::future::try_join_all(
            db.delete_endpoints
                .iter()
                .map(|n| delete_named::<Endpoints>(client, &ns, metrics, n))
        ),
        write_switchover(client, &ns, metrics, site, db.switchover.as_ref()),
        patch_config(client, &ns, metrics, site, db.config.as_ref()),
        restart_database_pod(&pods, metrics, db.restart_pod.as_deref()),
        rebuild_standby(client, &ns, &pods, metrics, db.rebuild.as_ref()),
        move_instance(&pods, metrics, db.move_instance.as_ref()),
    )?;
    out.instance_moved = moved;
    out.database_pod_restarted = restarted;
    out.standby_rebuilt = rebuilt;
    out.pdbs_deleted = pdbs.into_iter().flatten().collect();
    out.endpoint_slices_deleted = slices.into_iter().flatten().collect();
    out.endpoints_deleted = endpoints.into_iter().flatten().collect();
    out.switchover = switchover;
    out.config_patched = config_patched;
    if db.clear_annotation {
        clear_annotation(client, &ns, metrics, site, SWITCHOVER_ANNOTATION).await?;
        out.annotation_cleared = true;
    }

    // 6. Backups: the Job, then its annotation (a failed create leaves the request).
    let b = &plan.backup;
    if let Some(job) = &b.create_job {
        out.backup_job_created = create_job(client, &ns, metrics, job).await?;
    }
    if b.clear_request {
        clear_annotation(client, &ns, metrics, site, BACKUP_ANNOTATION).await?;
        out.backup_request_cleared = true;
    }
    out.backup_deleted = futures::future::try_join_all(
        b.delete
            .iter()
            .map(|l| delete_leftover(client, &ns, metrics, l)),
    )
    .await?
    .into_iter()
    .flatten()
    .collect();
    Ok(out)
}

/// Creates a backup Job; `Some(name)` when this call created it.
async fn create_job(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    job: &Job,
) -> Result<Option<String>> {
    let name = job.name_any();
    metrics.write("create", "Job");
    match api::<Job>(client, ns).create(&post_params(), job).await {
        Ok(_) => {
            info!(job = %name, "backup job created");
            Ok(Some(name))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(Error::kube("create", "Job")(e)),
    }
}

async fn delete_leftover(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    leftover: &Leftover,
) -> Result<Option<String>> {
    let deleted = match leftover {
        Leftover::CronJob(n) => delete_named::<CronJob>(client, ns, metrics, n).await?,
        Leftover::RoleBinding(n) => delete_named::<RoleBinding>(client, ns, metrics, n).await?,
    };
    Ok(deleted)
}

/// Deletes one object; `Some(name)` when this call deleted it.
async fn delete_named<K>(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    name: &str,
) -> Result<Option<String>>
where
    K: kube::Resource<Scope = NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Debug,
    K::DynamicType: Default,
{
    metrics.write("delete", K::KIND);
    match api::<K>(client, ns)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => {
            info!(kind = K::KIND, name, "deleted");
            Ok(Some(name.to_string()))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube("delete", K::KIND)(e)),
    }
}

/// Writes the switchover into Patroni's failover object: a merge patch of its annotations when
/// it exists, else a create with Patroni's labels (Patroni lists its objects by them) and the
/// site as owner (deleted with the site).
async fn write_switchover(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    site: &ArticleSite,
    switchover: Option<&Switchover>,
) -> Result<Option<Switchover>> {
    let Some(sw) = switchover else {
        return Ok(None);
    };
    let endpoints: Api<Endpoints> = api(client, ns);
    let name = patroni::failover_name(&site.name_any());
    let annotations = serde_json::json!({
        patroni::LEADER_ANNOTATION: sw.leader,
        patroni::MEMBER_ANNOTATION: sw.member,
    });
    let result = if sw.object_exists {
        metrics.write("patch", "Endpoints");
        endpoints
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": annotations}})),
            )
            .await
            .map(drop)
    } else {
        let mut labels = patroni::labels(site);
        labels.insert(
            patroni::SCOPE_LABEL.into(),
            patroni::scope(&site.name_any()),
        );
        // Annotation values are strings: "any" (no member) leaves `member` out (the merge
        // patch above sends null, which removes it).
        let mut created = std::collections::BTreeMap::from([(
            patroni::LEADER_ANNOTATION.to_string(),
            sw.leader.clone(),
        )]);
        if let Some(member) = &sw.member {
            created.insert(patroni::MEMBER_ANNOTATION.to_string(), member.clone());
        }
        let body: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": created,
                "ownerReferences": [crate::resources::owner_reference(site)],
            },
        }))
        .map_err(|_| Error::MissingField("failover object"))?;
        metrics.write("create", "Endpoints");
        endpoints.create(&post_params(), &body).await.map(drop)
    };
    match result {
        Ok(()) => {
            info!(from = %sw.leader, to = ?sw.member, reason = <&str>::from(sw.reason), "asked Patroni for a switchover");
            Ok(Some(sw.clone()))
        }
        // Someone wrote it first (409) or it went away (404): the next reconcile decides again.
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(None),
        Err(e) => Err(Error::kube("switchover", "Endpoints")(e)),
    }
}

/// The synchronous keys into Patroni's dynamic configuration, over the version that was read
/// (a 409 means Patroni changed it meanwhile: the next reconcile reads it again).
async fn patch_config(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    site: &ArticleSite,
    patch: Option<&ConfigPatch>,
) -> Result<bool> {
    let Some(p) = patch else { return Ok(false) };
    let body = serde_json::json!({"metadata": {
        "resourceVersion": p.resource_version,
        "annotations": {patroni::CONFIG_ANNOTATION: p.config.to_string()},
    }});
    metrics.write("patch", "Endpoints");
    match api::<Endpoints>(client, ns)
        .patch(
            &patroni::config_name(&site.name_any()),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
    {
        Ok(_) => {
            info!("wrote the synchronous mode into Patroni's dynamic configuration");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(false),
        Err(e) => Err(Error::kube("patch", "Endpoints")(e)),
    }
}

/// Deletes a database pod (graceful: Patroni stops PostgreSQL cleanly and a primary releases
/// its lock) so that the StatefulSet recreates it with its update revision.
async fn restart_database_pod(
    pods: &Api<Pod>,
    metrics: &Metrics,
    pod: Option<&str>,
) -> Result<Option<String>> {
    let Some(pod) = pod else { return Ok(None) };
    metrics.write("delete", "Pod");
    match pods.delete(pod, &DeleteParams::default()).await {
        Ok(_) => {
            info!(pod, "restarted database pod onto the new pod template");
            Ok(Some(pod.to_string()))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube("delete", "Pod")(e)),
    }
}

/// Deletes a failing standby's claim, then its pod. The claim only gets a deletion timestamp
/// while the pod uses it (the pvc-protection finalizer); it goes with the pod, and the
/// StatefulSet then makes a new claim and pod. `Some` once both deletions were accepted.
async fn rebuild_standby(
    client: &Client,
    ns: &str,
    pods: &Api<Pod>,
    metrics: &Metrics,
    rebuild: Option<&Rebuild>,
) -> Result<Option<Rebuild>> {
    let Some(rebuild) = rebuild else {
        return Ok(None);
    };
    delete_named::<PersistentVolumeClaim>(client, ns, metrics, &rebuild.claim).await?;
    metrics.write("delete", "Pod");
    match pods.delete(&rebuild.pod, &DeleteParams::default()).await {
        Ok(_) => {
            warn!(pod = %rebuild.pod, why = %rebuild.why, "rebuilding a failing standby from the primary");
            Ok(Some(rebuild.clone()))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube("delete", "Pod")(e)),
    }
}

/// Evicts a replica through the Eviction API (its budgets decide; a refusal is retried by a
/// later reconcile) so that the StatefulSet recreates it where the scheduler's spreading puts
/// it. `Some` when the eviction was accepted.
async fn move_instance(
    pods: &Api<Pod>,
    metrics: &Metrics,
    m: Option<&InstanceMove>,
) -> Result<Option<InstanceMove>> {
    let Some(m) = m else { return Ok(None) };
    metrics.write("create", "Pod/eviction");
    match pods.evict(&m.pod, &EvictParams::default()).await {
        Ok(_) => {
            metrics.pod_restart(Reason::Unbalanced);
            info!(pod = %m.pod, from = %m.from, "moved a database replica to restore the spread");
            Ok(Some(m.clone()))
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 429) => {
            info!(pod = %m.pod, code = s.code, "the eviction of a database replica was refused; trying again later");
            Ok(None)
        }
        Err(err) => Err(Error::kube("evict", "Pod")(err)),
    }
}

/// Removes a request annotation (switchover, backup): the request was acted on (or refused).
async fn clear_annotation(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    site: &ArticleSite,
    annotation: &str,
) -> Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {annotation: null}}});
    metrics.write("patch", "ArticleSite");
    match api::<ArticleSite>(client, ns)
        .patch(
            &site.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("patch", "ArticleSite")(e)),
    }
}

/// Creates one generated Secret; `Some` (with the answer's metadata) when this reconcile
/// created it.
async fn create_secret(
    api: &Api<Secret>,
    metrics: &Metrics,
    site: &ArticleSite,
    which: Generated,
) -> Result<Option<CreatedSecret>> {
    let secret = secrets::build(site, which, secrets::generate()?, None);
    metrics.write("create", "Secret");
    match api.create(&post_params(), &secret).await {
        // The answer holds the value: only its metadata is kept.
        Ok(answer) => {
            info!(secret = %which.name(&site.name_any()), "created generated Secret");
            Ok(Some(CreatedSecret {
                which,
                metadata: answer.metadata,
            }))
        }
        // Another writer (a previous leader) was first: the existing value stays.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        // The error of a create never echoes the body, so it carries no secret value.
        Err(e) => Err(Error::kube("create", "Secret")(e)),
    }
}

async fn rotate_write_token(
    api: &Api<Secret>,
    metrics: &Metrics,
    site: &ArticleSite,
    rotation: &Rotation,
) -> Result<()> {
    let name = Generated::WriteToken.name(&site.name_any());
    let mut secret = secrets::build(
        site,
        Generated::WriteToken,
        secrets::generate()?,
        Some(&rotation.request),
    );
    secret.metadata.resource_version = Some(rotation.resource_version.clone());
    metrics.write("update", "Secret");
    // The answer holds the new value: drop it unread.
    api.replace(&name, &post_params(), &secret)
        .await
        .map_err(Error::kube("rotate", "Secret"))?;
    info!(secret = %name, "rotated the write token");
    Ok(())
}

/// Server-side apply of one child. The Deployment's and StatefulSet's answers are kept for the
/// status.
async fn apply_child(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    a: &Apply,
    deployment: &mut Option<Deployment>,
    statefulset: &mut Option<StatefulSet>,
) -> Result<ChildOutcome> {
    let kind = a.child.kind();
    let name = a.child.name().to_string();
    metrics.write("apply", kind);
    let result = match &a.child {
        Child::ServiceAccount(o) => ssa(&api(client, ns), o).await.map(drop),
        Child::Role(o) => ssa(&api(client, ns), o).await.map(drop),
        Child::RoleBinding(o) => ssa(&api(client, ns), o).await.map(drop),
        Child::ConfigMap(o) => ssa(&api(client, ns), o).await.map(drop),
        Child::Deployment(o) => ssa(&api(client, ns), o)
            .await
            .map(|d| *deployment = Some(d)),
        Child::StatefulSet(o) => ssa(&api(client, ns), o)
            .await
            .map(|s| *statefulset = Some(s)),
        Child::Service(o) => ssa(&api(client, ns), o).await.map(drop),
        Child::PodDisruptionBudget(o) => ssa(&api(client, ns), o).await.map(drop),
        Child::NetworkPolicy(o) => ssa(&api(client, ns), o).await.map(drop),
        Child::Ingress(o) => ssa(&api(client, ns), o).await.map(drop),
        Child::HorizontalPodAutoscaler(o) => ssa(&api(client, ns), o).await.map(drop),
        Child::CronJob(o) => ssa(&api(client, ns), o).await.map(drop),
    };
    let outcome = |rejected| ChildOutcome {
        kind,
        name: name.clone(),
        why: a.why,
        rejected,
    };
    match result.map_err(Error::kube("apply", kind)) {
        Ok(()) => {
            let why: &'static str = a.why.into();
            metrics.child(kind, why);
            info!(kind, name = %name, outcome = why, "applied child");
            Ok(outcome(None))
        }
        Err(e) if e.is_permanent() => {
            metrics.child(kind, "rejected");
            warn!(kind, name = %name, error = %e, "child rejected by the API server");
            Ok(outcome(Some(e.api_message())))
        }
        Err(e) => Err(e),
    }
}

async fn ssa<K>(api: &Api<K>, desired: &K) -> Result<K, kube::Error>
where
    K: kube::Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await
}

/// Field manager of the replica count while it passes from the operator to the autoscaler.
pub const HANDOVER_MANAGER: &str = "articlesite-operator-handover";

/// Applies only `spec.replicas`, at its live value, under `HANDOVER_MANAGER`: the field then
/// has an owner besides the operator's apply, which can leave it out without the API server
/// removing it (the documented way to hand a field to a HorizontalPodAutoscaler).
async fn hand_over_replicas(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    site: &ArticleSite,
    replicas: i32,
) -> Result<()> {
    let name = crate::resources::Names::app(&site.name_any());
    let body = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    metrics.write("apply", "Deployment");
    api::<Deployment>(client, ns)
        .patch(
            &name,
            &PatchParams::apply(HANDOVER_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::kube("hand over replicas", "Deployment"))?;
    info!(deployment = %name, replicas, "handed the replica count over to the autoscaler");
    Ok(())
}

async fn delete_ingress(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    name: Option<&str>,
) -> Result<Option<String>> {
    let Some(name) = name else { return Ok(None) };
    metrics.write("delete", "Ingress");
    match api::<Ingress>(client, ns)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(Some(name.to_string())),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube("delete", "Ingress")(e)),
    }
}

async fn expand_claim(
    client: &Client,
    ns: &str,
    metrics: &Metrics,
    e: &Expansion,
) -> Result<ExpansionOutcome> {
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": e.claim},
        "spec": {"resources": {"requests": {"storage": e.to}}},
    });
    metrics.write("apply", "PersistentVolumeClaim");
    match api::<PersistentVolumeClaim>(client, ns)
        .patch(
            &e.claim,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("expand", "PersistentVolumeClaim"))
    {
        Ok(_) => Ok(ExpansionOutcome::Requested(e.clone())),
        Err(err) if err.is_permanent() => {
            Ok(ExpansionOutcome::Refused(e.clone(), err.api_message()))
        }
        Err(err) => Err(err),
    }
}

async fn force_delete(pods: &Api<Pod>, metrics: &Metrics, o: &Orphan) -> Result<Option<Orphan>> {
    metrics.write("delete", "Pod");
    match pods
        .delete(&o.pod, &DeleteParams::default().grace_period(0))
        .await
    {
        Ok(_) => {
            metrics.orphaned_pods_deleted.inc();
            info!(pod = %o.pod, node = %o.node, "force-deleted pod of a deleted node");
            Ok(Some(o.clone()))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube("delete", "Pod")(e)),
    }
}

async fn evict(
    pods: &Api<Pod>,
    metrics: &Metrics,
    eviction: Option<&Eviction>,
) -> Result<Option<EvictionOutcome>> {
    let Some(e) = eviction else { return Ok(None) };
    metrics.write("create", "Pod/eviction");
    match pods.evict(&e.pod, &EvictParams::default()).await {
        Ok(_) => {
            metrics.pod_restart(e.reason);
            info!(pod = %e.pod, reason = %e.reason, "restarted pod");
            Ok(Some(EvictionOutcome::Evicted((*e).clone())))
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 429) => {
            Ok(Some(EvictionOutcome::Refused((*e).clone())))
        }
        Err(err) => Err(Error::kube("evict", "Pod")(err)),
    }
}
