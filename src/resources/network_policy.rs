//! Network policies of a site. The database accepts PostgreSQL from the site's own app pods
//! and sends nothing; the app accepts its HTTP port and may only resolve names and reach its own
//! database. What this does and does not protect against: docs/security.md.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{Component, Names, POSTGRES_PORT, label_selector, object_meta};
use crate::crd::ArticleSite;

/// DNS, over UDP and TCP (large answers).
const DNS_PORT: i32 = 53;

fn tcp(port: i32) -> NetworkPolicyPort {
    port_of("TCP", port)
}

fn port_of(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

/// A podSelector without namespaceSelector matches pods of the policy's namespace only.
fn pods_of(site: &ArticleSite, component: Component) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(label_selector(site, component)),
        ..Default::default()
    }
}

/// Ingress only from this site's app pods on 5432; no egress at all (PostgreSQL needs none).
pub fn database(site: &ArticleSite) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(site, Names::database(&site.name_any()), Component::Database),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(label_selector(site, Component::Database)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![pods_of(site, Component::App)]),
                ports: Some(vec![tcp(POSTGRES_PORT)]),
            }]),
            egress: Some(vec![]),
        }),
    }
}

/// Ingress from anywhere, on the HTTP port only (the Service, an Ingress controller, probes of
/// the kubelet are not subject to it). Egress: DNS anywhere, PostgreSQL to this site's database.
pub fn app(site: &ArticleSite) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(site, Names::app(&site.name_any()), Component::App),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(label_selector(site, Component::App)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![tcp(site.spec.app.port)]),
            }]),
            egress: Some(vec![
                // The resolver may be a pod, a node-local cache or an external address.
                NetworkPolicyEgressRule {
                    to: None,
                    ports: Some(vec![port_of("UDP", DNS_PORT), tcp(DNS_PORT)]),
                },
                NetworkPolicyEgressRule {
                    to: Some(vec![pods_of(site, Component::Database)]),
                    ports: Some(vec![tcp(POSTGRES_PORT)]),
                },
            ]),
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
        assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
        assert_eq!(spec.egress, Some(vec![]), "the database sends nothing");
    }

    #[test]
    fn app_takes_http_and_reaches_dns_and_its_database() {
        let np = app(&site("news"));
        let spec = np.spec.unwrap();
        assert_eq!(np.metadata.name.as_deref(), Some("news"));
        let ingress = spec.ingress.unwrap();
        assert_eq!(ingress.len(), 1);
        assert!(ingress[0].from.is_none());
        assert_eq!(
            ingress[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(8080))
        );
        let egress = spec.egress.unwrap();
        assert_eq!(egress.len(), 2);
        let dns: Vec<_> = egress[0]
            .ports
            .iter()
            .flatten()
            .map(|p| p.protocol.clone().unwrap())
            .collect();
        assert_eq!(dns, ["UDP", "TCP"]);
        let db = egress[1].to.as_ref().unwrap()[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(db["app.kubernetes.io/instance"], "news");
        assert_eq!(db["app.kubernetes.io/component"], "database");
    }
}
