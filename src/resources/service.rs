//! The app Service and the two database Services (headless for the StatefulSet, client for the app).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{Component, HTTP_SERVICE_PORT, Names, POSTGRES_PORT, object_meta, selector_labels};
use crate::crd::ArticleSite;

fn port(name: &str, port: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(target.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn service(
    site: &ArticleSite,
    name: String,
    component: Component,
    spec: ServiceSpec,
    selector: BTreeMap<String, String>,
) -> Service {
    Service {
        metadata: object_meta(site, name, component),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ..spec
        }),
        ..Default::default()
    }
}

/// `<site>`: port 80 → the `http` port of the article server pods.
pub fn app(site: &ArticleSite) -> Service {
    service(
        site,
        Names::app(&site.name_any()),
        Component::App,
        ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![port("http", HTTP_SERVICE_PORT, "http")]),
            ..Default::default()
        },
        selector_labels(site, Component::App),
    )
}

/// `<site>-postgresql-hl`: the StatefulSet's governing Service, stable DNS per pod.
pub fn database_headless(site: &ArticleSite) -> Service {
    service(
        site,
        Names::database_headless(&site.name_any()),
        Component::Database,
        ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![port("postgresql", POSTGRES_PORT, "postgresql")]),
            ..Default::default()
        },
        selector_labels(site, Component::Database),
    )
}

/// `<site>-postgresql`: what the app connects to (ready endpoints only).
pub fn database_client(site: &ArticleSite) -> Service {
    service(
        site,
        Names::database(&site.name_any()),
        Component::Database,
        ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![port("postgresql", POSTGRES_PORT, "postgresql")]),
            ..Default::default()
        },
        selector_labels(site, Component::Database),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    #[test]
    fn services_select_their_component() {
        let s = site("news");
        let app = app(&s);
        assert_eq!(app.metadata.name.as_deref(), Some("news"));
        let sel = app.spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert_eq!(sel["app.kubernetes.io/component"], "app");
        let hl = database_headless(&s);
        assert_eq!(hl.metadata.name.as_deref(), Some("news-postgresql-hl"));
        assert_eq!(
            hl.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        let client = database_client(&s);
        assert_eq!(client.metadata.name.as_deref(), Some("news-postgresql"));
        let sel = client.spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert_eq!(sel["app.kubernetes.io/component"], "database");
        assert_eq!(
            client.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            5432
        );
    }
}
