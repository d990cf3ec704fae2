//! What Patroni publishes in the Kubernetes API, read without dialing a pod: the annotations
//! of its Endpoints objects (Kubernetes DCS in Endpoints mode) and of its own pods. Pure
//! parsing, so the status and the plan are unit-tested from the same values a test writes.
//!
//! For scope `<site>-postgresql` (Patroni's `dcs/kubernetes.py`):
//! - Endpoints `<scope>`: the leader lock, annotations `leader` (pod name), `optime` (the
//!   primary's WAL position in bytes), `ttl`, `renewTime`, `acquireTime`, `transitions`; its
//!   subsets carry the leader's IP, which the selector-less client Service routes to;
//! - Endpoints `<scope>-sync`: `leader` and `sync_standby` (comma-separated pod names);
//! - Endpoints `<scope>-config`: `config` (the dynamic configuration, JSON), `initialize`
//!   (the system id), `history`;
//! - Endpoints `<scope>-failover`: `leader` and `member` of a requested switchover; Patroni
//!   clears them when it has acted (or refused);
//! - each member pod: annotation `status` (JSON: `role`, `state`, `xlog_location`,
//!   `replay_lsn`, `receive_lsn`, `timeline`, ...) and label `role=primary|replica`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::ResourceExt;
use serde::Deserialize;

use crate::resources::Names;

/// Patroni's label with the cluster scope (`kubernetes.scope_label`): Patroni lists its pods
/// and Endpoints with the labels it is given plus this one, so the database pods and the
/// failover object the operator writes carry it.
pub const SCOPE_LABEL: &str = "cluster-name";
/// Patroni's role label (`kubernetes.role_label`) and its values in Patroni 4.
pub const ROLE_LABEL: &str = "role";
pub const PRIMARY: &str = "primary";
pub const REPLICA: &str = "replica";

/// Annotation of the leader, sync and failover objects.
pub const LEADER_ANNOTATION: &str = "leader";
pub const MEMBER_ANNOTATION: &str = "member";
pub const OPTIME_ANNOTATION: &str = "optime";
pub const SYNC_STANDBY_ANNOTATION: &str = "sync_standby";
pub const CONFIG_ANNOTATION: &str = "config";
pub const INITIALIZE_ANNOTATION: &str = "initialize";
pub const STATUS_ANNOTATION: &str = "status";

/// Patroni's scope of a site (the StatefulSet's name, and the leader object's).
pub fn scope(site: &str) -> String {
    Names::database(site)
}
pub fn sync_name(site: &str) -> String {
    format!("{}-sync", scope(site))
}
pub fn config_name(site: &str) -> String {
    format!("{}-config", scope(site))
}
pub fn failover_name(site: &str) -> String {
    format!("{}-failover", scope(site))
}

/// A member's `status` annotation (the fields the operator reads; Patroni writes more).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub xlog_location: Option<i64>,
    #[serde(default)]
    pub replay_lsn: Option<i64>,
    #[serde(default)]
    pub timeline: Option<i64>,
}

/// One database pod with what Patroni says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub pod: String,
    pub node: Option<String>,
    /// The pod's `role` label (Patroni relabels its own pod).
    pub role_label: Option<String>,
    /// `None` while Patroni has not annotated the pod (or the JSON does not parse).
    pub status: Option<MemberStatus>,
    pub ready: bool,
}

/// A switchover written to the failover object and not yet acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingFailover {
    pub leader: Option<String>,
    pub member: Option<String>,
}

/// Patroni's view of one cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// The leader Endpoints exists: Patroni has run (or the endpoints controller left the
    /// object of a Service that had a selector before the upgrade).
    pub leader_object: bool,
    /// The holder of the leader lock (an empty `leader` annotation is none).
    pub leader: Option<String>,
    pub leader_optime: Option<i64>,
    pub sync_standbys: Vec<String>,
    /// The dynamic configuration and the resourceVersion it was read at.
    pub config: Option<(serde_json::Value, String)>,
    /// The cluster's system id is recorded (`initialize` on the config object): Patroni has
    /// bootstrapped the cluster or taken an existing data directory over.
    pub initialized: bool,
    pub failover: Option<PendingFailover>,
    /// Whether the failover object exists (a switchover patches it, else creates it).
    pub failover_object: bool,
    /// The database pods, by name.
    pub members: Vec<Member>,
}

