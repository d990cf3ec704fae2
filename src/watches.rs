//! The operator's watches: each restarts on its own after a failure, and sites are read one by
//! one.
//!
//! - Per-watch backoff (`api_health::watch_backoff`, 0.5 s doubling to 5 s, jittered, reset by
//!   the next event). kube-rs's `Controller::owns` backs off all watches of a controller together,
//!   so after an API server restart their 410 Gone answers were handled one pause after another
//!   (tens of seconds); here every watch re-lists in parallel. Failures are counted in
//!   `articlesite_operator_watch_errors_total{reason}` (`410` = resource version compacted away)
//!   and never reach the controller, whose shared backoff would pause every trigger.
//! - A typed watch fails as a whole when one stored object does not deserialize (an ArticleSite
//!   stored before a schema change, say): its list errors on every retry and no site is reconciled
//!   at all. This watch reads objects as JSON and converts each on its own; one that does not
//!   convert is dropped from the cache with a warning and counted
//!   (`articlesite_operator_reconcile_errors_total{reason="malformed_object"}`), and every other
//!   site is reconciled as usual. Fixing the object brings it back.
//! - The site cache is the operator's only cache of whole objects, so what it never reads is
//!   dropped before it is stored: `managedFields` and kubectl's last-applied annotation (a copy
//!   of the whole object) take as much room as the rest of a site.

use std::sync::Arc;

use std::fmt::Debug;

use futures::{Stream, StreamExt, future};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::api_health::{watch_backoff, watch_error_reason};
use crate::crd::{ArticleSite, ArticleSiteSpec};
use crate::metrics::Metrics;
use crate::resources::MANAGED_BY_SELECTOR;

/// Counts and logs a watch failure (the watch has already backed off) and drops it.
pub(crate) fn absorb<T>(
    kind: &'static str,
    metrics: &Metrics,
    item: Result<T, watcher::Error>,
) -> Option<T> {
    match item {
        Ok(v) => Some(v),
        Err(e) => {
            metrics.watch_error(watch_error_reason(&e));
            warn!(kind, error = %e, "watch failed; it restarts after a backoff");
            None
        }
    }
}

/// Metadata watch of the children of one kind that the operator manages, for
/// `Controller::owns_stream`.
pub fn children<K>(
    client: &Client,
    namespace: Option<&str>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + DeserializeOwned
        + Clone
        + Debug
        + Send
        + Sync
        + 'static,
{
    // Metadata-only requests: the operator reads children with GETs when it reconciles.
    let api: Api<PartialObjectMeta<K>> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let kind = K::KIND;
    watcher::watcher(api, watcher::Config::default().labels(MANAGED_BY_SELECTOR))
        .backoff(watch_backoff())
        .filter_map(move |item| future::ready(absorb(kind, &metrics, item).map(Ok)))
        .touched_objects()
}

/// The cache of readable sites and the stream of sites to reconcile, for
/// `Controller::for_stream`.
pub fn sites(
    client: &Client,
    namespace: Option<&str>,
    metrics: Arc<Metrics>,
) -> (
    Store<ArticleSite>,
    impl Stream<Item = Result<ArticleSite, watcher::Error>> + Send + 'static,
) {
    let resource = ApiResource::erase::<ArticleSite>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let writer: Writer<ArticleSite> = Writer::default();
    let reader = writer.as_reader();
    let events = watcher::watcher(api, watcher::Config::default())
        .backoff(watch_backoff())
        .filter_map(move |item| {
            future::ready(
                absorb("ArticleSite", &metrics, item)
                    .and_then(|e| convert(e, &metrics))
                    .map(Ok),
            )
        });
    let sites = reflector::reflector(writer, events).applied_objects();
    (reader, sites)
}

/// The event for the typed cache; `None` drops it.
fn convert(event: Event<DynamicObject>, metrics: &Metrics) -> Option<Event<ArticleSite>> {
    let event = event.modify(trim);
    match event {
        Event::Apply(o) => match readable(o, metrics) {
            Ok(site) => Some(Event::Apply(site)),
            // Removes an older readable copy, so a site is never reconciled from a stale spec.
            Err(o) => placeholder(*o).map(Event::Delete),
        },
        Event::InitApply(o) => readable(o, metrics).ok().map(Event::InitApply),
        Event::Delete(o) => match parse(&o) {
            Ok(site) => Some(Event::Delete(site)),
            Err(_) => placeholder(o).map(Event::Delete),
        },
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
    }
}

/// The typed site, or the object back when it cannot be read (logged and counted).
fn readable(o: DynamicObject, metrics: &Metrics) -> Result<ArticleSite, Box<DynamicObject>> {
    match parse(&o) {
        Ok(site) => Ok(site),
        Err(e) => {
            warn!(
                site = %o.name_any(),
                namespace = ?o.namespace(),
                error = %e,
                "ArticleSite cannot be read (stored under an older schema?); skipped until it is fixed"
            );
            metrics.error("malformed_object".into());
            Err(Box::new(o))
        }
    }
}

/// Drops the metadata the operator never reads (see the module docs).
fn trim(o: &mut DynamicObject) {
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn parse(o: &DynamicObject) -> Result<ArticleSite, serde_json::Error> {
    let mut value = serde_json::to_value(o)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), "articlesite.io/v1alpha1".into());
        map.insert("kind".into(), "ArticleSite".into());
    }
    serde_json::from_value(value)
}

