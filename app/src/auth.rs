//! Write authorization: `Authorization: Bearer <token>`, compared in constant time.

use std::sync::Arc;

use crate::error::ApiError;
use crate::state::AppState;
use crate::token::TokenDigest;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, header, request::Parts};

/// What the request says about its bearer token.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    None,
    Valid,
    Invalid,
}

pub fn credentials(headers: &HeaderMap, expected: &TokenDigest) -> Credentials {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let token = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match token {
        Some(t) if expected.matches(t) => Credentials::Valid,
        _ => Credentials::Invalid,
    }
}

/// Extractor for handlers that write: rejects with 401 before the body is read.
pub struct WriteAuth;

impl FromRequestParts<Arc<AppState>> for WriteAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match credentials(&parts.headers, &state.token) {
            Credentials::Valid => Ok(WriteAuth),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(v).expect("valid"),
        );
        h
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let d = TokenDigest::new("secret-secret-secret-secret-secret");
        assert_eq!(credentials(&HeaderMap::new(), &d), Credentials::None);
        assert_eq!(
            credentials(&with_auth("Bearer secret-secret-secret-secret-secret"), &d),
            Credentials::Valid
        );
        assert_eq!(
            credentials(&with_auth("bearer secret-secret-secret-secret-secret"), &d),
            Credentials::Valid
        );
        assert_eq!(
            credentials(&with_auth("Bearer secret"), &d),
            Credentials::Invalid
        );
        assert_eq!(
            credentials(&with_auth("Basic secret-secret-secret-secret-secret"), &d),
            Credentials::Invalid
        );
        assert_eq!(
            credentials(&with_auth("secret-secret-secret-secret-secret"), &d),
            Credentials::Invalid
        );
    }
}