impl State {
    /// From the site's Endpoints (any; the four Patroni objects are picked by name) and its
    /// database pods.
    pub fn read(site: &str, endpoints: &[Endpoints], database_pods: &[&Pod]) -> Self {
        let by_name = |name: String| endpoints.iter().find(|e| e.name_any() == name);
        let annotation = |e: Option<&Endpoints>, key: &str| {
            e.and_then(|e| e.annotations().get(key))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let leader_ep = by_name(scope(site));
        let sync = by_name(sync_name(site));
        let config_ep = by_name(config_name(site));
        let failover_ep = by_name(failover_name(site));
        let config = config_ep.and_then(|e| {
            let value = serde_json::from_str(e.annotations().get(CONFIG_ANNOTATION)?).ok()?;
            Some((value, e.resource_version().unwrap_or_default()))
        });
        let failover = {
            let leader = annotation(failover_ep, LEADER_ANNOTATION);
            let member = annotation(failover_ep, MEMBER_ANNOTATION);
            (leader.is_some() || member.is_some()).then_some(PendingFailover { leader, member })
        };
        let mut members: Vec<Member> = database_pods
            .iter()
            .map(|p| Member {
                pod: p.name_any(),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                role_label: p.labels().get(ROLE_LABEL).cloned(),
                status: p
                    .annotations()
                    .get(STATUS_ANNOTATION)
                    .and_then(|s| serde_json::from_str(s).ok()),
                ready: crate::ha::is_ready(p),
            })
            .collect();
        members.sort_by(|a, b| a.pod.cmp(&b.pod));
        State {
            leader_object: leader_ep.is_some(),
            leader: annotation(leader_ep, LEADER_ANNOTATION),
            leader_optime: annotation(leader_ep, OPTIME_ANNOTATION).and_then(|v| v.parse().ok()),
            sync_standbys: annotation(sync, SYNC_STANDBY_ANNOTATION)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            config,
            initialized: annotation(config_ep, INITIALIZE_ANNOTATION).is_some(),
            failover,
            failover_object: failover_ep.is_some(),
            members,
        }
    }

    pub fn member(&self, pod: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.pod == pod)
    }

    /// A pod that serves its part: ready, and streaming from the primary unless it is the
    /// leader. (The pods' readiness is only "PostgreSQL runs", so that a replica stays in the
    /// read Service while the primary is lost.) While nobody holds the lock (before Patroni
    /// has published anything, or during a leader race) nobody can stream: readiness alone.
    pub fn serving(&self, pod: &Pod) -> bool {
        if !crate::ha::is_ready(pod) {
            return false;
        }
        let name = pod.name_any();
        self.leader.is_none()
            || self.leader.as_deref() == Some(name.as_str())
            || self
                .member(&name)
                .and_then(|m| m.status.as_ref())
                .is_some_and(|s| s.state == "streaming")
    }

    /// The leader, when it is one of the site's pods.
    pub fn primary(&self) -> Option<&Member> {
        self.leader.as_deref().and_then(|l| self.member(l))
    }

    /// The primary's WAL position: its own status, else the leader object's `optime`.
    pub fn primary_position(&self) -> Option<i64> {
        self.primary()
            .and_then(|m| m.status.as_ref()?.xlog_location)
            .or(self.leader_optime)
    }

    /// Bytes a replica is behind the primary (`None` for the primary or without positions).
    pub fn lag_bytes(&self, member: &Member) -> Option<i64> {
        if Some(member.pod.as_str()) == self.leader.as_deref() {
            return Some(0);
        }
        let status = member.status.as_ref()?;
        let replayed = status.replay_lsn.or(status.xlog_location)?;
        Some((self.primary_position()? - replayed).max(0))
    }

