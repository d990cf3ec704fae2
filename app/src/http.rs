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

/// The strong ETag of one article version.
pub fn article_etag(a: &Article) -> String {
    a.etag()
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
            tags.push(tag.to_owned());
        }
    }
    if present {
        Precondition::Tags(tags)
    } else {
        Precondition::None
    }
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
    fn body_etag_is_stable_and_content_sensitive() {
        assert_eq!(body_etag(b"abc"), body_etag(b"abc"));
        assert_ne!(body_etag(b"abc"), body_etag(b"abd"));
        assert!(body_etag(b"abc").starts_with("\"h"));
    }
}
