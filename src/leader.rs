//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several replicas exactly one
//! reconciles. See `docs/install.md`, "Leader election".
//!
//! The algorithm is client-go's (`tools/leaderelection`): every write of the Lease carries the
//! `resourceVersion` this replica read (a merge patch with `metadata.resourceVersion` is refused
//! with 409 when the Lease changed since), and a create is refused when the Lease exists, so of
//! candidates racing for one record only one can win. A standby takes the Lease only after it
//! has seen the same record, unchanged, for the record's lease duration on its own clock: the
//! timestamps inside the Lease are never compared with local time.
//!
//! A leader may write until the send time of its last successful Lease write plus the renew
//! deadline (`Fence`); a standby can take the Lease no earlier than that write plus the lease
//! duration. The gap between the two is the margin within which a write sent just before the
//! deadline must reach the API server. The fence is checked on the monotonic clock and on the
//! wall clock (see `fence`): a stopped (SIGSTOP) or stalled process wakes with its deadline
//! passed and sends nothing, not even a renewal.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::fence::{Fence, while_open};

/// Settings of the election (flags of `run`).
#[derive(Clone, Debug)]
pub struct ElectionSettings {
    pub lease_name: String,
    pub namespace: String,
    /// This replica's identity in `spec.holderIdentity` (the pod name in a cluster).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("invalid leader election settings: {0}")]
    Settings(String),

    #[error("lease {namespace}/{lease} is now held by {holder:?}")]
    Taken {
        namespace: String,
        lease: String,
        holder: String,
    },

    #[error(
        "could not renew lease {namespace}/{lease} within the renew deadline {deadline:?}: {last}"
    )]
    RenewDeadline {
        namespace: String,
        lease: String,
        deadline: Duration,
        last: String,
    },
}

