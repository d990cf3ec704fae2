//! Pods refused by admission (Pod Security, quotas, policies). The pods are created by the
//! ReplicaSet and StatefulSet controllers, not by the operator, so a refusal never reaches the
//! operator as an error: the Deployment reports it in its `ReplicaFailure` condition (handled in
//! `status`), the StatefulSet only in a `FailedCreate` Event (read by `observe`, judged here).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Event;

use crate::reason::Reason;

/// Events older than this are not taken as the current state: the StatefulSet controller retries
/// with a backoff capped well below it, so an ongoing refusal refreshes its Event in time.
const FRESH_SECONDS: i64 = 20 * 60;

/// The specific reason of a pod creation failure, when it is one we name (otherwise the
/// caller's general one: `PodCreationFailed` for the database, `RolloutStuck` for the app).
pub fn refusal_reason(message: &str) -> Option<Reason> {
    message
        .contains("violates PodSecurity")
        .then_some(Reason::PodSecurityRejected)
}

/// Whether the StatefulSet has fewer pods than it wants (the only time a refusal matters).
pub fn missing_pods(sts: &StatefulSet) -> bool {
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let have = sts.status.as_ref().map(|s| s.replicas).unwrap_or(0);
    have < want
}

/// The newest fresh refusal among `events`, as of `now` (Unix seconds), and later than
/// `since` (the newest database pod's creation: a pod admitted after a refusal shows that the
/// refusal is over, while the StatefulSet creates its other instances one by one). Only
/// admission answers ("… is forbidden: …") count: a transient conflict while a pod is replaced
/// ("already exists") is no problem of the user's.
pub fn latest_failure(events: &[Event], now: i64, since: i64) -> Option<String> {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .filter(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("is forbidden"))
        })
        .filter_map(|e| {
            let at = e
                .last_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .or_else(|| e.event_time.as_ref().map(|t| t.0.as_second()))?;
            (now - at <= FRESH_SECONDS && at > since)
                .then(|| (at, e.message.clone().unwrap_or_default()))
        })
        .max_by_key(|(at, _)| *at)
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn event(reason: &str, at: i64, message: &str) -> Event {
        Event {
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::from_second(at).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn pod_security_messages_are_named() {
        let m = r#"pods "x-0" is forbidden: violates PodSecurity "restricted:latest": runAsUser=0"#;
        assert_eq!(refusal_reason(m), Some(Reason::PodSecurityRejected));
        assert_eq!(refusal_reason("exceeded quota: pods"), None);
    }

    #[test]
    fn newest_fresh_failure_wins() {
        let events = [
            event("FailedCreate", 1000, "pods \"a\" is forbidden: old"),
            event("FailedCreate", 2000, "pods \"a\" is forbidden: new"),
            event(
                "FailedCreate",
                2050,
                "object is being deleted: pods \"a\" already exists",
            ),
            event("SuccessfulCreate", 3000, "created"),
        ];
        assert_eq!(
            latest_failure(&events, 2100, 0).as_deref(),
            Some("pods \"a\" is forbidden: new")
        );
        assert_eq!(latest_failure(&events, 2000 + FRESH_SECONDS + 1, 0), None);
        // A database pod admitted after the refusal: it is over.
        assert_eq!(latest_failure(&events, 2100, 2050), None);
    }

    #[test]
    fn only_missing_pods_matter() {
        let mut sts = StatefulSet {
            spec: Some(StatefulSetSpec {
                replicas: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(missing_pods(&sts));
        sts.status = Some(StatefulSetStatus {
            replicas: 1,
            ..Default::default()
        });
        assert!(!missing_pods(&sts));
    }
}