    /// The role to report: the leader lock decides `primary`; else Patroni's own word.
    pub fn role(&self, member: &Member) -> String {
        if Some(member.pod.as_str()) == self.leader.as_deref() {
            return PRIMARY.into();
        }
        match (&member.status, &member.role_label) {
            (Some(s), _) if s.role == "replica" || s.role == "standby" => REPLICA.into(),
            (Some(s), _) if !s.role.is_empty() && s.role != "primary" && s.role != "master" => {
                s.role.clone()
            }
            (_, Some(label)) if label == REPLICA => REPLICA.into(),
            _ => "unknown".into(),
        }
    }

    /// A healthy synchronous standby: in the sync set, ready, streaming or running, not the leader.
    pub fn healthy_sync_standby(&self) -> Option<&Member> {
        self.sync_standbys
            .iter()
            .filter(|s| Some(s.as_str()) != self.leader.as_deref())
            .filter_map(|s| self.member(s))
            .find(|m| {
                m.ready
                    && m.status
                        .as_ref()
                        .is_some_and(|s| matches!(s.state.as_str(), "streaming" | "running"))
            })
    }

    /// The value of the dynamic configuration's synchronous keys, when it has been read.
    pub fn synchronous_keys(&self) -> Option<SynchronousKeys> {
        let (config, _) = self.config.as_ref()?;
        let strict = match config.get("synchronous_mode_strict") {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => matches!(s.as_str(), "on" | "true"),
            _ => false,
        };
        Some(SynchronousKeys {
            mode: config
                .get("synchronous_mode")
                .map_or(SyncReplication::Off, SyncReplication::parse),
            strict,
        })
    }
}

/// Patroni's `synchronous_mode`: off, `on` (one named synchronous standby) or `quorum`
/// (`ANY n (every healthy replica)`: a commit waits for the first n answers, so one slow or
/// lost replica never holds writes back while another still answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncReplication {
    Off,
    On,
    Quorum,
}

impl SyncReplication {
    /// Patroni accepts booleans, `on`/`off` and `quorum`.
    fn parse(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Bool(true) => Self::On,
            serde_json::Value::String(s) if s == "quorum" => Self::Quorum,
            serde_json::Value::String(s) if matches!(s.as_str(), "on" | "true") => Self::On,
            _ => Self::Off,
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        match self {
            Self::Off => false.into(),
            Self::On => true.into(),
            Self::Quorum => "quorum".into(),
        }
    }
}

/// The two keys of Patroni's dynamic configuration that follow `spec.database.synchronousMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynchronousKeys {
    pub mode: SyncReplication,
    /// `synchronous_mode_strict`: no commit is acknowledged without a standby.
    pub strict: bool,
}

