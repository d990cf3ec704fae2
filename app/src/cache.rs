//! A small in-process cache of rendered public responses: bounded (LRU), short-lived (TTL),
//! cleared by this replica's writes. Other replicas' writes show up within the TTL.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use lru::LruCache;

use crate::config::CacheConfig;

/// A response body ready to send, with its validator.
#[derive(Debug)]
pub struct Cached {
    pub body: Bytes,
    pub etag: String,
    pub content_type: &'static str,
}

struct Entry {
    value: Arc<Cached>,
    expires: Instant,
}

pub struct Cache {
    inner: Option<Mutex<LruCache<String, Entry>>>,
    ttl: Duration,
    /// Bumped by every write. A reader notes it before reading the database and stores
    /// its result only if no write happened meanwhile, so a write is never undone by a
    /// slower read that started before it.
    generation: AtomicU64,
}

/// Taken before a database read; hands the result to [`Cache::insert`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl Cache {
    pub fn new(config: &CacheConfig) -> Self {
        let inner = NonZeroUsize::new(config.max_entries)
            .filter(|_| config.enabled)
            .map(|n| Mutex::new(LruCache::new(n)));
        Cache {
            inner,
            ttl: config.ttl,
            generation: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &str, now: Instant) -> Option<Arc<Cached>> {
        let mut map = self.inner.as_ref()?.lock().ok()?;
        match map.get(key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                map.pop(key);
                None
            }
            None => None,
        }
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::Acquire))
    }

    pub fn insert(&self, ticket: Ticket, key: String, value: Arc<Cached>) {
        let Some(lock) = &self.inner else { return };
        let Ok(mut map) = lock.lock() else { return };
        // Checked under the lock: `invalidate` bumps the generation before clearing.
        if self.generation.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        map.put(
            key,
            Entry {
                value,
                expires: Instant::now() + self.ttl,
            },
        );
    }

    /// Drops everything: a write may change any list, page or feed.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(lock) = &self.inner
            && let Ok(mut map) = lock.lock()
        {
            map.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .as_ref()
            .and_then(|m| m.lock().ok().map(|m| m.len()))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(enabled: bool, max: usize) -> Cache {
        Cache::new(&CacheConfig {
            enabled,
            ttl: Duration::from_secs(5),
            max_entries: max,
        })
    }

    fn value(s: &'static str) -> Arc<Cached> {
        Arc::new(Cached {
            body: Bytes::from_static(s.as_bytes()),
            etag: format!("\"{s}\""),
            content_type: "text/plain",
        })
    }

    #[test]
    fn bounded_by_max_entries() {
        let c = cache(true, 2);
        for k in ["a", "b", "c"] {
            c.insert(c.ticket(), k.into(), value(k));
        }
        assert_eq!(c.len(), 2);
        assert!(c.get("a").is_none(), "least recently used is evicted");
        assert!(c.get("c").is_some());
    }

    #[test]
    fn entries_expire_after_ttl() {
        let c = cache(true, 10);
        c.insert(c.ticket(), "k".into(), value("v"));
        assert!(c.get_at("k", Instant::now()).is_some());
        assert!(
            c.get_at("k", Instant::now() + Duration::from_secs(6))
                .is_none()
        );
        assert!(c.is_empty(), "expired entry is dropped");
    }

    #[test]
    fn a_write_during_a_read_keeps_the_stale_result_out() {
        let c = cache(true, 10);
        let ticket = c.ticket();
        c.invalidate();
        c.insert(ticket, "k".into(), value("stale"));
        assert!(c.get("k").is_none());
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let c = cache(false, 10);
        c.insert(c.ticket(), "k".into(), value("v"));
        assert!(!c.enabled());
        assert!(c.get("k").is_none());
    }
}