impl ElectionSettings {
    /// `retry_period < renew_deadline < lease_duration`, whole seconds (the Lease stores seconds).
    pub fn validate(&self) -> Result<(), ElectionError> {
        let bad = |m: String| Err(ElectionError::Settings(m));
        if self.lease_duration.as_secs() < 2 || self.lease_duration.subsec_nanos() != 0 {
            return bad(format!(
                "--lease-duration-seconds must be a whole number of seconds >= 2, got {:?}",
                self.lease_duration
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return bad(format!(
                "--lease-renew-deadline-seconds ({:?}) must be shorter than --lease-duration-seconds ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return bad(format!(
                "--lease-retry-period-seconds ({:?}) must be positive and shorter than --lease-renew-deadline-seconds ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.identity.is_empty() || self.lease_name.is_empty() || self.namespace.is_empty() {
            return bad("lease name, namespace and identity must not be empty".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    transition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    holder: String,
}

/// The election's metrics, part of the operator's registry (`Metrics::election`), so
/// `/metrics` serves them with the rest.
pub struct LeaderMetrics {
    transitions: Family<TransitionLabels, Counter>,
    /// Writes the fence dropped unsent (see `fence`).
    pub fenced_writes: Counter,
    holder: Family<HolderLabels, Gauge>,
    last_holder: Mutex<Option<String>>,
}

impl LeaderMetrics {
    /// The election's series, registered in `registry` (the operator's, under `leader_`).
    pub fn register(registry: &mut Registry) -> Self {
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "transitions",
            "Leadership transitions of this replica: acquired, renewed_late, lost_taken, lost_renew_deadline, released",
            transitions.clone(),
        );
        let fenced_writes = Counter::default();
        registry.register(
            "fenced_writes",
            "Writes not sent because this replica did not hold a valid Lease",
            fenced_writes.clone(),
        );
        let holder = Family::<HolderLabels, Gauge>::default();
        registry.register(
            "lease_holder",
            "1 for the Lease holder this replica saw last (empty: released)",
            holder.clone(),
        );
        Self {
            transitions,
            fenced_writes,
            holder,
            last_holder: Mutex::new(None),
        }
    }

    fn transition(&self, transition: &str) {
        self.transitions
            .get_or_create(&TransitionLabels {
                transition: transition.into(),
            })
            .inc();
    }

    fn saw_holder(&self, holder: &str) {
        let mut last = self.last_holder.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(holder) {
            return;
        }
        if let Some(old) = last.take() {
            self.holder
                .get_or_create(&HolderLabels { holder: old })
                .set(0);
        }
        self.holder
            .get_or_create(&HolderLabels {
                holder: holder.into(),
            })
            .set(1);
        *last = Some(holder.into());
    }
}

/// The Lease as this replica last saw it, and when it last saw it change (its own clock).
#[derive(Clone, Debug)]
struct Observed {
    resource_version: String,
    spec: LeaseSpec,
    changed_at: Instant,
}

impl Observed {
    fn holder(&self) -> &str {
        self.spec.holder_identity.as_deref().unwrap_or_default()
    }

    /// The record's own duration (1 s once released), ours when it has none.
    fn duration(&self, fallback: Duration) -> Duration {
        self.spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(fallback, Duration::from_secs)
    }
}

#[derive(Default)]
struct State {
    observed: Option<Observed>,
    leading: bool,
}

/// The outcome of one attempt to take or renew the Lease.
#[derive(Debug)]
enum Attempt {
    /// This replica holds the Lease; its write was sent at `sent`.
    Leading { sent: Instant },
    /// Another replica holds a Lease that has not expired (by this replica's clock).
    Held { holder: String },
    /// The Lease changed since it was read (409): read again.
    Conflict,
}

/// One replica's candidacy for the Lease.
pub struct Elector {
    api: Api<Lease>,
    settings: ElectionSettings,
    fence: Arc<Fence>,
    metrics: Arc<LeaderMetrics>,
    state: Mutex<State>,
}

fn micro_now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn lease_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// The decision of one attempt, on what this replica read (client-go's): the holder when
/// another holds a record that this replica has not seen unchanged for its lease duration;
/// else the merge patch that takes or renews it, preconditioned on the version read.
fn take_or_wait(
    record: &Observed,
    s: &ElectionSettings,
    now: Instant,
    now_wall: MicroTime,
) -> Result<serde_json::Value, String> {
    let holder = record.holder();
    let ours = holder == s.identity;
    if !holder.is_empty() && !ours && record.changed_at + record.duration(s.lease_duration) > now {
        return Err(holder.to_string());
    }
    let transitions = record.spec.lease_transitions.unwrap_or(0);
    let (acquire_time, transitions) = match &record.spec.acquire_time {
        Some(t) if ours => (t.clone(), transitions),
        _ if ours => (now_wall.clone(), transitions),
        _ => (now_wall.clone(), transitions.saturating_add(1)),
    };
    Ok(json!({
        "metadata": {"resourceVersion": record.resource_version},
        "spec": {
            "holderIdentity": s.identity,
            "leaseDurationSeconds": lease_seconds(s.lease_duration),
            "acquireTime": acquire_time,
            "renewTime": now_wall,
            "leaseTransitions": transitions,
        },
    }))
}

impl Elector {
    /// `client` should bypass the request throttle (`api_health`): renewals must not queue
    /// behind the reconciler's requests. `fence` is opened while this replica leads.
    pub fn new(
        client: Client,
        settings: ElectionSettings,
        fence: Arc<Fence>,
        metrics: Arc<LeaderMetrics>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            fence,
            metrics,
            state: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &ElectionSettings {
        &self.settings
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what was read or written; the clock of expiry restarts when the record changed.
    fn observe(&self, lease: &Lease) -> Observed {
        let resource_version = lease.resource_version().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        let mut state = self.state();
        let changed_at = match &state.observed {
            Some(o) if o.resource_version == resource_version => o.changed_at,
            _ => Instant::now(),
        };
        let observed = Observed {
            resource_version,
            spec,
            changed_at,
        };
        self.metrics.saw_holder(observed.holder());
        state.observed = Some(observed.clone());
        observed
    }

    /// The fence for this attempt's write: the leader's own (a renewal goes only before the
    /// renew deadline), or, for a standby, one retry period from now.
    fn gate(&self, leading: bool, sent: Instant, sent_wall: SystemTime) -> Arc<Fence> {
        if leading {
            return self.fence.clone();
        }
        let gate = Fence::closed();
        gate.open_until(sent, sent_wall, self.settings.retry_period);
        gate
    }

    /// After a successful write: this replica leads until the renew deadline.
    fn won(&self, lease: &Lease, sent: Instant, sent_wall: SystemTime) -> Attempt {
        self.observe(lease);
        self.state().leading = true;
        self.fence
            .open_until(sent, sent_wall, self.settings.renew_deadline);
        Attempt::Leading { sent }
    }

    /// client-go's `tryAcquireOrRenew`: read (a leader renews with the version it wrote last,
    /// no read), and write only when the Lease is free, expired or this replica's.
    async fn try_acquire_or_renew(&self) -> Result<Attempt, String> {
        let s = &self.settings;
        let leading = self.state().leading && self.fence.open_now();
        let cached = self.state().observed.clone();
        let record = match cached {
            Some(o) if leading && o.holder() == s.identity => o,
            _ => {
                // A leader's read may take until its deadline; a standby's, the renew deadline.
                let limit = self.fence.remaining().filter(|_| leading);
                let read = self.api.get_opt(&s.lease_name);
                let got = tokio::time::timeout(limit.unwrap_or(s.renew_deadline), read)
                    .await
                    .map_err(|_| "no answer to the read of the Lease in time".to_string())?
                    .map_err(|e| format!("read the Lease: {e}"))?;
                match got {
                    Some(lease) => self.observe(&lease),
                    None => return self.create(leading).await,
                }
            }
        };
        let patch = match take_or_wait(&record, s, Instant::now(), micro_now()) {
            Err(holder) => return Ok(Attempt::Held { holder }),
            Ok(patch) => patch,
        };
        let sent = Instant::now();
        let sent_wall = SystemTime::now();
        match self
            .patch_lease(self.gate(leading, sent, sent_wall), &patch)
            .await
        {
            Ok(Ok(lease)) => Ok(self.won(&lease, sent, sent_wall)),
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                self.state().observed = None;
                Ok(Attempt::Conflict)
            }
            Ok(Err(e)) => Err(format!("write the Lease: {e}")),
            Err(closed) => Err(closed.to_string()),
        }
    }

    /// A merge patch of the Lease, sent only while `gate` is open.
    async fn patch_lease(
        &self,
        gate: Arc<Fence>,
        patch: &serde_json::Value,
    ) -> Result<kube::Result<Lease>, crate::fence::FenceClosed> {
        let pp = PatchParams::default();
        let body = Patch::Merge(patch);
        while_open(gate, self.api.patch(&self.settings.lease_name, &pp, &body)).await
    }

    /// The Lease does not exist: create it, held by this replica (409 when another was first).
    async fn create(&self, leading: bool) -> Result<Attempt, String> {
        let s = &self.settings;
        let now = micro_now();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(s.lease_name.clone()),
                namespace: Some(s.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(lease_seconds(s.lease_duration)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        let sent = Instant::now();
        let sent_wall = SystemTime::now();
        let pp = PostParams::default();
        let write = self.api.create(&pp, &lease);
        match while_open(self.gate(leading, sent, sent_wall), write).await {
            Ok(Ok(lease)) => Ok(self.won(&lease, sent, sent_wall)),
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => Ok(Attempt::Conflict),
            Ok(Err(e)) => Err(format!("create the Lease: {e}")),
            Err(closed) => Err(closed.to_string()),
        }
    }

    /// The retry period stretched by up to a fifth (client-go's jitter), so that standbys
    /// started together do not ask in lockstep.
    fn jittered_retry(&self) -> Duration {
        let r = getrandom::u32().unwrap_or(0);
        self.settings
            .retry_period
            .mul_f64(1.0 + 0.2 * f64::from(r) / f64::from(u32::MAX))
    }

    /// Returns once this replica holds the Lease (and the fence is open); retries forever.
    pub async fn acquire(&self) {
        let s = &self.settings;
        let mut last_holder = None::<String>;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading { .. }) => {
                    self.metrics.transition("acquired");
                    info!(
                        lease = %s.lease_name, namespace = %s.namespace, identity = %s.identity,
                        previous = last_holder.as_deref().unwrap_or_default(),
                        renew_deadline = ?s.renew_deadline, lease_duration = ?s.lease_duration,
                        "leader election: acquired the lease, this replica leads"
                    );
                    return;
                }
                Ok(Attempt::Held { holder }) => {
                    if last_holder.as_ref() != Some(&holder) {
                        info!(lease = %s.lease_name, leader = %holder, "leader election: standing by, another replica leads");
                        last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Conflict) => {
                    debug!(lease = %s.lease_name, "leader election: the Lease changed while taking it (another candidate won)");
                }
                Err(e) => {
                    warn!(lease = %s.lease_name, error = %e, "leader election attempt failed");
                }
            }
            tokio::time::sleep(self.jittered_retry()).await;
        }
    }

    /// Renews the Lease every retry period while leading. Returns (only) when leadership is
    /// lost: another holder appears, or no renewal succeeded before the renew deadline. The
    /// fence is closed by then: nothing more is written.
    pub async fn hold(&self) -> ElectionError {
        let s = &self.settings;
        let mut last_sent = Instant::now();
        loop {
            tokio::time::sleep(s.retry_period).await;
            let mut last_error = String::new();
            loop {
                if !self.fence.open_now() {
                    return self.lose(ElectionError::RenewDeadline {
                        namespace: s.namespace.clone(),
                        lease: s.lease_name.clone(),
                        deadline: s.renew_deadline,
                        last: if last_error.is_empty() {
                            "the process was paused or starved past the deadline".into()
                        } else {
                            last_error
                        },
                    });
                }
                match self.try_acquire_or_renew().await {
                    Ok(Attempt::Leading { sent }) => {
                        let gap = sent - last_sent;
                        if gap > s.retry_period.mul_f64(1.5) {
                            self.metrics.transition("renewed_late");
                            warn!(
                                lease = %s.lease_name, since_last_renewal = ?gap,
                                margin_left = ?s.renew_deadline.saturating_sub(gap),
                                "leader election: renewed the lease late"
                            );
                        }
                        last_sent = sent;
                        break;
                    }
                    Ok(Attempt::Held { holder }) => {
                        return self.lose(ElectionError::Taken {
                            namespace: s.namespace.clone(),
                            lease: s.lease_name.clone(),
                            holder,
                        });
                    }
                    // Read again at once: the next attempt shows who holds it now.
                    Ok(Attempt::Conflict) => last_error = "409 Conflict".into(),
                    Err(e) => {
                        warn!(lease = %s.lease_name, error = %e, "lease renewal failed");
                        last_error = e;
                        let left = self.fence.remaining().unwrap_or_default();
                        tokio::time::sleep(s.retry_period.min(left)).await;
                    }
                }
            }
        }
    }

    fn lose(&self, why: ElectionError) -> ElectionError {
        self.fence.close();
        self.state().leading = false;
        let transition = match why {
            ElectionError::Taken { .. } => "lost_taken",
            _ => "lost_renew_deadline",
        };
        self.metrics.transition(transition);
        error!(lease = %self.settings.lease_name, error = %why, "leader election: lost the lease, no more writes");
        why
    }

    /// Gives the Lease up on a clean shutdown (the caller has stopped reconciling), so that a
    /// standby takes over at once instead of after the lease duration. Writes stop first; the
    /// release itself goes only before the renew deadline.
    pub async fn release(&self) {
        let s = &self.settings;
        let left = self.fence.remaining().unwrap_or_default();
        self.fence.close();
        self.state().leading = false;
        if left.is_zero() {
            warn!(lease = %s.lease_name, "did not release the lease: not holding it");
            return;
        }
        let gate = Fence::closed();
        gate.open_until(Instant::now(), SystemTime::now(), left);
        // A renewal cut off by the shutdown may have reached the server after all (409): read
        // the Lease again and release the version that is there, while it is still ours.
        for _ in 0..3 {
            let cached = self.state().observed.clone();
            let record = match cached {
                Some(r) => r,
                None => match while_open(gate.clone(), self.api.get_opt(&s.lease_name)).await {
                    Ok(Ok(Some(lease))) => self.observe(&lease),
                    other => {
                        warn!(lease = %s.lease_name, answer = ?other.map(|r| r.map(|_| ())), "did not release the lease: could not read it");
                        return;
                    }
                },
            };
            if record.holder() != s.identity {
                info!(lease = %s.lease_name, holder = %record.holder(), "did not release the lease: another replica holds it");
                return;
            }
            let now = micro_now();
            let patch = json!({
                "metadata": {"resourceVersion": record.resource_version},
                "spec": {
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "acquireTime": now,
                    "renewTime": now,
                },
            });
            match self.patch_lease(gate.clone(), &patch).await {
                Ok(Ok(_)) => {
                    self.metrics.transition("released");
                    info!(lease = %s.lease_name, "leader election: released the lease on shutdown");
                    return;
                }
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => self.state().observed = None,
                Ok(Err(e)) => {
                    warn!(lease = %s.lease_name, error = %e, "could not release the lease");
                    return;
                }
                Err(e) => {
                    warn!(lease = %s.lease_name, error = %e, "did not release the lease");
                    return;
                }
            }
        }
        warn!(lease = %s.lease_name, "did not release the lease: it kept changing");
    }
}

/// `$POD_NAME`, else `<hostname>_<random>` so that two processes on one host differ.
pub fn default_identity() -> String {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.is_empty()
    {
        return name;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "articlesite-operator".into());
    let mut bytes = [0u8; 4];
    let suffix = match getrandom::fill(&mut bytes) {
        Ok(()) => hex::encode(bytes),
        Err(_) => std::process::id().to_string(),
    };
    format!("{host}_{suffix}")
}

/// `$POD_NAMESPACE`, else the namespace of the mounted service account token.
pub fn default_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(d: u64, r: u64, p: u64) -> ElectionSettings {
        ElectionSettings {
            lease_name: "l".into(),
            namespace: "n".into(),
            identity: "i".into(),
            lease_duration: Duration::from_secs(d),
            renew_deadline: Duration::from_secs(r),
            retry_period: Duration::from_secs(p),
        }
    }

    #[test]
    fn timing_must_leave_a_margin() {
        assert!(settings(15, 10, 2).validate().is_ok());
        let e = settings(10, 10, 2).validate().unwrap_err().to_string();
        assert!(
            e.contains("must be shorter than --lease-duration-seconds"),
            "{e}"
        );
        let e = settings(15, 10, 10).validate().unwrap_err().to_string();
        assert!(e.contains("--lease-retry-period-seconds"), "{e}");
        let e = settings(1, 0, 0).validate().unwrap_err().to_string();
        assert!(e.contains(">= 2"), "{e}");
    }

    fn record(holder: &str, seen_ago: Duration, duration: i32) -> (Observed, Instant) {
        let now = Instant::now() + Duration::from_secs(3600);
        let observed = Observed {
            resource_version: "42".into(),
            spec: LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(duration),
                lease_transitions: Some(3),
                acquire_time: Some(micro_now()),
                ..Default::default()
            },
            changed_at: now - seen_ago,
        };
        (observed, now)
    }

    #[test]
    fn another_holder_is_waited_out_for_its_duration_on_the_local_clock() {
        let s = settings(15, 10, 2);
        // Seen unchanged for 14 s of a 15 s lease: wait.
        let (r, now) = record("other", Duration::from_secs(14), 15);
        assert_eq!(take_or_wait(&r, &s, now, micro_now()), Err("other".into()));
        // 15 s: take it, preconditioned on the version read, one more transition.
        let (r, now) = record("other", Duration::from_secs(15), 15);
        let p = take_or_wait(&r, &s, now, micro_now()).unwrap();
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["spec"]["holderIdentity"], "i");
        assert_eq!(p["spec"]["leaseTransitions"], 4);
        assert_eq!(p["spec"]["leaseDurationSeconds"], 15);
        // A released Lease (no holder, 1 s) is taken at once.
        let (r, now) = record("", Duration::ZERO, 1);
        assert!(take_or_wait(&r, &s, now, micro_now()).is_ok());
    }

    #[test]
    fn a_renewal_keeps_the_acquire_time_and_the_transitions() {
        let s = settings(15, 10, 2);
        let (r, now) = record("i", Duration::ZERO, 15);
        let p = take_or_wait(&r, &s, now, micro_now()).unwrap();
        assert_eq!(p["spec"]["leaseTransitions"], 3);
        assert_eq!(
            p["spec"]["acquireTime"],
            serde_json::to_value(r.spec.acquire_time.as_ref().unwrap()).unwrap()
        );
        assert_eq!(p["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn identities_differ_per_process() {
        if std::env::var_os("POD_NAME").is_none() {
            assert_ne!(default_identity(), default_identity());
        }
    }
}