/// A site with the object's metadata and an empty spec: only ever used to remove the object
/// from the cache (the cache keys by namespace and name), never reconciled.
fn placeholder(o: DynamicObject) -> Option<ArticleSite> {
    let spec: ArticleSiteSpec =
        serde_json::from_value(serde_json::json!({"app": {"image": ""}})).ok()?;
    Some(ArticleSite {
        metadata: o.metadata,
        spec,
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "articlesite.io/v1alpha1", "kind": "ArticleSite",
            "metadata": {"name": "s", "namespace": "n"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn readable_sites_convert_and_malformed_ones_are_removed() {
        let m = Metrics::default();
        match convert(Event::Apply(dynamic(json!({"app": {"image": "x:1"}}))), &m) {
            Some(Event::Apply(s)) => assert_eq!(s.spec.app.image, "x:1"),
            other => panic!("{other:?}"),
        }
        match convert(
            Event::Apply(dynamic(json!({"app": {"replicas": "many"}}))),
            &m,
        ) {
            Some(Event::Delete(s)) => assert_eq!(s.name_any(), "s"),
            other => panic!("{other:?}"),
        }
        // Left out of a cache being rebuilt (an `Init` here would empty the rebuild buffer).
        assert!(convert(Event::InitApply(dynamic(json!({"app": 7}))), &m).is_none());
        assert!(matches!(
            convert(Event::Delete(dynamic(json!({"app": 7}))), &m),
            Some(Event::Delete(_))
        ));
        assert!(m.encode().unwrap().contains("malformed_object"));
    }

    #[test]
    fn cached_sites_carry_no_managed_fields_or_last_applied_copy() {
        let m = Metrics::default();
        let mut o = dynamic(json!({"app": {"image": "x:1"}}));
        o.metadata.managed_fields = Some(vec![Default::default()]);
        o.metadata.annotations = Some(
            [
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{}".to_string(),
                ),
                (
                    "articlesite.io/rotate-credentials".to_string(),
                    "1".to_string(),
                ),
            ]
            .into(),
        );
        match convert(Event::Apply(o), &m) {
            Some(Event::Apply(s)) => {
                assert!(s.metadata.managed_fields.is_none());
                let a = s.metadata.annotations.unwrap();
                assert_eq!(
                    a.keys().collect::<Vec<_>>(),
                    ["articlesite.io/rotate-credentials"]
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