/// The `config` annotation with the synchronous keys set, keeping every other key (Patroni owns
/// them; `patronictl edit-config` may have changed them).
pub fn with_synchronous_keys(
    config: &serde_json::Value,
    keys: SynchronousKeys,
) -> serde_json::Value {
    let mut config = match config {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    config.insert("synchronous_mode".into(), keys.mode.to_json());
    config.insert("synchronous_mode_strict".into(), keys.strict.into());
    serde_json::Value::Object(config)
}

/// The labels Patroni is given (`PATRONI_KUBERNETES_LABELS`): the database pods' selector.
pub fn labels(site: &crate::crd::ArticleSite) -> BTreeMap<String, String> {
    crate::resources::selector_labels(site, crate::resources::Component::Database)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoints(name: &str, annotations: serde_json::Value) -> Endpoints {
        serde_json::from_value(json!({"metadata": {"name": name, "resourceVersion": "7",
            "annotations": annotations}}))
        .unwrap()
    }

    fn pod(name: &str, role: Option<&str>, status: serde_json::Value) -> Pod {
        let mut labels = serde_json::Map::new();
        if let Some(r) = role {
            labels.insert("role".into(), r.into());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels,
                "annotations": {"status": status.to_string()}},
            "spec": {"nodeName": format!("node-{name}"), "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    #[test]
    fn reads_leader_sync_lag_and_pending_failover() {
        let eps = [
            endpoints(
                "s-postgresql",
                json!({"leader": "s-postgresql-0", "optime": "5000"}),
            ),
            endpoints(
                "s-postgresql-sync",
                json!({"leader": "s-postgresql-0", "sync_standby": "s-postgresql-1"}),
            ),
            endpoints(
                "s-postgresql-config",
                json!({"config": "{\"ttl\":20,\"synchronous_mode\":true}"}),
            ),
            endpoints("s-postgresql-failover", json!({"leader": "s-postgresql-0"})),
        ];
        let p0 = pod(
            "s-postgresql-0",
            Some("primary"),
            json!({"role": "primary", "state": "running", "xlog_location": 6000, "timeline": 2}),
        );
        let p1 = pod(
            "s-postgresql-1",
            Some("replica"),
            json!({"role": "replica", "state": "streaming", "xlog_location": 5900, "replay_lsn": 5500}),
        );
        let p2 = pod("s-postgresql-2", None, json!("not json at all"));
        let st = State::read("s", &eps, &[&p0, &p1, &p2]);
        assert_eq!(st.leader.as_deref(), Some("s-postgresql-0"));
        assert_eq!(st.sync_standbys, ["s-postgresql-1"]);
        assert_eq!(st.primary_position(), Some(6000));
        let m1 = st.member("s-postgresql-1").unwrap();
        assert_eq!(st.lag_bytes(m1), Some(500), "replayed, not received");
        assert_eq!(st.role(m1), "replica");
        let m2 = st.member("s-postgresql-2").unwrap();
        assert_eq!((st.lag_bytes(m2), st.role(m2).as_str()), (None, "unknown"));
        assert_eq!(st.healthy_sync_standby().unwrap().pod, "s-postgresql-1");
        assert_eq!(
            st.failover,
            Some(PendingFailover {
                leader: Some("s-postgresql-0".into()),
                member: None
            })
        );
        assert_eq!(
            st.synchronous_keys(),
            Some(SynchronousKeys {
                mode: SyncReplication::On,
                strict: false
            })
        );
        let quorum = SynchronousKeys {
            mode: SyncReplication::Quorum,
            strict: true,
        };
        let patched = with_synchronous_keys(&st.config.as_ref().unwrap().0, quorum);
        assert_eq!(patched["ttl"], 20, "other keys are kept");
        assert_eq!(
            (
                &patched["synchronous_mode"],
                &patched["synchronous_mode_strict"]
            ),
            (&json!("quorum"), &json!(true))
        );
        assert_eq!(
            SyncReplication::parse(&json!("quorum")),
            SyncReplication::Quorum
        );
        assert_eq!(SyncReplication::parse(&json!("off")), SyncReplication::Off);
    }

    #[test]
    fn a_replica_serves_once_it_streams() {
        let eps = [endpoints(
            "s-postgresql",
            json!({"leader": "s-postgresql-0"}),
        )];
        let p0 = pod(
            "s-postgresql-0",
            Some("primary"),
            json!({"state": "running"}),
        );
        let p1 = pod(
            "s-postgresql-1",
            Some("replica"),
            json!({"state": "streaming"}),
        );
        let p2 = pod(
            "s-postgresql-2",
            Some("replica"),
            json!({"state": "running"}),
        );
        let st = State::read("s", &eps, &[&p0, &p1, &p2]);
        assert_eq!(
            [&p0, &p1, &p2].map(|p| st.serving(p)),
            [true, true, false],
            "the leader; a streaming replica; a replica whose PostgreSQL runs but does not stream"
        );
        // Before Patroni has published a leader object, readiness alone.
        let st = State::read("s", &[], &[&p2]);
        assert!(st.serving(&p2));
    }

    #[test]
    fn an_empty_leader_annotation_is_no_leader() {
        let eps = [endpoints("s-postgresql", json!({"leader": ""}))];
        let st = State::read("s", &eps, &[]);
        assert!(st.leader_object);
        assert_eq!(st.leader, None);
        assert_eq!(st.failover, None);
        assert!(st.healthy_sync_standby().is_none());
    }
}
