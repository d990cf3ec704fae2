//! The app Service and the database Services: the client Service that follows Patroni's leader
//! (selector-less: Patroni writes its Endpoints), the read-only Service over the replicas, the
//! StatefulSet's headless Service, and the headless `-config` Service that keeps Patroni's
//! config Endpoints from being cleaned up.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{Component, HTTP_SERVICE_PORT, Names, POSTGRES_PORT, object_meta, selector_labels};
use crate::crd::ArticleSite;
use crate::patroni;

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
    selector: Option<BTreeMap<String, String>>,
) -> Service {
    Service {
        metadata: object_meta(site, name, component),
        spec: Some(ServiceSpec { selector, ..spec }),
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
        Some(selector_labels(site, Component::App)),
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
        Some(selector_labels(site, Component::Database)),
    )
}

/// `<site>-postgresql`: what the app connects to. No selector: Patroni writes the leader's
/// address into the Endpoints of the same name together with the leader lock, so the Service
/// follows the leader atomically (the endpoint-slice mirroring controller turns those Endpoints
/// into the EndpointSlice kube-proxy reads). The operator never writes those Endpoints.
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
        None,
    )
}

/// `<site>-postgresql-replicas`: read-only, the ready pods Patroni labels `role=replica`.
pub fn database_replicas(site: &ArticleSite) -> Service {
    let mut selector = selector_labels(site, Component::Database);
    selector.insert(patroni::ROLE_LABEL.into(), patroni::REPLICA.into());
    service(
        site,
        Names::database_replicas(&site.name_any()),
        Component::Database,
        ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![port("postgresql", POSTGRES_PORT, "postgresql")]),
            ..Default::default()
        },
        Some(selector),
    )
}

/// `<site>-postgresql-config`: headless, no selector, no ports. The endpoints controller
/// deletes Endpoints without a Service of the same name; this one keeps Patroni's config
/// Endpoints (the cluster's identity and dynamic configuration).
pub fn database_config(site: &ArticleSite) -> Service {
    service(
        site,
        Names::database_config(&site.name_any()),
        Component::Database,
        ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("None".into()),
            ..Default::default()
        },
        None,
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
        assert!(
            client.spec.as_ref().unwrap().selector.is_none(),
            "Patroni writes its Endpoints"
        );
        let replicas = database_replicas(&s);
        let sel = replicas.spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert_eq!(sel["app.kubernetes.io/component"], "database");
        assert_eq!(sel["role"], "replica");
        let config = database_config(&s);
        assert_eq!(
            config.metadata.name.as_deref(),
            Some("news-postgresql-config")
        );
        let spec = config.spec.as_ref().unwrap();
        assert_eq!(
            (spec.cluster_ip.as_deref(), spec.selector.is_none()),
            (Some("None"), true)
        );
        assert_eq!(
            client.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            5432
        );
    }
}
