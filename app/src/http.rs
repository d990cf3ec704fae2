//! HTTP validators and conditional requests (RFC 9110 §13): ETags, `If-None-Match`,
//! `If-Match`, and the `Cache-Control` values the server uses.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::cache::Cached;
use crate::db::articles::{Article, Precondition};

/// Public reads: any cache may store them but must revalidate (cheap, thanks to 304),
/// so an edit is visible at once to a client that asks again.
pub const CACHE_PUBLIC: &str = "public, max-age=0, must-revalidate";
/// Drafts seen with the write token, and write responses.
pub const CACHE_PRIVATE: &str = "private, no-store";
pub const CACHE_NONE: &str = "no-store";

/// The strong ETag of one article version. The id makes a deleted-and-recreated slug's
/// ETags differ.
pub fn article_etag(a: &Article) -> String {
    format!("\"a{}.{}\"", a.id, a.version)
}

/// The strong ETag of a rendered body.
pub fn body_etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("\"h{hex}\"")
}

fn opaque_tags(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// `If-None-Match` uses the weak comparison: `W/"x"` matches `"x"`.
pub fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(opaque_tags)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

#[derive(Debug, PartialEq, Eq)]
pub enum IfMatch {
    Absent,
    Expect(Precondition),
    /// Present but names no version of any article (weak or malformed tags): cannot match.
    NeverMatches,
}

/// Reads `If-Match` (strong comparison only: weak tags never match).
pub fn if_match(headers: &HeaderMap) -> IfMatch {
    let mut present = false;
    for value in headers.get_all(header::IF_MATCH) {
        present = true;
        let Ok(value) = value.to_str() else { continue };
        for tag in opaque_tags(value) {
            if tag == "*" {
                return IfMatch::Expect(Precondition::Any);
            }
            if let Some((id, version)) = parse_article_etag(tag) {
                return IfMatch::Expect(Precondition::Exact { id, version });
            }
        }
    }
    if present {
        IfMatch::NeverMatches
    } else {
        IfMatch::Absent
    }
}

fn parse_article_etag(tag: &str) -> Option<(i64, i64)> {
    let inner = tag.strip_prefix("\"a")?.strip_suffix('"')?;
    let (id, version) = inner.split_once('.')?;
    Some((id.parse().ok()?, version.parse().ok()?))
}

/// A 200 with the body, or a 304 if the client already has it.
pub fn conditional(
    req_headers: &HeaderMap,
    cached: &Cached,
    cache_control: &'static str,
) -> Response {
    let mut res = if none_match(req_headers, &cached.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = cached.body.clone().into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(cached.content_type),
        );
        r
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&cached.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    h.insert(header::VARY, HeaderValue::from_static("Authorization"));
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
    fn if_match_parses_article_tags_and_rejects_weak_ones() {
        assert_eq!(if_match(&HeaderMap::new()), IfMatch::Absent);
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "\"a7.3\"")),
            IfMatch::Expect(Precondition::Exact { id: 7, version: 3 })
        );
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "*")),
            IfMatch::Expect(Precondition::Any)
        );
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "W/\"a7.3\"")),
            IfMatch::NeverMatches
        );
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "garbage")),
            IfMatch::NeverMatches
        );
    }

    #[test]
    fn body_etag_is_stable_and_content_sensitive() {
        assert_eq!(body_etag(b"abc"), body_etag(b"abc"));
        assert_ne!(body_etag(b"abc"), body_etag(b"abd"));
        assert!(body_etag(b"abc").starts_with("\"h"));
    }
}
