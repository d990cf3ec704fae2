//! The watch of ArticleSites, tolerant of objects the operator cannot read.
//!
//! A typed watch fails as a whole when one stored object does not deserialize (an ArticleSite
//! stored before a schema change, say): its list errors on every retry and no site is reconciled
//! at all. This watch reads objects as JSON and converts each on its own; one that does not
//! convert is dropped from the cache with a warning and counted
//! (`articlesite_operator_reconcile_errors_total{reason="malformed_object"}`), and every other
//! site is reconciled as usual. Fixing the object brings it back.

use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tracing::warn;

use crate::crd::{ArticleSite, ArticleSiteSpec};
use crate::metrics::Metrics;

/// The cache of readable sites and the stream of sites to reconcile, for
/// `Controller::for_stream`.
pub fn watch(
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
    let events = watcher::watcher(api, watcher::Config::default()).filter_map(move |event| {
        future::ready(match event {
            Ok(e) => convert(e, &metrics).map(Ok),
            Err(e) => Some(Err(e)),
        })
    });
    let sites = reflector::reflector(writer, events).applied_objects();
    (reader, sites)
}

/// The event for the typed cache; `None` drops it.
fn convert(event: Event<DynamicObject>, metrics: &Metrics) -> Option<Event<ArticleSite>> {
    match event {
        Event::Apply(o) => match readable(o, metrics) {
            Ok(site) => Some(Event::Apply(site)),
            // Removes an older readable copy, so a site is never reconciled from a stale spec.
            Err(o) => placeholder(o).map(Event::Delete),
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
fn readable(o: DynamicObject, metrics: &Metrics) -> Result<ArticleSite, DynamicObject> {
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
            Err(o)
        }
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
}
