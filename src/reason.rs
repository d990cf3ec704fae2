//! Every reason the operator reports, as one typed enum: condition reasons, Event reasons and
//! the `reason` label of metrics. A new reason is added here, never as a string at a call site,
//! so `kubectl describe`, alerts and dashboards see a closed, documented set.

/// A CamelCase reason (API conventions). `as_str` gives the exact text written to the API.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
)]
pub enum Reason {
    // Ready
    SiteReady,
    ScaledToZero,
    DatabaseNotReady,
    AppNotReady,
    // Progressing
    Paused,
    Resumed,
    Blocked,
    Reconciled,
    RollingOut,
    // Degraded
    AsExpected,
    Recovered,
    StorageClassNotFound,
    NoDefaultStorageClass,
    #[strum(serialize = "TLSSecretNotFound")]
    TlsSecretNotFound,
    ChildRejected,
    StorageExpansionFailed,
    RolloutFailed,
    RolloutStuck,
    PodSecurityRejected,
    PodCreationFailed,
    // HighlyAvailable
    HighlyAvailable,
    Spread,
    SingleReplica,
    TooFewReadyReplicas,
    SingleNode,
    SingleZone,
    // DatabaseHighlyAvailable
    DatabaseReplicated,
    SingleInstance,
    NoLeader,
    InstancesOnOneNode,
    NoSynchronousStandby,
    NoHealthyReplica,
    ReplicaLagging,
    // The database's Events
    DatabaseFailover,
    DatabaseSwitchover,
    SwitchoverRequested,
    SwitchoverRefused,
    SwitchoverFailed,
    DatabaseInstanceRestarted,
    DatabaseStandbyRebuilt,
    /// A replica evicted so that the instances spread over the nodes again.
    DatabaseInstanceMoved,
    // Backups: problems (Degraded)
    BackupCredentialsNotFound,
    #[strum(serialize = "BackupCANotFound")]
    BackupCaNotFound,
    RecoveryTargetInFuture,
    RecoveryTargetInvalid,
    // ContinuousArchiving
    Archiving,
    ArchiveStatusUnknown,
    ArchiveLagging,
    ArchiveGap,
    ArchiveCredentialsRejected,
    ArchiveBucketNotFound,
    #[strum(serialize = "ArchiveTLSFailed")]
    ArchiveTlsFailed,
    ArchiveUnreachable,
    ArchiveRepositoryMismatch,
    ArchiveFailing,
    // LastBackupSucceeded, and the backups' Events
    BackupSucceeded,
    BackupFailed,
    NoBackupYet,
    BackupStarted,
    BackupRequestRefused,
    // Actions (Events)
    SecretCreated,
    CredentialsRecreated,
    CredentialsRotated,
    DriftCorrected,
    IngressDeleted,
    /// The Deployment's replica count was handed to the HorizontalPodAutoscaler.
    AutoscalingEnabled,
    /// The HorizontalPodAutoscaler was deleted; `spec.app.replicas` sets the count again.
    AutoscalingDisabled,
    StorageExpanding,
    RolledBack,
    PodRestarted,
    OrphanedPodDeleted,
    // Why a pod is restarted (`PodRestarted` Events, `pod_restarts` metric).
    CrashLoopBackOff,
    /// Not a failure: moved so that the app pods are spread again (`spread`).
    Unbalanced,
    Unready,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_the_api_strings() {
        assert_eq!(Reason::SiteReady.as_str(), "SiteReady");
        assert_eq!(Reason::TlsSecretNotFound.as_str(), "TLSSecretNotFound");
        assert_eq!(Reason::CrashLoopBackOff.to_string(), "CrashLoopBackOff");
        assert_eq!("TLSSecretNotFound".parse(), Ok(Reason::TlsSecretNotFound));
    }
}
