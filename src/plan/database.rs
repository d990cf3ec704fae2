//! The database's decisions beyond its desired objects: what the operator asks of Patroni.
//!
//! - A switchover, on request (annotation `articlesite.io/switchover` = a pod name or `any`)
//!   or before a drain: when the primary's node is cordoned or tainted out of service, one
//!   request to a healthy synchronous standby, and none while a request is pending. It is
//!   written to Patroni's failover object (`leader` = the current primary, which makes it a
//!   switchover Patroni only carries out from that leader; `member` = the target, omitted for
//!   `any`), the way `patronictl switchover` does without the REST API.
//! - The dynamic configuration's synchronous keys, when `spec.database.synchronousMode`
//!   changed after bootstrap (`bootstrap.dcs` is read only once).
//! - The restart order on a new pod template (the StatefulSet is `OnDelete`): outdated pods
//!   that do not serve first, then the replicas one at a time (each ready again before the
//!   next), then a switchover, then the old primary; a single instance is simply restarted.
//! - Rebuilding a standby that keeps failing (crash-looping, or PostgreSQL not starting) while
//!   the primary serves: its claim and pod are deleted, the StatefulSet makes both anew and
//!   Patroni clones the primary into the empty volume.
//! - Moving a replica that shares a node (or zone) with other instances to a free one once
//!   every instance serves (`spread::pick`): the scheduler spreads the pods only when it
//!   places them, and a pod recreated after its node was away may land beside the primary,
//!   where one node's loss stops the database. It is evicted and the StatefulSet recreates it
//!   (its volume follows when the storage allows); when its replacement comes back to the
//!   same node, its volume holds it there, and the next move rebuilds it on a new volume.
//! - Deleting the EndpointSlices the endpointslice controller left for the client Service
//!   from before it lost its selector: kube-proxy would otherwise keep routing to the old pod
//!   IP next to Patroni's leader.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::crd::{ArticleSite, SwitchoverRequest, SynchronousMode};
use crate::observe::Observed;
use crate::patroni::{self, State};
use crate::resources::patroni_config;
use crate::spread::NodeFacts;

/// The annotation a user sets on the ArticleSite to ask for a switchover.
pub const SWITCHOVER_ANNOTATION: &str = "articlesite.io/switchover";
/// Its value that lets Patroni choose the new primary.
pub const ANY: &str = "any";
/// A switchover not carried out within this long is reported as failed and may be asked for
/// again (Patroni clears a request it refuses).
pub const SWITCHOVER_TIMEOUT: SignedDuration = SignedDuration::from_secs(60);
/// The taint of a node declared out of service (non-graceful node shutdown).
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// Why a switchover is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
pub enum SwitchoverReason {
    /// The annotation asked for it.
    Requested,
    /// The primary's node is cordoned or out of service.
    NodeDrain,
    /// The primary runs an old pod template and every replica has been restarted.
    Restart,
}

/// A write to Patroni's failover object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switchover {
    pub leader: String,
    /// `None`: Patroni picks a healthy candidate.
    pub member: Option<String>,
    pub reason: SwitchoverReason,
    /// The object exists (patched) or not (created with Patroni's labels).
    pub object_exists: bool,
}

impl Switchover {
    pub fn request(
        &self,
        now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    ) -> SwitchoverRequest {
        SwitchoverRequest {
            from: self.leader.clone(),
            to: self.member.clone(),
            requested_at: now.clone(),
            reason: <&str>::from(self.reason).into(),
        }
    }
}

/// The new `config` annotation, written only over the version that was read.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigPatch {
    pub config: serde_json::Value,
    pub resource_version: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatabasePlan {
    pub switchover: Option<Switchover>,
    /// Clear the switchover annotation: it was acted on (or refused, with `refused`).
    pub clear_annotation: bool,
    /// Why a requested switchover cannot be carried out (a Warning Event).
    pub refused: Option<String>,
    pub config: Option<ConfigPatch>,
    pub delete_endpoint_slices: Vec<String>,
    /// The client Service's Endpoints as the endpoints controller left them when the Service
    /// had a selector (before the upgrade to Patroni): without Patroni's labels Patroni never
    /// sees the object, cannot create its own of that name, and so never takes the leader lock.
    pub delete_endpoints: Option<String>,
    /// A database pod to delete so that the StatefulSet recreates it with its new template.
    pub restart_pod: Option<String>,
    pub rebuild: Option<Rebuild>,
    /// A replica to evict so that the database spreads over the nodes again.
    pub move_instance: Option<InstanceMove>,
    /// When to look again (a free node that has not settled yet).
    pub recheck: Option<std::time::Duration>,
}

