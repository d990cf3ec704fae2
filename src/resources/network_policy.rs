//! Only the site's own app pods may reach its database.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{Component, Names, POSTGRES_PORT, label_selector, object_meta};
use crate::crd::ArticleSite;

pub fn database(site: &ArticleSite) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(site, Names::database(&site.name_any()), Component::Database),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(label_selector(site, Component::Database)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                // A podSelector without namespaceSelector matches pods of this namespace only.
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(label_selector(site, Component::App)),
                    ..Default::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(POSTGRES_PORT)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    #[test]
    fn only_app_pods_reach_the_database() {
        let np = database(&site("news"));
        let spec = np.spec.unwrap();
        let target = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(target["app.kubernetes.io/component"], "database");
        let rule = &spec.ingress.unwrap()[0];
        let from = rule.from.as_ref().unwrap();
        assert_eq!(from.len(), 1);
        assert!(from[0].namespace_selector.is_none());
        let peer = from[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(peer["app.kubernetes.io/component"], "app");
        assert_eq!(peer["app.kubernetes.io/instance"], "news");
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(5432))
        );
    }
}
