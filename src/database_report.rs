//! Report, the database half: `status.database` from what Patroni publishes, the
//! `DatabaseHighlyAvailable` condition, and leader changes (failover or switchover) found by
//! comparing with the previous status. Pure; `status::compute` calls it.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::act::Outcomes;
use crate::crd::{DatabaseStatus, InstanceStatus, LeaderChange, StandbyRebuild, SynchronousMode};
use crate::patroni::{PRIMARY, State};
use crate::plan::database::SWITCHOVER_TIMEOUT;
use crate::reason::Reason;

/// A replica further behind than this is reported as lagging: 16 MiB is one WAL segment,
/// seconds of writes at the sites' rates; a synchronous standby is never this far behind.
pub const LAG_THRESHOLD_BYTES: i64 = 16 << 20;

pub const SWITCHOVER: &str = "Switchover";
pub const FAILOVER: &str = "Failover";

/// The Patroni part of `status.database`, filled into `status`.
pub fn fill(
    status: &mut DatabaseStatus,
    state: &State,
    previous: Option<&DatabaseStatus>,
    outcomes: &Outcomes,
    now: &Time,
) {
    let primary = state.primary().map(|m| m.pod.clone());
    status.primary = primary.clone();
    status.timeline = state.primary().and_then(|m| m.status.as_ref()?.timeline);
    status.synchronous_standbys = state
        .sync_standbys
        .iter()
        .filter(|s| Some(s.as_str()) != state.leader.as_deref())
        .cloned()
        .collect();
    status.synchronous_standby = status.synchronous_standbys.first().cloned();
    status.instances = state
        .members
        .iter()
        .map(|m| InstanceStatus {
            name: m.pod.clone(),
            role: state.role(m),
            node: m.node.clone(),
            state: m
                .status
                .as_ref()
                .map(|s| s.state.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            lag_bytes: state.lag_bytes(m),
        })
        .collect();

    let prev = previous.cloned().unwrap_or_default();
    let before = prev.last_primary.clone().or(prev.primary.clone());
    status.last_primary = primary.clone().or(before.clone());
    status.failovers = prev.failovers;
    status.switchovers = prev.switchovers;
    status.last_leader_change = prev.last_leader_change.clone();
    status.last_rebuild = match &outcomes.standby_rebuilt {
        Some(r) => Some(StandbyRebuild {
            instance: r.pod.clone(),
            at: now.clone(),
            reason: r.why.clone(),
        }),
        None => prev.last_rebuild.clone(),
    };
    let pending = prev
        .pending_switchover
        .clone()
        .filter(|p| now.0.duration_since(p.requested_at.0) < SWITCHOVER_TIMEOUT);
    status.pending_switchover = pending.clone();

    if let (Some(from), Some(to)) = (before, primary)
        && from != to
    {
        // A change while a switchover was asked for is that switchover; any other is a failover.
        let kind = if prev.pending_switchover.is_some() {
            status.switchovers += 1;
            SWITCHOVER
        } else {
            status.failovers += 1;
            FAILOVER
        };
        status.last_leader_change = Some(LeaderChange {
            from,
            to,
            at: now.clone(),
            kind: kind.into(),
        });
        status.pending_switchover = None;
    }
    if let Some(sw) = &outcomes.switchover {
        status.pending_switchover = Some(sw.request(now));
    }
}

/// Whether Ready may count the database: once Patroni has published a leader object, only
/// with a leader that is a ready pod (before that, pod readiness alone: on a real node a pod is
/// ready only when Patroni answers /health: PostgreSQL runs).
pub fn leader_ok(state: &State) -> bool {
    !state.leader_object || state.primary().is_some_and(|m| m.ready)
}

/// `DatabaseHighlyAvailable`: whether losing any one instance (its node, its volume) keeps
/// the database writable without losing an acknowledged write.
pub fn highly_available(
    instances: i32,
    mode: SynchronousMode,
    state: &State,
    status: &DatabaseStatus,
) -> (bool, Reason, String) {
    if instances < 2 {
        return (
            false,
            Reason::SingleInstance,
            format!(
                "spec.database.instances is {instances}: losing its node or volume stops the site"
            ),
        );
    }
    let Some(primary) = state.primary() else {
        return (
            false,
            Reason::NoLeader,
            "no instance holds Patroni's leader lock: the database takes no writes".into(),
        );
    };
    let nodes: BTreeSet<&str> = state
        .members
        .iter()
        .filter(|m| m.ready)
        .filter_map(|m| m.node.as_deref())
        .collect();
    if nodes.len() < 2 {
        return (
            false,
            Reason::InstancesOnOneNode,
            format!(
                "the ready instances run on {} node(s): one node failure stops the database",
                nodes.len()
            ),
        );
    }
    match mode {
        SynchronousMode::Asynchronous => {
            let streaming = state.members.iter().any(|m| {
                m.pod != primary.pod
                    && m.ready
                    && m.status.as_ref().is_some_and(|s| s.state == "streaming")
            });
            if !streaming {
                return (
                    false,
                    Reason::NoHealthyReplica,
                    "no ready replica is streaming from the primary".into(),
                );
            }
        }
        SynchronousMode::Synchronous | SynchronousMode::Strict => {
            if state.healthy_sync_standby().is_none() {
                return (
                    false,
                    Reason::NoSynchronousStandby,
                    format!(
                        "no healthy synchronous standby: a failover now could lose acknowledged writes{}",
                        if mode == SynchronousMode::Strict {
                            ", and Strict mode holds every write back"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
    }
    let lagging: Vec<String> = status
        .instances
        .iter()
        .filter(|i| i.role != PRIMARY && i.lag_bytes.unwrap_or(0) > LAG_THRESHOLD_BYTES)
        .map(|i| format!("{} ({} bytes)", i.name, i.lag_bytes.unwrap_or(0)))
        .collect();
    if !lagging.is_empty() {
        return (
            false,
            Reason::ReplicaLagging,
            format!(
                "replicas more than {LAG_THRESHOLD_BYTES} bytes behind the primary: {}",
                lagging.join(", ")
            ),
        );
    }
    (
        true,
        Reason::DatabaseReplicated,
        format!(
            "primary {}, synchronous standby {}, {} instances on {} nodes",
            primary.pod,
            status.synchronous_standby.as_deref().unwrap_or("none"),
            state.members.len(),
            nodes.len()
        ),
    )
}
