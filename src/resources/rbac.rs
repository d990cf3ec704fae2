//! The database pods' Kubernetes identity: Patroni keeps its leader lock and member state in
//! the API, so these pods (and only these) get a ServiceAccount token, bound to a Role with
//! exactly the calls Patroni 4 makes in Endpoints mode (`patroni/dcs/kubernetes.py`).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::ResourceExt;

use super::{Component, Names, object_meta};
use crate::crd::ArticleSite;

/// The token is mounted by the pod template (`automountServiceAccountToken` there), not by
/// every pod that might name this account.
pub fn service_account(site: &ArticleSite) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(
            site,
            Names::database_service_account(&site.name_any()),
            Component::Database,
        ),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

fn rule(resource: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// Patroni's calls, verb by verb:
/// - endpoints `get` (read the leader object before taking or updating the lock), `list` and
///   `watch` (its cache of the leader, config, sync and failover objects), `create` (the objects
///   at bootstrap), `patch` (lock renewal, optime, sync state, failover, config) and `update`
///   (kept from Patroni's reference RBAC, `kubernetes/patroni_k8s.yaml`, which the Python
///   client may use for a replace); no `delete`: only `patronictl remove` deletes, and in
///   Endpoints mode releasing the lock is a patch;
/// - pods `get`, `list`, `watch` (the members are the pods with Patroni's labels), `patch`
///   (each member writes its own `status` annotation and `role` label) and `update` (same
///   reference RBAC).
///
/// Not granted: services `create` (Patroni tries to create the `-config` Service and accepts a
/// 403; the operator creates it), configmaps (ConfigMap mode only).
pub fn role(site: &ArticleSite) -> Role {
    Role {
        metadata: object_meta(
            site,
            Names::database_service_account(&site.name_any()),
            Component::Database,
        ),
        rules: Some(vec![
            rule(
                "endpoints",
                &["get", "list", "watch", "create", "patch", "update"],
            ),
            rule("pods", &["get", "list", "watch", "patch", "update"]),
        ]),
    }
}

pub fn role_binding(site: &ArticleSite) -> RoleBinding {
    binding(
        site,
        Names::database_service_account(&site.name_any()),
        Component::Database,
    )
}

/// The RoleBinding `name` of the Role `name` to the ServiceAccount `name`.
pub fn binding(site: &ArticleSite, name: String, component: Component) -> RoleBinding {
    RoleBinding {
        metadata: object_meta(site, name.clone(), component),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: site.namespace(),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    #[test]
    fn patroni_gets_endpoints_and_pods_only() {
        let s = site("news");
        let role = role(&s);
        assert_eq!(role.metadata.name.as_deref(), Some("news-postgresql"));
        let rules: Vec<(String, Vec<String>)> = role
            .rules
            .unwrap()
            .into_iter()
            .map(|r| (r.resources.unwrap().join(","), r.verbs))
            .collect();
        assert_eq!(
            rules,
            [
                (
                    "endpoints".to_string(),
                    ["get", "list", "watch", "create", "patch", "update"]
                        .map(String::from)
                        .to_vec()
                ),
                (
                    "pods".to_string(),
                    ["get", "list", "watch", "patch", "update"]
                        .map(String::from)
                        .to_vec()
                ),
            ]
        );
        let rb = role_binding(&s);
        assert_eq!(rb.role_ref.kind, "Role");
        let subject = &rb.subjects.unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            ("news-postgresql", Some("news-ns"))
        );
        assert_eq!(
            service_account(&s).automount_service_account_token,
            Some(false)
        );
    }
}
