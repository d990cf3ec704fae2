//! PodDisruptionBudgets: drains may take one app pod and one database instance at a time, and
//! with replicas the primary is never evicted directly: the operator switches over first (a
//! cordoned primary node triggers it), Patroni relabels the old primary `replica`, and then the
//! eviction goes through. Unhealthy pods are always evictable.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{Component, Names, label_selector, object_meta};
use crate::crd::ArticleSite;
use crate::patroni;

fn pdb(
    site: &ArticleSite,
    name: String,
    component: Component,
    spec: PodDisruptionBudgetSpec,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(site, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            selector: spec
                .selector
                .clone()
                .or_else(|| Some(label_selector(site, component))),
            // A crash-looping pod must never block a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..spec
        }),
        ..Default::default()
    }
}

/// At most `maxUnavailable` (default one) app pods evicted at a time; with `maxUnavailable` a
/// single-replica site can still be drained (it briefly goes down) instead of blocking the
/// node forever.
pub fn app(site: &ArticleSite) -> PodDisruptionBudget {
    pdb(
        site,
        Names::app(&site.name_any()),
        Component::App,
        PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(app_max_unavailable(site))),
            ..Default::default()
        },
    )
}

/// `maxUnavailable` of the app budget. With autoscaling the pod count moves without the
/// operator rewriting the budget, so it must be safe at the smallest size: below
/// `minReplicas`, leaving one pod serving (and never below 1, so a drain is never blocked).
pub fn app_max_unavailable(site: &ArticleSite) -> i32 {
    let asked = site.spec.high_availability.max_unavailable;
    match site.spec.app.min_replicas() {
        Some(min) => asked.min((min - 1).max(1)),
        None => asked,
    }
}

/// The instances one at a time. With replicas it covers every instance but the primary
/// (`role NotIn [primary]`, so also pods Patroni has not labelled yet): the Eviction API
/// refuses a pod that two budgets select (an error, not a 429, which ends a `kubectl drain`),
/// so the primary's own budget must not overlap this one. And it is `minAvailable:
/// instances - 2` of those replicas rather than `maxUnavailable: 1`: for `maxUnavailable` the
/// disruption controller expects the StatefulSet's whole scale, primary included, and would
/// never allow an eviction. A single instance: `maxUnavailable: 1` (a drain moves it), or with
/// `blockDatabaseDrain` `minAvailable: 1` (it stays up through voluntary disruptions, as with a
/// single-instance CloudNativePG cluster).
pub fn database(site: &ArticleSite, instances: i32) -> PodDisruptionBudget {
    let mut spec = if instances >= 2 {
        PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(instances - 2)),
            ..Default::default()
        }
    } else if site.spec.high_availability.block_database_drain {
        PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            ..Default::default()
        }
    } else {
        PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            ..Default::default()
        }
    };
    if instances >= 2 {
        let mut selector = label_selector(site, Component::Database);
        selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: patroni::ROLE_LABEL.into(),
            operator: "NotIn".into(),
            values: Some(vec![patroni::PRIMARY.into()]),
        }]);
        spec.selector = Some(selector);
    }
    pdb(
        site,
        Names::database(&site.name_any()),
        Component::Database,
        spec,
    )
}

/// The primary (`role=primary`, Patroni's label): never evicted directly, only with replicas
/// to switch over to. With one instance there is no such budget, so a drain never deadlocks.
pub fn database_primary(site: &ArticleSite, instances: i32) -> Option<PodDisruptionBudget> {
    (instances >= 2).then(|| {
        let mut selector = label_selector(site, Component::Database);
        if let Some(labels) = selector.match_labels.as_mut() {
            labels.insert(patroni::ROLE_LABEL.into(), patroni::PRIMARY.into());
        }
        pdb(
            site,
            Names::database_primary_pdb(&site.name_any()),
            Component::Database,
            PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(0)),
                selector: Some(selector),
                ..Default::default()
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    #[test]
    fn budgets() {
        let s = site("news");
        let a = app(&s);
        let spec = a.spec.as_ref().unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
        let d = database(&s, 3);
        assert_eq!(d.metadata.name.as_deref(), Some("news-postgresql"));
        assert_eq!(
            d.spec.as_ref().unwrap().min_available,
            Some(IntOrString::Int(1)),
            "one of the two replicas may go"
        );
        assert_eq!(
            database(&s, 1).spec.as_ref().unwrap().max_unavailable,
            Some(IntOrString::Int(1))
        );
        let others = d.spec.as_ref().unwrap().selector.as_ref().unwrap();
        let not_primary = &others.match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (not_primary.operator.as_str(), not_primary.values.as_deref()),
            ("NotIn", Some(&["primary".to_string()][..])),
            "the two budgets never select the same pod"
        );
        let one = database(&s, 1);
        assert!(
            one.spec
                .as_ref()
                .unwrap()
                .selector
                .as_ref()
                .unwrap()
                .match_expressions
                .is_none()
        );
        let p = database_primary(&s, 3).unwrap();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("news-postgresql-primary"));
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
        let labels = spec
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(labels["role"], "primary");
        assert_eq!(labels["app.kubernetes.io/instance"], "news");
        assert!(
            database_primary(&s, 1).is_none(),
            "one instance: a drain never deadlocks"
        );
        let mut autoscaled = s.clone();
        autoscaled.spec.high_availability.max_unavailable = 5;
        autoscaled.spec.app.autoscaling = Some(
            serde_json::from_value(serde_json::json!({"minReplicas": 2, "maxReplicas": 6}))
                .unwrap(),
        );
        assert_eq!(
            app(&autoscaled).spec.unwrap().max_unavailable,
            Some(IntOrString::Int(1)),
            "at minReplicas 2 one pod keeps serving through a drain"
        );
        autoscaled
            .spec
            .app
            .autoscaling
            .as_mut()
            .unwrap()
            .min_replicas = Some(1);
        assert_eq!(app_max_unavailable(&autoscaled), 1, "never 0: drains go on");
        autoscaled
            .spec
            .app
            .autoscaling
            .as_mut()
            .unwrap()
            .min_replicas = Some(4);
        assert_eq!(app_max_unavailable(&autoscaled), 3);
        let mut s = s;
        s.spec.high_availability.block_database_drain = true;
        assert_eq!(
            database(&s, 1).spec.as_ref().unwrap().min_available,
            Some(IntOrString::Int(1))
        );
        assert_eq!(
            database(&s, 3).spec.as_ref().unwrap().min_available,
            Some(IntOrString::Int(1))
        );
    }
}