/// A replica evicted to restore the spread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceMove {
    pub pod: String,
    /// Its node, which holds too many instances.
    pub from: String,
    /// The instances per node, for the Event.
    pub counts: String,
}

/// A standby to rebuild from the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuild {
    pub pod: String,
    /// Its data claim, deleted first: the claim goes once the pod has, and the StatefulSet
    /// only makes a new claim (and so an empty volume) when the old one is gone.
    pub claim: String,
    /// What the operator saw (for the Event and the status).
    pub why: String,
}

/// No second rebuild within this long of the last: a standby that fails again right after
/// one has a cause that a new volume does not cure, and each rebuild copies the whole database.
pub const REBUILD_INTERVAL: SignedDuration = SignedDuration::from_secs(30 * 60);

/// Patroni's states of a member whose PostgreSQL does not run and will not by itself.
const FAILED_STATES: &[&str] = &["start failed", "crashed"];

impl DatabasePlan {
    pub fn is_empty(&self) -> bool {
        self.switchover.is_none()
            && !self.clear_annotation
            && self.config.is_none()
            && self.delete_endpoint_slices.is_empty()
            && self.delete_endpoints.is_none()
            && self.restart_pod.is_none()
            && self.rebuild.is_none()
            && self.move_instance.is_none()
    }
}

/// A cordoned node, or one tainted out of service: its pods are about to be evicted.
pub fn draining(node: &NodeFacts) -> bool {
    node.unschedulable
        || node.taints.iter().any(|t| {
            t.key == OUT_OF_SERVICE_TAINT && matches!(t.effect.as_str(), "NoExecute" | "NoSchedule")
        })
}

/// The pending request recorded in the status, unless it has timed out.
pub fn pending(site: &ArticleSite, now: Timestamp) -> Option<&SwitchoverRequest> {
    site.status
        .as_ref()?
        .database
        .as_ref()?
        .pending_switchover
        .as_ref()
        .filter(|p| now.duration_since(p.requested_at.0) < SWITCHOVER_TIMEOUT)
}

pub fn plan(
    site: &ArticleSite,
    observed: &Observed,
    state: &State,
    now: Timestamp,
) -> DatabasePlan {
    let mut out = DatabasePlan {
        config: config_patch(site, state),
        ..Default::default()
    };

    // Only once the live Service has lost its selector (the apply came first).
    let client_service = crate::resources::Names::database(&site.name_any());
    let selector_less = observed.services.iter().any(|s| {
        s.name_any() == client_service && s.spec.as_ref().is_some_and(|s| s.selector.is_none())
    });
    if selector_less {
        out.delete_endpoint_slices = observed.stale_endpoint_slices.clone();
        out.delete_endpoints = observed
            .endpoints
            .iter()
            .find(|e| {
                e.name_any() == client_service && !e.labels().contains_key(patroni::SCOPE_LABEL)
            })
            .map(|e| e.name_any());
    }

    // A pending request (ours, in the status, or anyone's, in the failover object) comes first.
    let busy = pending(site, now).is_some() || state.failover.is_some();
    let requested = site
        .annotations()
        .get(SWITCHOVER_ANNOTATION)
        .map(|v| v.trim());
    if let Some(target) = requested {
        out.clear_annotation = true;
        match switchover_target(state, target) {
            Err(why) => out.refused = Some(why),
            Ok(_) if busy => {
                out.refused =
                    Some("a switchover is already pending; ask again once it is done".into())
            }
            Ok((leader, member)) => {
                out.switchover = Some(Switchover {
                    leader,
                    member,
                    reason: SwitchoverReason::Requested,
                    object_exists: state.failover_object,
                })
            }
        }
        return out;
    }

    // Before a drain: only to a synchronous standby that is healthy (no acknowledged write is
    // lost, and the new primary is not on its way out too).
    let primary_draining = state
        .primary()
        .and_then(|m| m.node.as_deref())
        .and_then(|n| observed.node(n))
        .is_some_and(draining);
    if primary_draining
        && !busy
        && let (Some(leader), Some(standby)) = (state.leader.clone(), state.healthy_sync_standby())
    {
        out.switchover = Some(Switchover {
            leader,
            member: Some(standby.pod.clone()),
            reason: SwitchoverReason::NodeDrain,
            object_exists: state.failover_object,
        });
        return out;
    }
    if let Some(rebuild) = rebuild(site, observed, state, now) {
        out.rebuild = Some(rebuild);
        return out;
    }
    let restart = restart_step(observed, state);
    if restart.is_none() && !busy {
        match respread(site, observed, state, now) {
            Respread::Calm => {}
            Respread::Wait(d) => out.recheck = Some(d),
            Respread::Move(m) => out.move_instance = Some(m),
            Respread::Rebuild(r) => out.rebuild = Some(r),
        }
        return out;
    }
    match restart {
        Some(RestartStep::Delete(pod)) => out.restart_pod = Some(pod),
        Some(RestartStep::SwitchOver) if !busy => {
            if let (Some(leader), Some(standby)) =
                (state.leader.clone(), restart_target(site, state))
            {
                out.switchover = Some(Switchover {
                    leader,
                    member: standby,
                    reason: SwitchoverReason::Restart,
                    object_exists: state.failover_object,
                });
            }
        }
        _ => {}
    }
    out
}

