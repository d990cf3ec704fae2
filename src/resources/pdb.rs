//! PodDisruptionBudgets: drains may take one app pod at a time; the single database pod is
//! protected (like CloudNativePG's primary) unless it is unhealthy anyway.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{Component, Names, label_selector, object_meta};
use crate::crd::ArticleSite;

fn pdb(
    site: &ArticleSite,
    name: String,
    component: Component,
    spec: PodDisruptionBudgetSpec,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(site, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(label_selector(site, component)),
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
            max_unavailable: Some(IntOrString::Int(
                site.spec.high_availability.max_unavailable,
            )),
            ..Default::default()
        },
    )
}

/// The single database pod: by default a drain may move it (`maxUnavailable: 1`, never
/// blocks); with `blockDatabaseDrain` it stays up during voluntary disruptions and draining its
/// node needs an explicit decision, as with a single-instance CloudNativePG cluster.
pub fn database(site: &ArticleSite) -> PodDisruptionBudget {
    let spec = if site.spec.high_availability.block_database_drain {
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
    pdb(
        site,
        Names::database(&site.name_any()),
        Component::Database,
        spec,
    )
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
        let d = database(&s);
        assert_eq!(d.metadata.name.as_deref(), Some("news-postgresql"));
        assert_eq!(
            d.spec.as_ref().unwrap().max_unavailable,
            Some(IntOrString::Int(1))
        );
        let mut s = s;
        s.spec.high_availability.block_database_drain = true;
        assert_eq!(
            database(&s).spec.as_ref().unwrap().min_available,
            Some(IntOrString::Int(1))
        );
    }
}
