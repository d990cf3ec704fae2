//! Pure status computation: conditions and counts from the applied/observed children.
//! Conditions follow the API conventions: `Ready`, `Progressing`, `Degraded`, each with
//! `observedGeneration`, a CamelCase reason, a message, and a `lastTransitionTime` that only
//! moves when the condition's status changes.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{AppStatus, ArticleSite, ArticleSiteStatus, DatabaseStatus};
use crate::resources::{self, Component};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// A problem the user has to fix (shown as `Degraded=True`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
    /// The problem concerns storage: the database cannot start.
    pub blocks_database: bool,
}

/// Everything the status is computed from.
pub struct Observed<'a> {
    pub deployment: Option<&'a Deployment>,
    pub statefulset: Option<&'a StatefulSet>,
    pub problems: &'a [Problem],
    pub paused: bool,
    pub cluster_domain: &'a str,
}

struct AppRollout {
    status: AppStatus,
    rolled_out: bool,
    stuck: Option<String>,
}

fn app_rollout(site: &ArticleSite, d: Option<&Deployment>) -> AppRollout {
    let desired = site.spec.app.replicas;
    let selector = resources::selector_string(&resources::selector_labels(site, Component::App));
    let Some(d) = d else {
        return AppRollout {
            status: AppStatus {
                replicas: 0,
                ready_replicas: 0,
                desired_replicas: desired,
                ready: format!("0/{desired}"),
                selector,
            },
            rolled_out: false,
            stuck: None,
        };
    };
    let s = d.status.clone().unwrap_or_default();
    let replicas = s.replicas.unwrap_or(0);
    let ready = s.ready_replicas.unwrap_or(0);
    let updated = s.updated_replicas.unwrap_or(0);
    let available = s.available_replicas.unwrap_or(0);
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let current = s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let rolled_out = current
        && spec_replicas == desired
        && updated == desired
        && replicas == desired
        && available == desired
        && ready == desired;
    let stuck = s.conditions.iter().flatten().find_map(|c| {
        let deadline = c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded");
        let failure = c.type_ == "ReplicaFailure" && c.status == "True";
        (deadline || failure).then(|| {
            format!(
                "Deployment {}: {}",
                d.name_any(),
                c.message.clone().unwrap_or_default()
            )
        })
    });
    AppRollout {
        status: AppStatus {
            replicas,
            ready_replicas: ready,
            desired_replicas: desired,
            ready: format!("{ready}/{desired}"),
            selector,
        },
        rolled_out,
        stuck,
    }
}

fn database_state(
    sts: Option<&StatefulSet>,
    problems: &[Problem],
    previous: Option<&ArticleSiteStatus>,
    paused: bool,
) -> (DatabaseStatus, bool) {
    let ready_replicas = sts
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let rolled_out = sts.is_some_and(|s| {
        let st = s.status.clone().unwrap_or_default();
        st.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0)
            && st.current_revision == st.update_revision
            && st.updated_replicas.unwrap_or(0) >= 1
    });
    let ready = ready_replicas >= 1 && rolled_out;
    let was_ready_once = previous
        .and_then(|p| p.database.as_ref())
        .is_some_and(|d| d.state != "Provisioning");
    let state = if problems.iter().any(|p| p.blocks_database) {
        "Failed"
    } else if ready {
        "Ready"
    } else if paused && sts.is_none() {
        "Unknown"
    } else if sts.is_none() || !was_ready_once {
        "Provisioning"
    } else {
        "NotReady"
    };
    (
        DatabaseStatus {
            state: state.into(),
            ready_replicas,
            desired_replicas: 1,
        },
        ready,
    )
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: now.clone(),
    }
}

