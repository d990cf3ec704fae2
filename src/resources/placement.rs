//! `spec.placement`: the node selector and tolerations of the app and database pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;

use crate::crd::ArticleSite;

/// The pods' `nodeSelector`: the spec's, or none (an empty map would only add noise to the
/// applied template).
pub fn node_selector(site: &ArticleSite) -> Option<BTreeMap<String, String>> {
    site.spec
        .placement
        .as_ref()
        .and_then(|p| p.node_selector.clone())
        .filter(|m| !m.is_empty())
}

/// Leave a NotReady or unreachable node after `nodeLossTolerationSeconds` instead of the
/// default 300 s.
pub fn node_loss_tolerations(site: &ArticleSite) -> Vec<Toleration> {
    let seconds = site.spec.high_availability.node_loss_toleration_seconds;
    [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ]
    .into_iter()
    .map(|key| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some("NoExecute".into()),
        toleration_seconds: Some(seconds),
        ..Default::default()
    })
    .collect()
}

/// The operator's tolerations of node loss, then the spec's. Without a placement the list is
/// exactly the operator's, so sites that never set one see no change of their pod templates.
pub fn tolerations(site: &ArticleSite) -> Vec<Toleration> {
    let mut all = node_loss_tolerations(site);
    if let Some(extra) = site
        .spec
        .placement
        .as_ref()
        .and_then(|p| p.tolerations.as_ref())
    {
        for t in extra {
            if !all.contains(t) {
                all.push(t.clone());
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PlacementSpec, SpreadPolicy};
    use crate::resources::testing::site;
    use crate::resources::{deployment::build, statefulset};
    use k8s_openapi::api::core::v1::PodSpec;

    fn real_node_placement() -> PlacementSpec {
        serde_json::from_value(serde_json::json!({
            "nodeSelector": {"type": "real"},
            "tolerations": [{"key": "articlesite.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
        }))
        .expect("placement")
    }

    fn pods(site: &ArticleSite) -> [PodSpec; 2] {
        let d = build(site, "cluster.local");
        let s = statefulset::build(site, "1Gi", 1);
        [
            d.spec.and_then(|s| s.template.spec).expect("app pod spec"),
            s.spec.and_then(|s| s.template.spec).expect("db pod spec"),
        ]
    }

    #[test]
    fn without_placement_the_templates_are_unchanged() {
        let site = site("news");
        for pod in pods(&site) {
            assert_eq!(pod.node_selector, None);
            assert_eq!(pod.tolerations, Some(node_loss_tolerations(&site)));
        }
        // An empty placement is no placement.
        let mut empty = site.clone();
        empty.spec.placement = Some(PlacementSpec::default());
        assert_eq!(pods(&empty), pods(&site));
    }

    #[test]
    fn placement_applies_to_app_and_database() {
        let mut site = site("news");
        site.spec.placement = Some(real_node_placement());
        for pod in pods(&site) {
            assert_eq!(
                pod.node_selector,
                Some(BTreeMap::from([("type".into(), "real".into())]))
            );
            let tolerations = pod.tolerations.expect("tolerations");
            // node loss first (the operator's), then the spec's
            assert_eq!(tolerations.len(), 3);
            assert_eq!(
                tolerations[2].key.as_deref(),
                Some("articlesite.io/real-node")
            );
            assert_eq!(tolerations[2].effect.as_deref(), Some("NoSchedule"));
        }
    }

    #[test]
    fn a_toleration_the_operator_has_already_is_not_repeated() {
        let mut site = site("news");
        let own = node_loss_tolerations(&site);
        site.spec.placement = Some(PlacementSpec {
            node_selector: None,
            tolerations: Some(vec![own[0].clone()]),
        });
        assert_eq!(tolerations(&site), own);
    }

    /// Pinned to one node, the default spread must stay soft (ScheduleAnyway) and the
    /// anti-affinity preferred, so that several replicas still schedule there.
    #[test]
    fn pinned_pods_keep_soft_spreading() {
        let mut site = site("news");
        site.spec.placement = Some(real_node_placement());
        assert_eq!(site.spec.high_availability.spread, SpreadPolicy::Preferred);
        for pod in pods(&site) {
            for c in pod.topology_spread_constraints.iter().flatten() {
                assert_eq!(c.when_unsatisfiable, "ScheduleAnyway");
                // Domains come from the selected nodes only (the default, stated for clarity).
                assert_ne!(c.node_affinity_policy.as_deref(), Some("Ignore"));
            }
            let anti = pod
                .affinity
                .and_then(|a| a.pod_anti_affinity)
                .expect("anti-affinity");
            assert!(
                anti.required_during_scheduling_ignored_during_execution
                    .is_none()
            );
        }
    }
}