/// The next step of moving the database pods to the StatefulSet's update revision.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RestartStep {
    Delete(String),
    /// Only the primary is left on the old template.
    SwitchOver,
}

/// The StatefulSet controller labels each pod with the revision of its template.
const REVISION_LABEL: &str = "controller-revision-hash";

fn restart_step(observed: &Observed, state: &State) -> Option<RestartStep> {
    let sts = observed.statefulset.as_ref()?;
    let status = sts.status.as_ref()?;
    // A status from before the last change of the template names an old revision.
    if status.observed_generation.unwrap_or(0) < sts.metadata.generation.unwrap_or(0) {
        return None;
    }
    let update = status.update_revision.as_deref()?;
    let replicas = usize::try_from(sts.spec.as_ref()?.replicas.unwrap_or(1)).unwrap_or(1);
    let pods = observed.database_pods();
    // One at a time: while a pod goes or comes, wait.
    if pods.iter().any(|p| p.metadata.deletion_timestamp.is_some()) || pods.len() < replicas {
        return None;
    }
    let outdated = |p: &&&Pod| p.labels().get(REVISION_LABEL).map(String::as_str) != Some(update);
    let by_ordinal_desc = |mut v: Vec<String>| {
        v.sort_by_key(|n| std::cmp::Reverse(ordinal(n)));
        v.into_iter().next()
    };
    let serving = |p: &&&Pod| state.serving(p);
    // An outdated pod that does not serve first: it cannot get worse, and only its deletion
    // gives it a fixed template.
    let unready: Vec<String> = pods
        .iter()
        .filter(outdated)
        .filter(|p| !serving(p))
        .map(|p| p.name_any())
        .collect();
    if let Some(pod) = by_ordinal_desc(unready) {
        return Some(RestartStep::Delete(pod));
    }
    // A restarted replica counts once it streams again, not when PostgreSQL merely runs.
    if !pods.iter().all(|p| state.serving(p)) {
        return None;
    }
    let leader = state.leader.as_deref();
    if state.leader_object && leader.is_none() && pods.len() > 1 {
        // A leader race is on: no ready instance goes before its result.
        return None;
    }
    let replicas_outdated: Vec<String> = pods
        .iter()
        .filter(outdated)
        .map(|p| p.name_any())
        .filter(|n| Some(n.as_str()) != leader)
        .collect();
    if let Some(pod) = by_ordinal_desc(replicas_outdated) {
        return Some(RestartStep::Delete(pod));
    }
    let primary = pods.iter().filter(outdated).map(|p| p.name_any()).next()?;
    if pods.len() == 1 || !state.leader_object {
        // Nobody to switch over to, or no Patroni yet (it has never published a leader).
        Some(RestartStep::Delete(primary))
    } else {
        Some(RestartStep::SwitchOver)
    }
}

