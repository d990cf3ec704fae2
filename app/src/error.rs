//! Errors that reach a client, rendered as RFC 9457 `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::db::DbError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not well-formed JSON: {0}")]
    MalformedJson(String),
    #[error("the request body is not valid UTF-8")]
    InvalidUtf8,
    #[error("the request body does not match the expected schema: {0}")]
    SchemaMismatch(String),
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("invalid slug: use 1-100 lowercase letters, digits and single hyphens")]
    InvalidSlug,
    #[error("invalid query parameter: {0}")]
    InvalidQuery(String),
    #[error("this request needs a valid bearer token")]
    Unauthorized,
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("an article with this slug already exists")]
    SlugTaken,
    #[error("the article is already published")]
    AlreadyPublished,
    #[error("If-Match is required: fetch the article and send its ETag")]
    PreconditionRequired,
    #[error("the article changed since the ETag given in If-Match")]
    PreconditionFailed,
    #[error("the database is unavailable")]
    DatabaseUnavailable(#[source] DbError),
    #[error("the request took longer than the configured limit")]
    Timeout,
    #[error("the server is at capacity")]
    Overloaded,
    #[error("the server is starting: the database schema is not ready yet")]
    NotReady,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
            InvalidUtf8 => (StatusCode::BAD_REQUEST, "invalid-utf8", "Invalid UTF-8"),
            SchemaMismatch(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "schema-mismatch",
                "Body does not match schema",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "Validation failed",
            ),
            InvalidSlug => (StatusCode::BAD_REQUEST, "invalid-slug", "Invalid slug"),
            InvalidQuery(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "Invalid query parameter",
            ),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            SlugTaken => (StatusCode::CONFLICT, "slug-taken", "Slug already taken"),
            AlreadyPublished => (
                StatusCode::CONFLICT,
                "already-published",
                "Already published",
            ),
            PreconditionRequired => (
                StatusCode::PRECONDITION_REQUIRED,
                "precondition-required",
                "Precondition required",
            ),
            PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            DatabaseUnavailable(e) if e.is_failover() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database-failing-over",
                "Database failing over",
            ),
            DatabaseUnavailable(DbError::TooStale(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "replica-too-stale",
                "Database unavailable, replica too stale",
            ),
            DatabaseUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database-unavailable",
                "Database unavailable",
            ),
            Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "request-timeout",
                "Request timed out",
            ),
            Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Server overloaded",
            ),
            NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready"),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Other(inner) => ApiError::Internal(inner.to_string()),
            e => ApiError::DatabaseUnavailable(e),
        }
    }
}

/// Attached to every error response, so the reader's pages can render the same error as
/// HTML (see `middleware::html_errors`).
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// The problem type (`urn:articles:problem:...`), which the HTML page keeps too, so
    /// that a monitor or a load test can tell which part of the server answered.
    pub kind: String,
    pub title: &'static str,
    pub detail: String,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        match &self {
            // Internal details go to the log only.
            ApiError::Internal(why) => tracing::error!(error = %why, "internal error"),
            ApiError::DatabaseUnavailable(why) => {
                tracing::warn!(error = %why, "database unavailable")
            }
            _ => {}
        }
        let detail = match &self {
            ApiError::Internal(_) => "the server failed to handle the request".to_owned(),
            ApiError::DatabaseUnavailable(e) if e.is_failover() => {
                "the database is failing over to a new primary: nothing was written, retry shortly"
                    .to_owned()
            }
            ApiError::DatabaseUnavailable(e @ DbError::TooStale(_)) => format!(
                "the database primary is unreachable and the read replica is too far behind to answer: {e}"
            ),
            other => other.to_string(),
        };
        let errors = match &self {
            ApiError::Validation(list) => Some(list.as_slice()),
            _ => None,
        };
        let body = ProblemBody {
            kind: format!("urn:articles:problem:{code}"),
            title,
            status: status.as_u16(),
            detail,
            errors,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let problem = Problem {
            status,
            kind: body.kind,
            title,
            detail: body.detail,
        };
        let mut res = (status, bytes).into_response();
        res.extensions_mut().insert(problem);
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_sets_retry_after_and_problem_type() {
        let res = ApiError::Overloaded.into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        assert_eq!(res.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn a_failover_is_a_503_that_says_so() {
        let res = ApiError::from(DbError::NotPrimary).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let problem = res.extensions().get::<Problem>().expect("problem");
        assert!(
            problem.detail.contains("failing over"),
            "{}",
            problem.detail
        );
        assert_eq!(problem.title, "Database failing over");
    }

    #[test]
    fn unauthorized_challenges_for_bearer() {
        let res = ApiError::Unauthorized.into_response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
