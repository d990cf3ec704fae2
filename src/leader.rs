//! Leader election over a `coordination.k8s.io/v1` Lease (crate `kube-leader-election`), so that
//! of several replicas exactly one reconciles. See `docs/install.md`, "Leader election".
//!
//! Timing follows client-go: the leader renews every `retry_period` and gives up leadership when
//! it has not renewed for `renew_deadline`, which is shorter than `lease_duration`, the time a
//! standby waits after the last renewal before it takes the Lease. The gap between the two is
//! the margin in which a leader that cannot reach the API server has already stopped writing.

use std::time::Duration;

use kube::Client;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::time::Instant;
use tracing::{info, warn};

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

/// One replica's candidacy for the Lease.
pub struct Elector {
    lock: LeaseLock,
    settings: ElectionSettings,
}

fn holder(result: &LeaseLockResult) -> String {
    result
        .lease()
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

impl Elector {
    pub fn new(client: Client, settings: ElectionSettings) -> Self {
        let lock = LeaseLock::new(
            client,
            &settings.namespace,
            LeaseLockParams {
                lease_name: settings.lease_name.clone(),
                holder_id: settings.identity.clone(),
                lease_ttl: settings.lease_duration,
            },
        );
        Self { lock, settings }
    }

    pub fn settings(&self) -> &ElectionSettings {
        &self.settings
    }

    async fn attempt(&self) -> Result<LeaseLockResult, String> {
        match tokio::time::timeout(
            self.settings.renew_deadline,
            self.lock.try_acquire_or_renew(),
        )
        .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {:?}",
                self.settings.renew_deadline
            )),
        }
    }

    /// Returns once this replica holds the Lease; retries forever (a standby waits).
    ///
    /// The crate takes an expired Lease with a patch that carries no resourceVersion, so two
    /// standbys racing for it can both be told they won. A win therefore counts only when a
    /// second look (half a second, at most one retry period, later) still shows this replica as
    /// the holder (and renews): the later of two racing patches is the one both see.
    pub async fn acquire(&self) {
        let s = &self.settings;
        let mut last_holder = None::<String>;
        let mut won = false;
        loop {
            match self.attempt().await {
                Ok(LeaseLockResult::Acquired(_)) if won => {
                    info!(lease = %s.lease_name, namespace = %s.namespace, identity = %s.identity, "became the leader");
                    return;
                }
                Ok(LeaseLockResult::Acquired(_)) => won = true,
                Ok(other) => {
                    won = false;
                    let h = holder(&other);
                    if last_holder.as_ref() != Some(&h) {
                        info!(lease = %s.lease_name, leader = %h, "standing by: another replica leads");
                        last_holder = Some(h);
                    }
                }
                Err(e) => {
                    won = false;
                    warn!(lease = %s.lease_name, error = %e, "leader election attempt failed");
                }
            }
            let pause = if won {
                s.retry_period.min(Duration::from_millis(500))
            } else {
                s.retry_period
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Renews the Lease every retry period while leading. Returns (only) when leadership is
    /// lost: another holder appears, or no renewal succeeded within the renew deadline.
    pub async fn hold(&self) -> ElectionError {
        let s = &self.settings;
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(s.retry_period).await;
            // The renewal is stamped with the client's clock when it is sent.
            let sent = Instant::now();
            let remaining = s.renew_deadline.saturating_sub(sent - last_renewed);
            let outcome =
                match tokio::time::timeout(remaining, self.lock.try_acquire_or_renew()).await {
                    Ok(Ok(LeaseLockResult::Acquired(_))) => Ok(()),
                    Ok(Ok(other)) => {
                        return ElectionError::Taken {
                            namespace: s.namespace.clone(),
                            lease: s.lease_name.clone(),
                            holder: holder(&other),
                        };
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("renewal timed out".to_string()),
                };
            match outcome {
                Ok(()) => last_renewed = sent,
                Err(last) => {
                    warn!(lease = %s.lease_name, error = %last, "lease renewal failed");
                    if Instant::now() - last_renewed >= s.renew_deadline {
                        return ElectionError::RenewDeadline {
                            namespace: s.namespace.clone(),
                            lease: s.lease_name.clone(),
                            deadline: s.renew_deadline,
                            last,
                        };
                    }
                }
            }
        }
    }

    /// Gives the Lease up on a clean shutdown, so that a standby takes over at once instead of
    /// after the lease duration.
    pub async fn release(&self) {
        match self.lock.step_down().await {
            Ok(()) => info!(lease = %self.settings.lease_name, "released the lease"),
            Err(e) => {
                warn!(lease = %self.settings.lease_name, error = %e, "could not release the lease")
            }
        }
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
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
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

    #[test]
    fn identities_differ_per_process() {
        if std::env::var_os("POD_NAME").is_none() {
            assert_ne!(default_identity(), default_identity());
        }
    }
}