/// The new status. `now` becomes `lastTransitionTime` of conditions whose status changed.
pub fn compute(site: &ArticleSite, observed: &Observed<'_>, now: &Time) -> ArticleSiteStatus {
    let generation = site.metadata.generation.unwrap_or(0);
    let previous = site.status.as_ref();
    let app = app_rollout(site, observed.deployment);
    let (database, db_ready) = database_state(
        observed.statefulset,
        observed.problems,
        previous,
        observed.paused,
    );
    let desired = site.spec.app.replicas;

    let (ready, ready_reason, ready_message) = if desired == 0 {
        (
            false,
            "ScaledToZero",
            "spec.app.replicas is 0: the site serves no requests".to_string(),
        )
    } else if !db_ready {
        (
            false,
            "DatabaseNotReady",
            format!("database is {}", database.state),
        )
    } else if !app.rolled_out {
        (
            false,
            "AppNotReady",
            format!("{} app pods ready and up to date", app.status.ready),
        )
    } else {
        (
            true,
            "SiteReady",
            format!("{} app pods ready, database ready", app.status.ready),
        )
    };

    let mut problems: Vec<(String, String)> = observed
        .problems
        .iter()
        .map(|p| (p.reason.to_string(), p.message.clone()))
        .collect();
    if let Some(stuck) = &app.stuck {
        let reason = crate::admission::refusal_reason(stuck).unwrap_or("RolloutStuck");
        problems.push((reason.into(), stuck.clone()));
    }
    let degraded = !problems.is_empty();
    let (degraded_reason, degraded_message) = match problems.first() {
        Some((reason, _)) => (
            reason.clone(),
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => ("AsExpected".into(), "no problems found".into()),
    };

    let (progressing, progressing_reason, progressing_message) = if observed.paused {
        (
            false,
            "Paused",
            "spec.paused is true: owned objects are not reconciled".to_string(),
        )
    } else if degraded {
        (
            false,
            "Blocked",
            "blocked by the problems reported in the Degraded condition".to_string(),
        )
    } else if ready || (desired == 0 && db_ready && app.rolled_out) {
        (
            false,
            "Reconciled",
            "all owned objects are up to date".to_string(),
        )
    } else {
        (
            true,
            "RollingOut",
            format!(
                "app {} ready, database {}",
                app.status.ready, database.state
            ),
        )
    };

    let mut conditions = vec![
        condition(READY, ready, ready_reason, ready_message, generation, now),
        condition(
            PROGRESSING,
            progressing,
            progressing_reason,
            progressing_message,
            generation,
            now,
        ),
        condition(
            DEGRADED,
            degraded,
            &degraded_reason,
            degraded_message,
            generation,
            now,
        ),
    ];
    // Keep lastTransitionTime while a condition's status stays the same.
    for c in &mut conditions {
        if let Some(old) = previous
            .into_iter()
            .flat_map(|p| &p.conditions)
            .find(|o| o.type_ == c.type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }

    ArticleSiteStatus {
        observed_generation: Some(generation),
        conditions,
        app: Some(app.status),
        database: Some(database),
        url: Some(resources::in_cluster_url(site, observed.cluster_domain)),
        // Set by the controller from the write token Secret; kept when it was not read.
        credentials: previous.and_then(|p| p.credentials.clone()),
        // Filled in by the controller from the pods it observed (`ha`).
        availability: None,
    }
}

/// An Event to publish for a condition transition: (warning?, reason, note).
pub fn transitions(
    old: Option<&ArticleSiteStatus>,
    new: &ArticleSiteStatus,
) -> Vec<(bool, String, String)> {
    let status_of = |s: Option<&ArticleSiteStatus>, t: &str| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let mut events = Vec::new();
    for t in [READY, DEGRADED, PROGRESSING] {
        let before = status_of(old, t);
        let Some(c) = new.conditions.iter().find(|c| c.type_ == t) else {
            continue;
        };
        let changed = before.as_ref().map(|(s, r)| (s.as_str(), r.as_str()))
            != Some((c.status.as_str(), c.reason.as_str()));
        if !changed {
            continue;
        }
        match (t, c.status.as_str()) {
            (READY, "True") => events.push((false, c.reason.clone(), c.message.clone())),
            // Not-ready on creation is expected; only a loss of readiness is a warning.
            (READY, _) if before.as_ref().is_some_and(|(s, _)| s == "True") => {
                events.push((true, c.reason.clone(), c.message.clone()))
            }
            (DEGRADED, "True") => events.push((true, c.reason.clone(), c.message.clone())),
            (DEGRADED, _) if before.as_ref().is_some_and(|(s, _)| s == "True") => events.push((
                false,
                "Recovered".into(),
                "the reported problems are resolved".into(),
            )),
            (PROGRESSING, _) if c.reason == "Paused" => {
                events.push((false, "Paused".into(), c.message.clone()))
            }
            (PROGRESSING, _) if before.as_ref().is_some_and(|(_, r)| r == "Paused") => {
                events.push((false, "Resumed".into(), "reconciliation resumed".into()))
            }
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;
    use k8s_openapi::api::apps::v1::{DeploymentStatus, StatefulSetStatus};

    fn now(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn deployment(site: &ArticleSite, ready: i32) -> Deployment {
        let mut d = resources::deployment::build(site, "cluster.local");
        d.metadata.generation = Some(1);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(3),
            ready_replicas: Some(ready),
            updated_replicas: Some(3),
            available_replicas: Some(ready),
            ..Default::default()
        });
        d
    }

    fn statefulset(site: &ArticleSite, ready: i32) -> StatefulSet {
        let mut s = resources::statefulset::build(site, "1Gi");
        s.metadata.generation = Some(1);
        s.status = Some(StatefulSetStatus {
            observed_generation: Some(1),
            replicas: 1,
            ready_replicas: Some(ready),
            updated_replicas: Some(1),
            current_revision: Some("r1".into()),
            update_revision: Some("r1".into()),
            ..Default::default()
        });
        s
    }

    fn get<'a>(s: &'a ArticleSiteStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_when_everything_is_rolled_out() {
        let site = site("news");
        let (d, s) = (deployment(&site, 3), statefulset(&site, 1));
        let obs = Observed {
            deployment: Some(&d),
            statefulset: Some(&s),
            problems: &[],
            paused: false,
            cluster_domain: "cluster.local",
        };
        let st = compute(&site, &obs, &now(100));
        assert_eq!(get(&st, READY).status, "True");
        assert_eq!(get(&st, PROGRESSING).status, "False");
        assert_eq!(get(&st, DEGRADED).status, "False");
        assert_eq!(st.observed_generation, Some(1));
        assert_eq!(st.app.as_ref().unwrap().ready, "3/3");
        assert_eq!(st.database.as_ref().unwrap().state, "Ready");
        assert!(
            st.conditions
                .iter()
                .all(|c| c.observed_generation == Some(1))
        );
    }

    #[test]
    fn progressing_while_pods_start_and_transition_time_is_kept() {
        let mut site = site("news");
        let (d, s) = (deployment(&site, 1), statefulset(&site, 0));
        let obs = Observed {
            deployment: Some(&d),
            statefulset: Some(&s),
            problems: &[],
            paused: false,
            cluster_domain: "cluster.local",
        };
        let first = compute(&site, &obs, &now(100));
        assert_eq!(get(&first, READY).status, "False");
        assert_eq!(get(&first, READY).reason, "DatabaseNotReady");
        assert_eq!(get(&first, PROGRESSING).status, "True");
        assert_eq!(first.database.as_ref().unwrap().state, "Provisioning");
        site.status = Some(first.clone());
        let second = compute(&site, &obs, &now(200));
        assert_eq!(
            first, second,
            "same observation, same status: no status write"
        );
    }

    #[test]
    fn user_problems_degrade() {
        let site = site("news");
        let problems = [Problem {
            reason: "StorageClassNotFound",
            message: "StorageClass \"fast\" does not exist".into(),
            blocks_database: true,
        }];
        let d = deployment(&site, 3);
        let obs = Observed {
            deployment: Some(&d),
            statefulset: None,
            problems: &problems,
            paused: false,
            cluster_domain: "cluster.local",
        };
        let st = compute(&site, &obs, &now(100));
        let deg = get(&st, DEGRADED);
        assert_eq!(deg.status, "True");
        assert_eq!(deg.reason, "StorageClassNotFound");
        assert!(deg.message.contains("fast"));
        assert_eq!(st.database.as_ref().unwrap().state, "Failed");
        let events = transitions(None, &st);
        assert!(
            events
                .iter()
                .any(|(warn, r, _)| *warn && r == "StorageClassNotFound")
        );
    }

    #[test]
    fn ready_events_only_on_transitions() {
        let site = site("news");
        let (d, s) = (deployment(&site, 3), statefulset(&site, 1));
        let obs = Observed {
            deployment: Some(&d),
            statefulset: Some(&s),
            problems: &[],
            paused: false,
            cluster_domain: "cluster.local",
        };
        let st = compute(&site, &obs, &now(100));
        assert_eq!(transitions(None, &st).len(), 1);
        assert!(transitions(Some(&st), &st).is_empty());
    }
}
