//! The in-process cache of rendered public responses, kept coherent across replicas.
//!
//! - Bounded by memory (`ARTICLES_CACHE_MAX_BYTES`): each entry weighs its key, its body and
//!   its precompressed copies; the least recently used go first.
//! - Every write to an article is announced by PostgreSQL (`coherence`): the article's own
//!   entries are dropped and every list, page and feed entry is invalidated at once (a
//!   generation stamp, O(1)).
//! - While the listener is down the cache is *incoherent*: nothing is served as fresh or
//!   stored, but entries are kept, to be served as stale only if the database is unreachable.
//!   When the listener is back, everything is dropped (a notification may have been missed).
//! - A ticket taken before a database read keeps a result that raced with a write out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderValue;
use lru::LruCache;

use crate::compress::{self, Encoding};
use crate::config::CacheConfig;

/// A response body ready to send, with its validator and its compressed copies, each
/// made once, by the first request that accepts that encoding (so clients that accept
/// none cost no compression at all).
#[derive(Debug)]
pub struct Cached {
    pub body: Bytes,
    gzip: OnceLock<Option<Bytes>>,
    br: OnceLock<Option<Bytes>>,
    pub etag: String,
    /// The `ETag` header of each representation (identity, gzip, brotli), made once
    /// rather than formatted and parsed for every response.
    etag_headers: [Option<HeaderValue>; 3],
    pub content_type: &'static str,
}

impl Cached {
    pub fn new(body: impl Into<Bytes>, etag: String, content_type: &'static str) -> Self {
        let header = |e| HeaderValue::from_str(&crate::http::encoded_etag(&etag, e)).ok();
        Cached {
            body: body.into(),
            gzip: OnceLock::new(),
            br: OnceLock::new(),
            etag_headers: [
                header(Encoding::Identity),
                header(Encoding::Gzip),
                header(Encoding::Brotli),
            ],
            etag,
            content_type,
        }
    }

    /// The `ETag` header value of the representation in `encoding`.
    pub fn etag_header(&self, encoding: Encoding) -> Option<&HeaderValue> {
        let i = match encoding {
            Encoding::Identity => 0,
            Encoding::Gzip => 1,
            Encoding::Brotli => 2,
        };
        self.etag_headers[i].as_ref()
    }

    /// The body in `encoding`, compressed on first use and kept; `None` when compression
    /// would not pay (a small body, or no gain).
    pub fn encoded(&self, encoding: Encoding) -> Option<Bytes> {
        self.encode(encoding).0
    }

    /// Makes the copy in `encoding` if it is not there yet; returns the bytes it added
    /// (0 when it was there already, or compression does not pay), for the cache's bound.
    pub fn prepare(&self, encoding: Encoding) -> usize {
        self.encode(encoding).1
    }

    fn encode(&self, encoding: Encoding) -> (Option<Bytes>, usize) {
        if self.body.len() < compress::MIN_SIZE {
            return (None, 0);
        }
        let slot = match encoding {
            Encoding::Identity => return (None, 0),
            Encoding::Gzip => &self.gzip,
            Encoding::Brotli => &self.br,
        };
        let mut made = 0;
        let copy = slot
            .get_or_init(|| {
                let copy = match encoding {
                    Encoding::Gzip => compress::gzip(&self.body),
                    _ => compress::brotli(&self.body),
                };
                made = copy.as_ref().map_or(0, Bytes::len);
                copy
            })
            .clone();
        (copy, made)
    }

    /// The compressed copies made so far.
    fn compressed_len(&self) -> usize {
        [&self.gzip, &self.br]
            .into_iter()
            .filter_map(|slot| slot.get().and_then(|c| c.as_ref()).map(Bytes::len))
            .sum()
    }

    /// Bytes this entry holds, for the cache's bound: the body, the compressed copies made
    /// so far (copies made later are added by [`Cache::charge`]), key, tags and overhead.
    /// Room for copies is not reserved up front: a cache whose clients accept no
    /// encoding (or one) would hold a third fewer pages than its bound allows.
    fn weight(&self, key: &str) -> usize {
        const OVERHEAD: usize = 192;
        OVERHEAD + key.len() + 4 * self.etag.len() + self.body.len() + self.compressed_len()
    }
}

