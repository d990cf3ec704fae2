//! ArticleSites: building them, reading their conditions, waiting for them.

use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::wait_for;

/// The article server image the simulated nodes "run" (kwok never pulls it).
pub const IMAGE: &str = "articlesite/article-server:0.1.0";

pub fn site(name: &str, spec: Value) -> ArticleSite {
    ArticleSite::new(name, serde_json::from_value(spec).expect("valid spec"))
}

/// (status, reason, message) of a condition of the site.
pub fn condition(site: &ArticleSite, type_: &str) -> Option<(String, String, String)> {
    site.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Ready=True, for the current generation.
pub fn site_ready(s: &ArticleSite) -> bool {
    let observed = s.status.as_ref().and_then(|st| st.observed_generation);
    observed.is_some()
        && observed == s.metadata.generation
        && condition(s, "Ready").is_some_and(|(status, _, _)| status == "True")
}

/// Waits until Ready=True for the current generation.
pub async fn wait_site_ready(api: &Api<ArticleSite>, name: &str, timeout: Duration) -> ArticleSite {
    wait_for(&format!("ArticleSite {name} Ready"), timeout, || async {
        let s = api.get(name).await.map_err(|e| e.to_string())?;
        if site_ready(&s) {
            return Ok(s);
        }
        Err(format!(
            "Ready={:?}, observedGeneration={:?}, generation={:?}",
            condition(&s, "Ready"),
            s.status.as_ref().and_then(|st| st.observed_generation),
            s.metadata.generation
        ))
    })
    .await
}

/// Waits until the site's condition `type_` has `status` and, when given, `reason`; returns the
/// site as it was then.
pub async fn wait_condition(
    api: &Api<ArticleSite>,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> ArticleSite {
    let what = format!("{name}: {type_}={status} {}", reason.unwrap_or_default());
    wait_for(&what, timeout, || async {
        let s = api.get(name).await.map_err(|e| e.to_string())?;
        match condition(&s, type_) {
            Some((st, r, _)) if st == status && reason.is_none_or(|want| r == want) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The message of the site's condition `type_` (empty when it has none).
pub fn message(site: &ArticleSite, type_: &str) -> String {
    condition(site, type_).map(|c| c.2).unwrap_or_default()
}

/// Waits until namespace `ns` has a Warning Event with `reason`.
pub async fn wait_warning_event(client: &Client, ns: &str, reason: &str, timeout: Duration) {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("Warning event {reason}"), timeout, || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
            .map(|_| ())
            .ok_or_else(|| "no event yet".to_string())
    })
    .await;
}
