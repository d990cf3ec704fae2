//! HTTP validators and conditional requests (RFC 9110 §13): ETags, `If-None-Match`,
//! `If-Match`, and the `Cache-Control` values the server uses.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use std::time::Duration;

use crate::cache::Cached;
use crate::compress::{self, Encoding};
use crate::db::articles::{Article, Precondition};
use crate::db::failover::Staleness;

/// Public reads: any cache may store them but must revalidate (cheap, thanks to 304),
/// so an edit is visible at once to a client that asks again.
pub const CACHE_PUBLIC: &str = "public, max-age=0, must-revalidate";
/// Drafts seen with the write token, and write responses.
pub const CACHE_PRIVATE: &str = "private, no-store";
pub const CACHE_NONE: &str = "no-store";

/// Served fresh from the cache or the database, or stale because the database is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Hit,
    Miss,
    /// Not cacheable (drafts seen with the token, or the cache is off).
    Uncached,
    Stale {
        age: Duration,
    },
    /// Read from the replica because the primary failed: never cached, and marked.
    Replica {
        staleness: Staleness,
    },
}

/// Marks an answer read from a replica during a failover: `X-Served-From: replica`.
pub const SERVED_FROM: &str = "x-served-from";
/// With it, the bound on how old the answer may be, in seconds.
pub const REPLICA_STALENESS: &str = "x-replica-staleness-seconds";

/// How long a client or proxy may itself keep using a stale copy when we fail.
const STALE_IF_ERROR: &str = "public, max-age=0, stale-if-error=3600";

/// The strong ETag of one article version.
pub fn article_etag(a: &Article) -> String {
    a.etag()
}

/// The strong ETag of a rendered body.
pub fn body_etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"h{}\"", hex::encode(&digest[..12]))
}

fn opaque_tags(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// The ETag of `base`'s representation in `encoding`: `"h1a2b"` becomes `"h1a2b-br"`.
pub fn encoded_etag(base: &str, encoding: Encoding) -> String {
    let suffix = encoding.etag_suffix();
    match base.strip_suffix('"') {
        Some(open) if !suffix.is_empty() => format!("{open}{suffix}\""),
        _ => base.to_owned(),
    }
}

/// The tag of the unencoded representation an (encoded) ETag names.
fn base_tag(tag: &str) -> String {
    for enc in [Encoding::Gzip, Encoding::Brotli] {
        let end = format!("{}\"", enc.etag_suffix());
        if let Some(open) = tag.strip_suffix(&end) {
            return format!("{open}\"");
        }
    }
    tag.to_owned()
}

/// `If-None-Match` uses the weak comparison: `W/"x"` matches `"x"`, and a tag of any
/// encoding of the same body matches (the client holds a valid copy either way).
pub fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(opaque_tags)
        .any(|t| t == "*" || base_tag(t.strip_prefix("W/").unwrap_or(t)) == etag)
}

/// Reads `If-Match`. The tags are kept as sent and later compared character for
/// character with the current ETag (the strong comparison of RFC 9110 §8.8.3.2): a weak
/// tag, or one that merely parses to the same numbers (`"a07.3"`), never matches.
pub fn if_match(headers: &HeaderMap) -> Precondition {
    let mut tags = Vec::new();
    let mut present = false;
    for value in headers.get_all(header::IF_MATCH) {
        present = true;
        let Ok(value) = value.to_str() else { continue };
        for tag in opaque_tags(value) {
            if tag == "*" {
                return Precondition::Exists;
            }
            // Each encoding's tag names the same version: compare its base.
            tags.push(base_tag(tag));
        }
    }
    if present {
        Precondition::Tags(tags)
    } else {
        Precondition::None
    }
}

/// A 200 with the body in the best encoding the client accepts (compressed once per
/// cached body), or a 304 if it already has it. Stale answers say so (`Age`, `X-Cache: stale`, `stale-if-error`).
pub fn conditional(
    req_headers: &HeaderMap,
    cached: &Cached,
    cache_control: &'static str,
    freshness: Freshness,
) -> Response {
    let wanted = compress::negotiate(req_headers);
    let (body, encoding) = match cached.encoded(wanted) {
        Some(b) => (b, wanted),
        None => (cached.body.clone(), Encoding::Identity),
    };
    let mut res = if none_match(req_headers, &cached.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(cached.content_type),
        );
        if let Some(ce) = encoding.header_value() {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(ce));
        }
        r
    };
    let h = res.headers_mut();
    if let Some(v) = cached.etag_header(encoding) {
        h.insert(header::ETAG, v.clone());
    }
    // A 304 repeats the 200's Vary (RFC 9110 §15.4.5).
    h.insert(
        header::VARY,
        HeaderValue::from_static("Authorization, Accept-Encoding"),
    );
    let (control, x_cache) = match freshness {
        Freshness::Hit => (cache_control, "hit"),
        Freshness::Miss => (cache_control, "miss"),
        Freshness::Uncached => (cache_control, "bypass"),
        Freshness::Stale { age } => {
            h.insert(header::AGE, HeaderValue::from(age.as_secs()));
            (STALE_IF_ERROR, "stale")
        }
        Freshness::Replica { staleness } => {
            h.insert(SERVED_FROM, HeaderValue::from_static("replica"));
            let secs = staleness.lag().unwrap_or_default().as_secs_f64();
            if let Ok(v) = HeaderValue::from_str(&format!("{secs:.1}")) {
                h.insert(REPLICA_STALENESS, v);
            }
            (cache_control, "bypass")
        }
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(control));
    h.insert("x-cache", HeaderValue::from_static(x_cache));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).expect("valid header"));
        h
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        let etag = "\"h123\"";
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, "\"h123\""),
            etag
        ));
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, "W/\"h123\""),
            etag
        ));
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, "\"x\", \"h123\""),
            etag
        ));
        assert!(none_match(&headers(header::IF_NONE_MATCH, "*"), etag));
        assert!(!none_match(
            &headers(header::IF_NONE_MATCH, "\"h124\""),
            etag
        ));
        assert!(!none_match(&HeaderMap::new(), etag));
    }

    #[test]
    fn if_match_keeps_tags_as_sent() {
        assert_eq!(if_match(&HeaderMap::new()), Precondition::None);
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "\"a7.3\", W/\"a7.3\"")),
            Precondition::Tags(vec!["\"a7.3\"".into(), "W/\"a7.3\"".into()])
        );
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "*")),
            Precondition::Exists
        );
    }

    #[test]
    fn encoded_tags_name_their_base() {
        assert_eq!(encoded_etag("\"h1\"", Encoding::Brotli), "\"h1-br\"");
        assert_eq!(encoded_etag("\"h1\"", Encoding::Identity), "\"h1\"");
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, "\"h1-gz\""),
            "\"h1\""
        ));
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "\"a7.3-br\"")),
            Precondition::Tags(vec!["\"a7.3\"".into()])
        );
    }

    #[test]
    fn body_etag_is_stable_and_content_sensitive() {
        assert_eq!(body_etag(b"abc"), body_etag(b"abc"));
        assert_ne!(body_etag(b"abc"), body_etag(b"abd"));
        assert!(body_etag(b"abc").starts_with("\"h"));
    }
}