/// What an entry depends on: one article, or the set of published articles (lists, the
/// index pages, the feed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Article,
    List,
}

struct Entry {
    value: Arc<Cached>,
    stored: Instant,
    expires: Instant,
    /// For list entries: the list generation they were built in.
    list_generation: Option<u64>,
    weight: usize,
}

struct Inner {
    map: LruCache<String, Entry>,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.map.pop(key) {
            self.bytes -= e.weight;
        }
    }

    /// Drops the least recently used entries until both bounds hold.
    fn evict_beyond(&mut self, max_bytes: usize, max_entries: Option<usize>) {
        while self.bytes > max_bytes || max_entries.is_some_and(|m| self.map.len() > m) {
            match self.map.pop_lru() {
                Some((_, e)) => self.bytes -= e.weight,
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

pub struct Cache {
    inner: Option<Mutex<Inner>>,
    max_bytes: usize,
    max_entries: Option<usize>,
    ttl: Duration,
    /// Bumped by every invalidation. A reader notes it before reading the database and
    /// stores its result only if nothing was invalidated meanwhile.
    generation: AtomicU64,
    /// Bumped by every write: list entries of an older generation are stale.
    list_generation: AtomicU64,
    /// True while the change listener is connected (see the module comment).
    coherent: AtomicBool,
}

/// Taken before a database read; hands the result to [`Cache::insert`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// A cached response and how long ago it was stored.
pub struct Hit {
    pub value: Arc<Cached>,
    pub age: Duration,
}

/// The keys of one article's entries.
pub fn article_keys(slug: &str) -> [String; 2] {
    [api_article_key(slug), page_article_key(slug)]
}

/// The key of an article's API entry.
pub fn api_article_key(slug: &str) -> String {
    format!("api:article|{slug}")
}

/// The key of an article's page entry.
pub fn page_article_key(slug: &str) -> String {
    format!("page:article|{slug}")
}

impl Cache {
    pub fn new(config: &CacheConfig) -> Self {
        let inner = config.enabled.then(|| {
            Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
            })
        });
        Cache {
            inner,
            max_bytes: config.max_bytes,
            max_entries: config.max_entries,
            ttl: config.ttl,
            generation: AtomicU64::new(0),
            list_generation: AtomicU64::new(0),
            // Until the listener has subscribed, a write elsewhere could go unnoticed.
            coherent: AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn coherent(&self) -> bool {
        self.coherent.load(Ordering::Acquire)
    }

    /// A fresh entry: coherent cache, within its TTL, and (for lists) of the current
    /// list generation.
    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &str, now: Instant) -> Option<Arc<Cached>> {
        if !self.coherent() {
            return None;
        }
        let list_generation = self.list_generation.load(Ordering::Acquire);
        let mut inner = self.inner.as_ref()?.lock().ok()?;
        let entry = inner.map.get(key)?;
        if entry.list_generation.is_some_and(|g| g != list_generation) {
            inner.remove(key);
            return None;
        }
        (entry.expires > now).then(|| entry.value.clone())
    }

    /// Any entry still held, however old or unverified: only for answering while the
    /// database is unreachable. Entries invalidated by a known write are gone.
    pub fn get_stale(&self, key: &str) -> Option<Hit> {
        let list_generation = self.list_generation.load(Ordering::Acquire);
        let mut inner = self.inner.as_ref()?.lock().ok()?;
        let entry = inner.map.peek(key)?;
        if entry.list_generation.is_some_and(|g| g != list_generation) {
            inner.remove(key);
            return None;
        }
        Some(Hit {
            value: entry.value.clone(),
            age: entry.stored.elapsed(),
        })
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::Acquire))
    }

    pub fn insert(&self, ticket: Ticket, key: String, scope: Scope, value: Arc<Cached>) {
        let Some(lock) = &self.inner else { return };
        let weight = value.weight(&key);
        if weight > self.max_bytes {
            return;
        }
        let list_generation = match scope {
            Scope::Article => None,
            Scope::List => Some(self.list_generation.load(Ordering::Acquire)),
        };
        let Ok(mut inner) = lock.lock() else { return };
        // Checked under the lock: invalidations bump the generation before taking it.
        if !self.coherent() || self.generation.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        inner.remove(&key);
        let now = Instant::now();
        inner.bytes += weight;
        inner.map.put(
            key,
            Entry {
                value,
                stored: now,
                expires: now + self.ttl,
                list_generation,
                weight,
            },
        );
        inner.evict_beyond(self.max_bytes, self.max_entries);
    }

    /// Counts `bytes` of compressed copies that `value`, the entry under `key`, made after
    /// it was stored, and evicts the least recently used entries beyond the bound. Nothing
    /// happens if the entry is gone or was replaced (its memory goes with its last user).
    pub fn charge(&self, key: &str, value: &Arc<Cached>, bytes: usize) {
        let Some(lock) = &self.inner else { return };
        let Ok(mut guard) = lock.lock() else { return };
        let inner = &mut *guard;
        let Some(entry) = inner.map.peek_mut(key) else {
            return;
        };
        if !Arc::ptr_eq(&entry.value, value) {
            return;
        }
        entry.weight += bytes;
        inner.bytes += bytes;
        inner.evict_beyond(self.max_bytes, self.max_entries);
    }

    /// One article changed (or was deleted): its entries go, and every list entry.
    pub fn invalidate_article(&self, slug: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.list_generation.fetch_add(1, Ordering::AcqRel);
        if let Some(lock) = &self.inner
            && let Ok(mut inner) = lock.lock()
        {
            for key in article_keys(slug) {
                inner.remove(&key);
            }
        }
    }

    /// Drops everything.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.list_generation.fetch_add(1, Ordering::AcqRel);
        if let Some(lock) = &self.inner
            && let Ok(mut inner) = lock.lock()
        {
            inner.clear();
        }
    }

    /// The listener lost its connection: serve nothing as fresh, store nothing, but keep
    /// the entries for stale-if-error.
    pub fn suspend(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.coherent.store(false, Ordering::Release);
    }

    /// The listener is subscribed (again): whatever was missed meanwhile is dropped with
    /// everything else, then the cache serves again.
    pub fn resume(&self) {
        self.invalidate_all();
        self.coherent.store(true, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.inner
            .as_ref()
            .and_then(|m| m.lock().ok().map(|m| m.map.len()))
            .unwrap_or(0)
    }

    pub fn bytes(&self) -> usize {
        self.inner
            .as_ref()
            .and_then(|m| m.lock().ok().map(|m| m.bytes))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(enabled: bool, max_bytes: usize) -> Cache {
        let c = Cache::new(&CacheConfig {
            enabled,
            ttl: Duration::from_secs(5),
            max_bytes,
            max_entries: None,
        });
        c.resume();
        c
    }

    fn value(s: &str) -> Arc<Cached> {
        Arc::new(Cached::new(
            Bytes::from(s.to_owned()),
            format!("\"{}\"", s.len()),
            "text/plain",
        ))
    }

    #[test]
    fn bounded_by_bytes() {
        let c = cache(true, 3 * 1300);
        for k in ["a", "b", "c", "d"] {
            c.insert(c.ticket(), k.into(), Scope::List, value(&k.repeat(1000)));
        }
        assert_eq!(c.len(), 3);
        assert!(c.bytes() <= 3 * 1300);
        assert!(c.get("a").is_none(), "least recently used is evicted");
        assert!(c.get("d").is_some());
        c.insert(
            c.ticket(),
            "huge".into(),
            Scope::List,
            value(&"x".repeat(5000)),
        );
        assert!(
            c.get("huge").is_none(),
            "an entry above the bound is not stored"
        );
    }

    #[test]
    fn entries_expire_after_ttl_but_stay_for_stale_use() {
        let c = cache(true, 1 << 20);
        c.insert(c.ticket(), "k".into(), Scope::Article, value("v"));
        assert!(c.get_at("k", Instant::now()).is_some());
        assert!(
            c.get_at("k", Instant::now() + Duration::from_secs(6))
                .is_none()
        );
        assert!(c.get_stale("k").is_some());
    }

    #[test]
    fn a_write_during_a_read_keeps_the_stale_result_out() {
        let c = cache(true, 1 << 20);
        let ticket = c.ticket();
        c.invalidate_article("other");
        c.insert(ticket, "k".into(), Scope::Article, value("stale"));
        assert!(c.get("k").is_none());
    }

    #[test]
    fn an_article_write_drops_its_entries_and_every_list() {
        let c = cache(true, 1 << 20);
        let [api_a, page_a] = article_keys("a");
        let [api_b, _] = article_keys("b");
        for k in [&api_a, &page_a, &api_b] {
            c.insert(c.ticket(), k.clone(), Scope::Article, value(k));
        }
        c.insert(c.ticket(), "feed".into(), Scope::List, value("feed"));
        c.invalidate_article("a");
        assert!(c.get(&api_a).is_none() && c.get(&page_a).is_none());
        assert!(c.get(&api_b).is_some(), "other articles stay");
        assert!(c.get("feed").is_none() && c.get_stale("feed").is_none());
    }

    #[test]
    fn an_incoherent_cache_serves_only_stale_and_resumes_empty() {
        let c = cache(true, 1 << 20);
        c.insert(c.ticket(), "k".into(), Scope::Article, value("v"));
        c.suspend();
        assert!(c.get("k").is_none());
        assert!(c.get_stale("k").is_some());
        c.insert(c.ticket(), "j".into(), Scope::Article, value("v"));
        assert!(
            c.get_stale("j").is_none(),
            "nothing stored while incoherent"
        );
        c.resume();
        assert!(c.is_empty());
    }

    #[test]
    fn compressed_copies_are_made_once_and_only_when_they_pay() {
        let big = value(&"<p>hello</p>".repeat(100));
        let first = big.encoded(Encoding::Brotli).expect("compressed");
        let again = big.encoded(Encoding::Brotli).expect("compressed");
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "the same bytes, not a second compression"
        );
        assert!(big.encoded(Encoding::Gzip).is_some());
        assert!(value("tiny").encoded(Encoding::Gzip).is_none());
    }

    #[test]
    fn compressed_copies_are_counted_when_made() {
        let c = cache(true, 1 << 20);
        let v = value(&"<p>hello</p>".repeat(100));
        c.insert(c.ticket(), "k".into(), Scope::Article, v.clone());
        let before = c.bytes();
        let made = v.prepare(Encoding::Gzip);
        assert!(made > 0);
        assert_eq!(v.prepare(Encoding::Gzip), 0, "made once");
        c.charge("k", &v, made);
        assert_eq!(c.bytes(), before + made);
        // Another value under the same key is not charged.
        c.charge("k", &value("other"), 100);
        assert_eq!(c.bytes(), before + made);
    }

    #[test]
    fn a_charge_beyond_the_bound_evicts() {
        let body = "<p>hello</p>".repeat(100);
        let c = cache(true, 2 * 1600);
        let a = value(&body);
        let b = value(&body);
        c.insert(c.ticket(), "a".into(), Scope::Article, a.clone());
        c.insert(c.ticket(), "b".into(), Scope::Article, b.clone());
        assert_eq!(c.len(), 2);
        let made = b.prepare(Encoding::Brotli) + b.prepare(Encoding::Gzip);
        c.charge("b", &b, made + 500);
        assert!(c.bytes() <= 2 * 1600);
        assert!(c.get("a").is_none(), "the least recently used went");
        assert!(c.get("b").is_some());
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let c = cache(false, 1 << 20);
        c.insert(c.ticket(), "k".into(), Scope::Article, value("v"));
        assert!(!c.enabled());
        assert!(c.get("k").is_none());
    }
}
