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
//! - Deleting the EndpointSlices the endpointslice controller left for the client Service
//!   from before it lost its selector: kube-proxy would otherwise keep routing to the old pod
//!   IP next to Patroni's leader.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::crd::{ArticleSite, SwitchoverRequest};
use crate::observe::Observed;
use crate::patroni::{self, State};
use crate::resources::patroni_config;

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
}

impl DatabasePlan {
    pub fn is_empty(&self) -> bool {
        self.switchover.is_none()
            && !self.clear_annotation
            && self.config.is_none()
            && self.delete_endpoint_slices.is_empty()
    }
}

/// A cordoned node, or one tainted out of service: its pods are about to be evicted.
pub fn draining(node: &Node) -> bool {
    let Some(spec) = node.spec.as_ref() else {
        return false;
    };
    spec.unschedulable == Some(true)
        || spec.taints.iter().flatten().any(|t| {
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
    let primary_draining = observed.primary_node.as_ref().is_some_and(draining);
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
    }
    out
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
        config: patroni::with_synchronous_keys(config, want.0, want.1),
        resource_version: resource_version.clone(),
    })
}
