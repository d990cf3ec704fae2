//! Network policies of a site. The database accepts PostgreSQL from the site's own app pods
//! and its own instances (replication), Patroni's REST API from its own instances only
//! (`/failsafe`, switchover checks), and sends only to its instances, to DNS and to the API
//! server (Patroni's store); the app accepts its HTTP port and may only resolve names and reach
//! its own database. What this does and does not protect against: docs/security.md.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{Component, Names, PATRONI_PORT, POSTGRES_PORT, label_selector, object_meta};
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

/// Ports the API server may listen on behind the `kubernetes` Service: policies see the
/// address after the Service's translation, so the Service port (443) alone would not do.
/// The destination is any address: the API server's addresses are not known to the operator
/// (a documented follow-up: an ipBlock from the `default/kubernetes` EndpointSlice).
pub const API_SERVER_PORTS: [i32; 2] = [443, 6443];

fn dns_rule() -> NetworkPolicyEgressRule {
    // The resolver may be a pod, a node-local cache or an external address.
    NetworkPolicyEgressRule {
        to: None,
        ports: Some(vec![port_of("UDP", DNS_PORT), tcp(DNS_PORT)]),
    }
}

/// Ingress: 5432 from the app and the instances, 8008 from the instances. Egress: the
/// instances (5432 streaming and pg_rewind, 8008 failsafe), DNS, the API server, and with
/// `spec.backup` the S3 endpoint's port (any address: object storage is outside the cluster).
pub fn database(site: &ArticleSite) -> NetworkPolicy {
    let mut egress = vec![
        dns_rule(),
        NetworkPolicyEgressRule {
            to: Some(vec![pods_of(site, Component::Database)]),
            ports: Some(vec![tcp(POSTGRES_PORT), tcp(PATRONI_PORT)]),
        },
        NetworkPolicyEgressRule {
            to: None,
            ports: Some(API_SERVER_PORTS.iter().map(|p| tcp(*p)).collect()),
        },
    ];
    if let Some(b) = &site.spec.backup {
        let port =
            b.s3.endpoint
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(443);
        egress.push(NetworkPolicyEgressRule {
            to: None,
            ports: Some(vec![tcp(port)]),
        });
    }
    NetworkPolicy {
        metadata: object_meta(site, Names::database(&site.name_any()), Component::Database),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(label_selector(site, Component::Database)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        pods_of(site, Component::App),
                        pods_of(site, Component::Database),
                    ]),
                    ports: Some(vec![tcp(POSTGRES_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![pods_of(site, Component::Database)]),
                    ports: Some(vec![tcp(PATRONI_PORT)]),
                },
            ]),
            egress: Some(egress),
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
                dns_rule(),
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
    fn only_the_site_reaches_its_database() {
        let np = database(&site("news"));
        let spec = np.spec.unwrap();
        let target = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(target["app.kubernetes.io/component"], "database");
        let peers = |rule: &NetworkPolicyIngressRule| -> Vec<String> {
            rule.from
                .iter()
                .flatten()
                .map(|p| {
                    assert!(p.namespace_selector.is_none(), "own namespace only");
                    let l = p
                        .pod_selector
                        .as_ref()
                        .unwrap()
                        .match_labels
                        .as_ref()
                        .unwrap();
                    assert_eq!(l["app.kubernetes.io/instance"], "news");
                    l["app.kubernetes.io/component"].clone()
                })
                .collect()
        };
        let port = |r: &Option<Vec<NetworkPolicyPort>>| r.as_ref().unwrap()[0].port.clone();
        let ingress = spec.ingress.unwrap();
        assert_eq!(peers(&ingress[0]), ["app", "database"]);
        assert_eq!(port(&ingress[0].ports), Some(IntOrString::Int(5432)));
        assert_eq!(
            peers(&ingress[1]),
            ["database"],
            "Patroni's API: members only"
        );
        assert_eq!(port(&ingress[1].ports), Some(IntOrString::Int(8008)));
        assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
        let egress = spec.egress.unwrap();
        assert_eq!(egress.len(), 3);
        let ports: Vec<_> = egress[1]
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone())
            .collect();
        assert_eq!(
            ports,
            [Some(IntOrString::Int(5432)), Some(IntOrString::Int(8008))]
        );
        let api: Vec<_> = egress[2]
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone())
            .collect();
        assert_eq!(
            api,
            [Some(IntOrString::Int(443)), Some(IntOrString::Int(6443))]
        );
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
