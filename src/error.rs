//! Errors of a reconcile, classified so that the controller knows whether to retry (transient)
//! or to report a problem the user must fix (`Degraded`).

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {kind}: {source}")]
    Kube {
        action: &'static str,
        kind: &'static str,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("serialize {kind}: {source}")]
    Serialize {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("no randomness from the operating system: {0}")]
    Randomness(String),

    #[error("object has no {0}")]
    MissingField(&'static str),
}

impl Error {
    pub fn kube(action: &'static str, kind: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube {
            action,
            kind,
            source: Box::new(source),
        }
    }

    /// Label value for the `errors` metric.
    pub fn reason(&self) -> String {
        match self {
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(s) => format!("api_{}", s.code),
                _ => "transport".into(),
            },
            Error::Serialize { .. } => "serialize".into(),
            Error::Randomness(_) => "randomness".into(),
            Error::MissingField(_) => "missing_field".into(),
        }
    }

    /// The API server's own message of a rejection (it names the field and the rule).
    pub fn api_message(&self) -> String {
        match self {
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(s) => s.message.clone(),
                other => other.to_string(),
            },
            other => other.to_string(),
        }
    }

    /// An API answer that repeating the same request will not change: the user (or the admin,
    /// for RBAC) has to act. Shown as `Degraded` instead of a silent retry loop.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Kube { source, .. } => {
                matches!(source.as_ref(), kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422))
            }
            _ => false,
        }
    }
}

/// Per-object exponential backoff: 1s, 2s, 4s … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.min(9);
    Duration::from_secs(secs.min(300))
}

/// `backoff` with jitter: a uniformly random delay in [½·backoff, backoff], so that sites that
/// failed together (an API server outage) do not all retry in the same instant.
pub fn backoff_with_jitter(failures: u32) -> Duration {
    let base = backoff(failures);
    // Without OS randomness the plain backoff is still a correct (if synchronised) delay.
    let r = getrandom::u64().unwrap_or(u64::MAX);
    jittered(base, r)
}

/// `base` scaled into [½·base, base] by the random number `r`.
fn jittered(base: Duration, r: u64) -> Duration {
    let fraction = 0.5 + 0.5 * (r as f64 / u64::MAX as f64);
    base.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_half_and_full_backoff() {
        let base = Duration::from_secs(8);
        assert_eq!(jittered(base, 0), Duration::from_secs(4));
        assert_eq!(jittered(base, u64::MAX), base);
        for failures in 0..12 {
            let d = backoff_with_jitter(failures);
            let b = backoff(failures);
            assert!(d >= b / 2 && d <= b, "{d:?} outside [{:?}, {b:?}]", b / 2);
        }
    }
}
