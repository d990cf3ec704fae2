//! Reading pods: readiness, placement, and the live pods of one component of a site.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

/// The pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Not being deleted.
pub fn is_live(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
}

/// The node the pod is bound to; empty while it is not bound.
pub fn node_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// The label selector of one component (`app`, `database`) of a site.
pub fn component_selector(site: &str, component: &str) -> String {
    format!("app.kubernetes.io/instance={site},app.kubernetes.io/component={component}")
}

/// The pods of one component of a site that are not being deleted.
pub async fn live_pods(pods: &Api<Pod>, site: &str, component: &str) -> Result<Vec<Pod>, String> {
    let list = pods
        .list(&ListParams::default().labels(&component_selector(site, component)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list.items.into_iter().filter(is_live).collect())
}
