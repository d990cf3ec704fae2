//! What the `backup-agent` of a database pod reports about WAL archiving, in the pod's
//! `articlesite.io/archive` annotation (written by `images/backup-agent.py`), and the reasons
//! a failing archive is reported with. The operator never dials the pods: this annotation,
//! like Patroni's, is how it learns what happens inside them.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Deserialize;

use crate::reason::Reason;
use crate::resources::backup::ARCHIVE_ANNOTATION;

/// WAL segments waiting to be archived beyond which archiving counts as lagging (16 MiB each).
pub const LAGGING_SEGMENTS: i64 = 8;

/// The agent's report (JSON). Times are RFC 3339.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveReport {
    /// The instance is the primary (`pg_is_in_recovery()` is false).
    #[serde(default)]
    pub primary: bool,
    /// `ok` once `stanza-create` succeeded on the primary, else `error`; `""` on a replica.
    #[serde(default)]
    pub stanza: String,
    #[serde(default)]
    pub last_archived_wal: Option<String>,
    #[serde(default)]
    pub last_archived_at: Option<String>,
    #[serde(default)]
    pub last_failed_wal: Option<String>,
    #[serde(default)]
    pub last_failed_at: Option<String>,
    /// WAL segments PostgreSQL has handed to archive_command that are not archived yet.
    #[serde(default)]
    pub pending_segments: i64,
    /// pgBackRest's last error (stanza creation or the asynchronous push), when the last
    /// attempt failed.
    #[serde(default)]
    pub error: Option<String>,
    /// When the oldest segment still waiting was finished, once it has waited 30 s: archiving
    /// is stuck before PostgreSQL reports a failure.
    #[serde(default)]
    pub stalled_since: Option<String>,
    /// The newest segment pgBackRest dropped because the queue exceeded `archiveQueueMax`,
    /// and when: the archive has a gap there until the next backup.
    #[serde(default)]
    pub dropped_wal: Option<String>,
    #[serde(default)]
    pub dropped_at: Option<String>,
}

/// How archiving goes, from the primary's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Archiving {
    /// The last WAL went to the repository (or none has been due yet).
    Working,
    /// It fails: a reason for the user, and pgBackRest's words.
    Failing(Reason, String),
    /// Segments pile up without a failure.
    Lagging(i64),
    /// Segments were dropped (the queue was full) after the last backup started: recovery
    /// cannot cross them until the next backup.
    Gap(String),
    /// No report from the primary yet.
    Unknown,
}

impl ArchiveReport {
    pub fn of(pod: &Pod) -> Option<ArchiveReport> {
        serde_json::from_str(pod.annotations().get(ARCHIVE_ANNOTATION)?).ok()
    }

    pub fn stanza_ok(&self) -> bool {
        self.stanza == "ok"
    }

    pub fn last_archived(&self) -> Option<Timestamp> {
        self.last_archived_at.as_deref()?.parse().ok()
    }

    fn last_failed(&self) -> Option<Timestamp> {
        self.last_failed_at.as_deref()?.parse().ok()
    }

    pub fn dropped(&self) -> Option<Timestamp> {
        self.dropped_at.as_deref()?.parse().ok()
    }

    /// A gap that no backup has covered yet: dropped after `last_backup_started`.
    pub fn uncovered_gap(&self, last_backup_started: Option<Timestamp>) -> Option<Timestamp> {
        let dropped = self.dropped()?;
        last_backup_started
            .is_none_or(|b| b <= dropped)
            .then_some(dropped)
    }

    /// How archiving goes, given when the newest successful backup started.
    pub fn archiving(&self, last_backup_started: Option<Timestamp>) -> Archiving {
        let error = self.error.clone().unwrap_or_default();
        if !self.stanza_ok() {
            return Archiving::Failing(classify(&error), error);
        }
        let failed_since_success = match (self.last_failed(), self.last_archived()) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if (failed_since_success || self.stalled_since.is_some()) && !error.is_empty() {
            return Archiving::Failing(classify(&error), error);
        }
        if failed_since_success {
            let text = if error.is_empty() {
                format!(
                    "archive_command failed for WAL {}",
                    self.last_failed_wal.as_deref().unwrap_or("?")
                )
            } else {
                error
            };
            return Archiving::Failing(classify(&text), text);
        }
        if self.stalled_since.is_some() || self.pending_segments > LAGGING_SEGMENTS {
            return Archiving::Lagging(self.pending_segments);
        }
        if self.uncovered_gap(last_backup_started).is_some() {
            return Archiving::Gap(self.dropped_wal.clone().unwrap_or_default());
        }
        Archiving::Working
    }
}

