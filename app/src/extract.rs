//! A JSON body extractor whose every rejection is a specific problem response: 415 for a
//! wrong media type, 413 over the size limit, 400 for invalid UTF-8 or malformed JSON,
//! 422 for wrong types, missing or unknown fields.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

pub struct JsonBody<T>(pub T);

/// Like [`JsonBody`], but an empty body gives `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn read_body(req: Request, state: &Arc<AppState>) -> Result<(HeaderMap, Bytes), ApiError> {
    let headers = req.headers().clone();
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.config.max_body_bytes,
            }
        } else {
            ApiError::MalformedJson(rejection.body_text())
        }
    })?;
    Ok((headers, bytes))
}

/// Parses a JSON document, telling syntax errors (400) from schema errors (422).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::InvalidUtf8);
    }
    let value = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::SchemaMismatch(e.to_string()),
        _ => ApiError::MalformedJson(e.to_string()),
    })?;
    // serde's derived structs also accept a positional array (`["slug", "title", ...]`):
    // only an object with named fields is a valid body.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::SchemaMismatch(
            "expected a JSON object with named fields".into(),
        ));
    }
    Ok(value)
}

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let (_, bytes) = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<Arc<AppState>> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        if !is_json(&headers) {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::CreateArticle;

    #[test]
    fn json_errors_are_classified() {
        let e = parse_json::<CreateArticle>(b"{\"slug\": ").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = parse_json::<CreateArticle>(b"{\"slug\": 5, \"title\": \"t\", \"body\": \"b\"}")
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let e =
            parse_json::<CreateArticle>(b"{\"slug\":\"a\",\"title\":\"t\",\"body\":\"b\",\"x\":1}")
                .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = parse_json::<CreateArticle>(b" [\"a\", \"t\", \"\", \"b\", []]").unwrap_err();
        assert!(matches!(e, ApiError::SchemaMismatch(_)), "{e}");
        let e = parse_json::<CreateArticle>(b"{\"slug\":\"\xff\"}").unwrap_err();
        assert!(matches!(e, ApiError::InvalidUtf8));
    }

    #[test]
    fn media_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().expect("valid"),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/merge-patch+json".parse().expect("valid"),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().expect("valid"));
        assert!(!is_json(&h));
    }
}