/// A standby failing for `spec.database.rebuildFailingStandbySeconds`, when rebuilding it is
/// safe: a serving primary to clone from, no pod coming or going, the standby on the primary's
/// pod template (a bad new template would fail again on any volume), and no rebuild within
/// `REBUILD_INTERVAL`.
fn rebuild(
    site: &ArticleSite,
    observed: &Observed,
    state: &State,
    now: Timestamp,
) -> Option<Rebuild> {
    let after = site.spec.database.rebuild_failing_standby_seconds;
    if after <= 0 {
        return None;
    }
    let last = site
        .status
        .as_ref()
        .and_then(|s| s.database.as_ref()?.last_rebuild.as_ref());
    if last.is_some_and(|r| now.duration_since(r.at.0) < REBUILD_INTERVAL) {
        return None;
    }
    let pods = observed.database_pods();
    if pods.len() < 2 || pods.iter().any(|p| crate::ha::is_terminating(p)) {
        return None;
    }
    let leader = state.leader.as_deref()?;
    let primary = pods.iter().find(|p| p.name_any() == leader)?;
    if !state.serving(primary) {
        return None;
    }
    let revision = primary.labels().get(REVISION_LABEL)?;
    let mut failing: Vec<(String, String)> = pods
        .iter()
        .filter(|p| p.name_any() != leader && p.labels().get(REVISION_LABEL) == Some(revision))
        .filter(|p| crate::ha::unready_for(p, now).is_some_and(|d| d.as_secs() >= after))
        .filter_map(|p| {
            let name = p.name_any();
            let patroni_state = state
                .member(&name)
                .and_then(|m| m.status.as_ref())
                .map(|s| s.state.as_str())
                .filter(|s| FAILED_STATES.contains(s));
            let why = if crate::ha::crash_looping(p) {
                format!("its container has been crash-looping for over {after}s")
            } else {
                format!(
                    "Patroni has reported `{}` for over {after}s",
                    patroni_state?
                )
            };
            Some((name, why))
        })
        .collect();
    failing.sort_by_key(|(n, _)| std::cmp::Reverse(ordinal(n)));
    let (pod, why) = failing.into_iter().next()?;
    Some(Rebuild {
        claim: format!("{}-{pod}", crate::resources::statefulset::DATA_VOLUME),
        pod,
        why,
    })
}

/// The replacement of a moved instance is created within this long of the move (the old
/// pod's graceful stop, then the StatefulSet): a pod of that name created so soon after a move
/// and found on the node it was moved off was held there (by its volume's node affinity, or
/// by the scheduler). One created later is a new pod after another fault, not a failed move.
pub const MOVE_REPLACEMENT_WITHIN: SignedDuration = SignedDuration::from_secs(2 * 60);

/// What `respread` found.
#[derive(Debug, PartialEq)]
enum Respread {
    Calm,
    Wait(std::time::Duration),
    Move(InstanceMove),
    /// The instance came back to the node it was moved off: a new volume lets it go.
    Rebuild(Rebuild),
}