/// The reason for pgBackRest's error text (its codes and the S3 server's words).
pub fn classify(error: &str) -> Reason {
    let e = error.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| e.contains(w));
    // The texts are pgBackRest 2.45's against an S3 server (measured: docs/backup-and-restore.md).
    if any(&[
        "invalidaccesskeyid",
        "signaturedoesnotmatch",
        "accessdenied",
        "failed with 403",
        "(forbidden)",
    ]) {
        Reason::ArchiveCredentialsRejected
    } else if any(&[
        "nosuchbucket",
        "failed with 404",
        // Reads of a missing bucket (or of a path whose stanza is gone) say only this.
        "unable to open missing file",
    ]) {
        Reason::ArchiveBucketNotFound
    } else if any(&["cryptoerror", "certificate", "tls", "[095]"]) {
        Reason::ArchiveTlsFailed
    } else if any(&[
        "hostconnecterror",
        "unable to get address",
        "unable to connect",
        "connection refused",
        "timeout",
        "timed out",
        "[049]",
    ]) {
        Reason::ArchiveUnreachable
    } else if any(&["does not match", "system-id", "[028]", "[044]"]) {
        Reason::ArchiveRepositoryMismatch
    } else {
        Reason::ArchiveFailing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(json: serde_json::Value) -> ArchiveReport {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn archiving_follows_the_newest_event() {
        let ok = report(serde_json::json!({"primary": true, "stanza": "ok",
            "lastArchivedWal": "000000010000000000000003", "lastArchivedAt": "2026-12-01T10:00:00Z"}));
        assert_eq!(ok.archiving(None), Archiving::Working);
        let failing = report(serde_json::json!({"primary": true, "stanza": "ok",
            "lastArchivedAt": "2026-12-01T10:00:00Z", "lastFailedAt": "2026-12-01T10:01:00Z",
            "lastFailedWal": "000000010000000000000004",
            "error": "ERROR: [049]: unable to get address for 's3.invalid': [-2] Name or service not known"}));
        assert!(matches!(
            failing.archiving(None),
            Archiving::Failing(Reason::ArchiveUnreachable, _)
        ));
        let recovered = ArchiveReport {
            last_archived_at: Some("2026-12-01T10:02:00Z".into()),
            ..failing
        };
        assert_eq!(recovered.archiving(None), Archiving::Working);
        let lagging = ArchiveReport {
            pending_segments: 20,
            ..ok.clone()
        };
        assert_eq!(lagging.archiving(None), Archiving::Lagging(20));
        let stalled = ArchiveReport {
            stalled_since: Some("2026-12-01T10:01:00Z".into()),
            error: Some("[HostConnectError] unable to connect to '10.88.0.1:9443': [111] Connection refused".into()),
            ..ok.clone()
        };
        assert!(matches!(
            stalled.archiving(None),
            Archiving::Failing(Reason::ArchiveUnreachable, _)
        ));
        let gap = ArchiveReport {
            dropped_wal: Some("000000010000000000000009".into()),
            dropped_at: Some("2026-12-01T10:05:00Z".into()),
            ..ok.clone()
        };
        let at = |t: &str| Some(t.parse::<Timestamp>().unwrap());
        assert_eq!(
            gap.archiving(at("2026-12-01T09:00:00Z")),
            Archiving::Gap("000000010000000000000009".into())
        );
        assert_eq!(
            gap.archiving(at("2026-12-01T10:06:00Z")),
            Archiving::Working
        );
        let no_stanza = ArchiveReport {
            stanza: "error".into(),
            error: Some("HTTP 403 Forbidden <Code>InvalidAccessKeyId</Code>".into()),
            ..ok
        };
        assert!(matches!(
            no_stanza.archiving(None),
            Archiving::Failing(Reason::ArchiveCredentialsRejected, _)
        ));
    }

    #[test]
    fn errors_are_classified() {
        // pgBackRest 2.45's words against rclone's S3 server (the spool's global.error).
        assert_eq!(
            classify(
                "103 unable to find a valid repository: repo1: [HostConnectError] unable to load info file '/sites/demo/archive/demo/archive.info': HostConnectError: unable to connect to '10.88.0.1:9443': [111] Connection refused"
            ),
            Reason::ArchiveUnreachable
        );
        assert_eq!(
            classify(
                "repo1: [ProtocolError] unable to load info file: ProtocolError: HTTP request failed with 403 (Forbidden): <Code>SignatureDoesNotMatch</Code>"
            ),
            Reason::ArchiveCredentialsRejected
        );
        assert_eq!(
            classify(
                "repo1: [FileMissingError] unable to load info file: FileMissingError: unable to open missing file '/x/archive/db/archive.info' for read"
            ),
            Reason::ArchiveBucketNotFound
        );
        assert_eq!(
            classify(
                "repo1: [CryptoError] unable to load info file: CryptoError: unable to verify certificate presented by '10.88.0.1:9443': [20] unable to get local issuer certificate"
            ),
            Reason::ArchiveTlsFailed
        );
        assert_eq!(
            classify("<Code>NoSuchBucket</Code>"),
            Reason::ArchiveBucketNotFound
        );
        assert_eq!(
            classify("ERROR: [095]: unable to verify certificate presented by '10.88.0.1:9443'"),
            Reason::ArchiveTlsFailed
        );
        assert_eq!(classify("something else"), Reason::ArchiveFailing);
    }
}
