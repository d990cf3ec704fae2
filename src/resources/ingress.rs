//! The optional Ingress of the site, with TLS from a given Secret or from cert-manager.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::ResourceExt;

use super::{Component, Names, object_meta};
use crate::crd::ArticleSite;

/// The desired Ingress, or `None` when the spec has no `ingress` (an existing one is deleted).
pub fn build(site: &ArticleSite) -> Option<Ingress> {
    let spec = site.spec.ingress.as_ref()?;
    let name = site.name_any();
    let mut meta = object_meta(site, Names::app(&name), Component::App);
    let mut annotations: BTreeMap<String, String> = spec.annotations.clone().unwrap_or_default();
    let tls = spec.tls.as_ref().map(|tls| {
        if let Some(issuer) = &tls.cluster_issuer {
            annotations.insert("cert-manager.io/cluster-issuer".into(), issuer.clone());
        }
        if let Some(issuer) = &tls.issuer {
            annotations.insert("cert-manager.io/issuer".into(), issuer.clone());
        }
        IngressTLS {
            hosts: Some(vec![spec.host.clone()]),
            secret_name: Some(
                tls.secret_name
                    .clone()
                    .unwrap_or_else(|| Names::default_tls_secret(&name)),
            ),
        }
    });
    if !annotations.is_empty() {
        meta.annotations = Some(annotations);
    }
    Some(Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: Names::app(&name),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    ..Default::default()
                                }),
                            }),
                            ..Default::default()
                        },
                    }],
                }),
            }]),
            tls: tls.map(|t| vec![t]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    #[test]
    fn no_ingress_without_spec() {
        assert!(build(&site("news")).is_none());
    }

    #[test]
    fn cert_manager_tls() {
        let mut s = site("news");
        s.spec.ingress = Some(
            serde_json::from_value(serde_json::json!({
                "host": "news.example.com",
                "className": "nginx",
                "tls": {"clusterIssuer": "letsencrypt"}
            }))
            .unwrap(),
        );
        let ing = build(&s).unwrap();
        assert_eq!(
            ing.metadata.annotations.as_ref().unwrap()["cert-manager.io/cluster-issuer"],
            "letsencrypt"
        );
        let spec = ing.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let tls = &spec.tls.unwrap()[0];
        assert_eq!(tls.secret_name.as_deref(), Some("news-tls"));
        assert_eq!(tls.hosts.as_ref().unwrap()[0], "news.example.com");
    }

    #[test]
    fn given_tls_secret() {
        let mut s = site("news");
        s.spec.ingress = Some(
            serde_json::from_value(serde_json::json!({
                "host": "news.example.com", "tls": {"secretName": "my-cert"}
            }))
            .unwrap(),
        );
        let ing = build(&s).unwrap();
        assert!(ing.metadata.annotations.is_none());
        assert_eq!(
            ing.spec.unwrap().tls.unwrap()[0].secret_name.as_deref(),
            Some("my-cert")
        );
    }
}
