//! Watch-backed caches of what `observe` would otherwise read again for every site: the nodes
//! (zones, readiness, taints), the StorageClasses and the database claims. Each is one watch for the whole
//! operator instead of a request per reconcile; at a thousand converging sites those requests
//! were a measurable share of an API server that was the bottleneck.
//!
//! Everything a site owns outright (its children, Secrets, pods) is still read fresh by
//! `observe`: those are what a reconcile acts on. A cached object can be a moment behind; the
//! plan's decisions on them (a missing StorageClass, a claim to grow) are idempotent and the
//! next watch event corrects them.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::Resource as _;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};

use crate::api_health::watch_backoff;
use crate::metrics::Metrics;
use crate::resources::MANAGED_BY_SELECTOR;
use crate::watches;

/// The caches, cheap to clone (each `Store` is a shared reader).
#[derive(Clone)]
pub struct Caches {
    /// Whole nodes, without what the operator never reads (their image lists, managed fields).
    nodes: Store<Node>,
    storage_classes: Store<PartialObjectMeta<StorageClass>>,
    /// One store per watched namespace (a single one for all namespaces).
    claims: Vec<Store<PersistentVolumeClaim>>,
}

impl Caches {
    /// Starts the watches on the runtime (they run until the process ends) and returns their
    /// caches. `namespaces` empty means all namespaces.
    pub fn start(client: &Client, namespaces: &[String], metrics: Arc<Metrics>) -> Caches {
        let nodes = spawn(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            Node::KIND,
            metrics.clone(),
            trim_node,
        );
        let storage_classes = spawn(
            Api::<PartialObjectMeta<StorageClass>>::all(client.clone()),
            watcher::Config::default(),
            StorageClass::KIND,
            metrics.clone(),
            drop_managed_fields,
        );
        let scopes: Vec<Api<PersistentVolumeClaim>> = if namespaces.is_empty() {
            vec![Api::all(client.clone())]
        } else {
            namespaces
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect()
        };
        let claims = scopes
            .into_iter()
            .map(|api| {
                spawn(
                    api,
                    watcher::Config::default().labels(MANAGED_BY_SELECTOR),
                    PersistentVolumeClaim::KIND,
                    metrics.clone(),
                    drop_managed_fields,
                )
            })
            .collect();
        Caches {
            nodes,
            storage_classes,
            claims,
        }
    }

    /// Waits until every cache holds its first complete list.
    pub async fn wait_until_ready(&self) {
        // The ready signal wakes only its most recent waiter, so poll each store.
        async fn ready<K>(store: &Store<K>)
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            while tokio::time::timeout(Duration::from_millis(500), store.wait_until_ready())
                .await
                .is_err()
            {}
        }
        ready(&self.nodes).await;
        ready(&self.storage_classes).await;
        for claims in &self.claims {
            ready(claims).await;
        }
    }

    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.state()
    }

    pub fn storage_classes(&self) -> Vec<Arc<PartialObjectMeta<StorageClass>>> {
        self.storage_classes.state()
    }

    pub fn storage_class(&self, name: &str) -> Option<Arc<PartialObjectMeta<StorageClass>>> {
        self.storage_classes.get(&ObjectRef::new(name))
    }

    pub fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        let key = ObjectRef::new(name).within(namespace);
        self.claims.iter().find_map(|s| s.get(&key))
    }
}

/// A reflector over `api`, driven on its own task; watch failures back off, are counted and
/// logged, and never end the watch.
fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    metrics: Arc<Metrics>,
    trim: fn(&mut K),
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(api, config)
        .backoff(watch_backoff())
        .modify(trim)
        .filter_map(move |item| future::ready(watches::absorb(kind, &metrics, item).map(Ok)));
    tokio::spawn(reflector::reflector(writer, stream).for_each(|_| future::ready(())));
    reader
}

/// What no reconcile reads, dropped before an object is cached.
fn drop_managed_fields<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// A node's image list (a few kilobytes per node) as well.
fn trim_node(node: &mut Node) {
    drop_managed_fields(node);
    if let Some(status) = node.status.as_mut() {
        status.images = None;
    }
}
