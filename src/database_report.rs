//! Report, the database half: `status.database` from what Patroni publishes, the
//! `DatabaseHighlyAvailable` condition, and leader changes (failover or switchover) found by
//! comparing with the previous status. Pure; `status::compute` calls it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::act::Outcomes;
use crate::crd::{
    DatabaseStatus, InstanceMoved, InstanceStatus, LeaderChange, StandbyRebuild, SynchronousMode,
};
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
                .map(|s| s.shown_state().to_string())
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
    status.last_move = match &outcomes.instance_moved {
        Some(m) => Some(InstanceMoved {
            instance: m.pod.clone(),
            from: m.from.clone(),
            at: now.clone(),
        }),
        None => prev.last_move.clone(),
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

/// A node whose loss stops the database: the only node of the ready instances, or, in a
/// synchronous mode, one that runs most of them. Patroni promotes only a standby that
/// provably has every acknowledged commit, which the standbys left after such a loss cannot
/// show (seen on three real nodes: the primary and a replica on one node, which froze; the
/// last replica never promoted). The pods are placed apart, but one recreated after its node
/// was away may land beside another (the spread is preferred, not required).
fn crowded_node(state: &State, mode: SynchronousMode) -> Option<String> {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in state
        .members
        .iter()
        .filter(|m| m.ready)
        .filter_map(|m| m.node.as_deref())
    {
        *per_node.entry(node).or_default() += 1;
    }
    let ready: usize = per_node.values().sum();
    if per_node.len() < 2 {
        return Some(format!(
            "the ready instances run on {} node(s): one node failure stops the database",
            per_node.len()
        ));
    }
    let (node, most) = per_node.into_iter().max_by_key(|(_, n)| *n)?;
    (mode != SynchronousMode::Asynchronous && most * 2 > ready).then(|| {
        format!(
            "{node} runs {most} of the {ready} ready instances: its loss leaves too few to take over without losing acknowledged writes"
        )
    })
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
    if let Some(why) = crowded_node(state, mode) {
        return (false, Reason::InstancesOnOneNode, why);
    }
    match mode {
        SynchronousMode::Asynchronous => {
            let streaming = state.members.iter().any(|m| {
                m.pod != primary.pod && m.ready && m.status.as_ref().is_some_and(|s| s.streaming())
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
    let nodes: BTreeSet<&str> = state
        .members
        .iter()
        .filter(|m| m.ready)
        .filter_map(|m| m.node.as_deref())
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patroni::Member;

    fn on(nodes: &[&str]) -> State {
        State {
            members: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| Member {
                    pod: format!("db-postgresql-{i}"),
                    node: Some((*n).to_string()),
                    role_label: None,
                    status: None,
                    ready: true,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_with_most_instances_is_a_single_point_of_failure_in_synchronous_modes() {
        let quorum = SynchronousMode::Synchronous;
        assert_eq!(crowded_node(&on(&["a", "b", "c"]), quorum), None);
        assert_eq!(crowded_node(&on(&["a", "b"]), quorum), None);
        let why = crowded_node(&on(&["a", "c", "c"]), quorum).expect("c holds two of three");
        assert!(
            why.starts_with("c runs 2 of the 3 ready instances"),
            "{why}"
        );
        let why = crowded_node(&on(&["c", "c", "c"]), quorum).expect("one node");
        assert!(why.contains("run on 1 node(s)"), "{why}");
        // Asynchronous: any replica may take over, at the price of the last commits.
        assert_eq!(
            crowded_node(&on(&["a", "c", "c"]), SynchronousMode::Asynchronous),
            None
        );
        assert!(crowded_node(&on(&["c", "c"]), SynchronousMode::Asynchronous).is_some());
    }
}