/// A replica to move off a node (or zone) that holds two instances more than another eligible
/// one, only while everything is calm: every instance on the StatefulSet's update revision,
/// serving (the primary, the replicas streaming), none coming or going, no move within
/// `spread::SETTLE`. Never the primary, and, in synchronous modes, only while another replica
/// streams to stand in for it as the synchronous standby.
fn respread(site: &ArticleSite, observed: &Observed, state: &State, now: Timestamp) -> Respread {
    let Some(sts) = observed.statefulset.as_ref() else {
        return Respread::Calm;
    };
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let update = sts
        .status
        .as_ref()
        .filter(|s| s.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0))
        .and_then(|s| s.update_revision.as_deref());
    let pods = observed.database_pods();
    let Some(leader) = state.leader.as_deref() else {
        return Respread::Calm;
    };
    let calm = update.is_some()
        && pods.len() == usize::try_from(replicas).unwrap_or(0)
        && pods.iter().any(|p| p.name_any() == leader)
        && pods.iter().all(|p| {
            !crate::ha::is_terminating(p)
                && state.serving(p)
                && p.labels().get(REVISION_LABEL).map(String::as_str) == update
        });
    if !calm {
        return Respread::Calm;
    }
    let db = site.status.as_ref().and_then(|s| s.database.as_ref());
    let last_move = db.and_then(|d| d.last_move.as_ref());
    if let Some(m) = last_move {
        let since = now.duration_since(m.at.0);
        if since < crate::spread::SETTLE {
            let left = (crate::spread::SETTLE - since).as_secs().max(1);
            return Respread::Wait(std::time::Duration::from_secs(left as u64));
        }
    }
    let asynchronous = site.spec.database.synchronous_mode == SynchronousMode::Asynchronous;
    let movable = |p: &Pod| {
        let name = p.name_any();
        name != leader
            && (asynchronous
                || pods
                    .iter()
                    .any(|o| o.name_any() != name && o.name_any() != leader && state.serving(o)))
    };
    match crate::spread::pick(site, &pods, movable, &observed.node_facts, now) {
        crate::spread::Pick::Calm => Respread::Calm,
        crate::spread::Pick::Wait(d) => Respread::Wait(d),
        crate::spread::Pick::Move { pod, from, counts } => {
            let created = pods
                .iter()
                .find(|p| p.name_any() == pod)
                .and_then(|p| p.metadata.creation_timestamp.as_ref())
                .map(|t| t.0);
            let held = last_move.is_some_and(|m| {
                m.instance == pod
                    && m.from == from
                    && created.is_some_and(|c| {
                        c >= m.at.0 && c.duration_since(m.at.0) < MOVE_REPLACEMENT_WITHIN
                    })
            });
            if !held {
                return Respread::Move(InstanceMove { pod, from, counts });
            }
            // Held on its node: a new volume lets it go, at most once per `REBUILD_INTERVAL`
            // (each rebuild copies the whole database; a scheduler that still insists then
            // leaves it, and `DatabaseHighlyAvailable` says so).
            let rebuilt_lately = db
                .and_then(|d| d.last_rebuild.as_ref())
                .is_some_and(|r| now.duration_since(r.at.0) < REBUILD_INTERVAL);
            if rebuilt_lately {
                return Respread::Calm;
            }
            Respread::Rebuild(Rebuild {
                claim: format!("{}-{pod}", crate::resources::statefulset::DATA_VOLUME),
                why: format!(
                    "it came back to {from} after it was moved off to restore the spread (instances per node {counts}): its volume holds it there"
                ),
                pod,
            })
        }
    }
}

/// Whom the primary hands over to before its restart: the healthy synchronous standby (in
/// synchronous modes nobody else may take over), any ready replica in asynchronous mode.
/// `None` inside: let Patroni choose; outer `None`: nobody can take over now.
fn restart_target(site: &ArticleSite, state: &State) -> Option<Option<String>> {
    match site.spec.database.synchronous_mode {
        SynchronousMode::Asynchronous => state
            .members
            .iter()
            .any(|m| Some(m.pod.as_str()) != state.leader.as_deref() && m.ready)
            .then_some(None),
        _ => state.healthy_sync_standby().map(|m| Some(m.pod.clone())),
    }
}

/// The ordinal of a StatefulSet pod name (`<sts>-<n>`).
fn ordinal(pod: &str) -> u32 {
    pod.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// (leader, member) for an annotation value, or why not.
fn switchover_target(state: &State, target: &str) -> Result<(String, Option<String>), String> {
    let Some(leader) = state.leader.clone() else {
        return Err("the database has no primary to switch over from".into());
    };
    if target == ANY || target.is_empty() {
        return if state.members.iter().any(|m| m.pod != leader && m.ready) {
            Ok((leader, None))
        } else {
            Err("no ready replica to switch over to".into())
        };
    }
    if target == leader {
        return Err(format!("{target} is already the primary"));
    }
    match state.member(target) {
        Some(m) if m.ready => {
            if !state.sync_standbys.is_empty() && !state.sync_standbys.iter().any(|s| s == target) {
                // Patroni refuses a non-synchronous candidate in synchronous mode.
                Err(format!(
                    "{target} is not a synchronous standby (synchronous: {}); name one of those or any",
                    state.sync_standbys.join(", ")
                ))
            } else {
                Ok((leader, Some(target.to_string())))
            }
        }
        Some(_) => Err(format!("{target} is not ready")),
        None => Err(format!(
            "{target} is not an instance of this site (instances: {})",
            state
                .members
                .iter()
                .map(|m| m.pod.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn config_patch(site: &ArticleSite, state: &State) -> Option<ConfigPatch> {
    let (config, resource_version) = state.config.as_ref()?;
    let want = patroni_config::synchronous_keys(site.spec.database.synchronous_mode);
    (state.synchronous_keys()? != want).then(|| ConfigPatch {
        config: patroni::with_synchronous_keys(config, want),
        resource_version: resource_version.clone(),
    })
}
