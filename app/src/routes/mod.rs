//! The router: reader pages, the JSON API, the feed, and the probes and metrics.

pub mod api;
pub mod feed;
pub mod health;
pub mod metrics;
pub mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::cache::{Cached, Scope};
use crate::compress;
use crate::db::articles::{self, Article, Cursor, ListQuery};
use crate::db::failover::Sourced;
use crate::error::ApiError;
use crate::http::{CACHE_PUBLIC, Freshness, conditional};
use crate::middleware;
use crate::state::AppState;
use crate::validate::{check_search, is_valid_tag};

pub fn router(state: Arc<AppState>) -> Router {
    let site = Router::new()
        .route("/", get(pages::index))
        .route("/articles/{slug}", get(pages::article))
        .route("/feed.xml", get(feed::atom))
        .route("/api/v1/articles", get(api::list).post(api::create))
        .route(
            "/api/v1/articles/{slug}",
            get(api::get).patch(api::update).delete(api::delete),
        )
        .route("/api/v1/articles/{slug}/publish", post(api::publish))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // Probes and metrics are neither shed nor queued behind site traffic (the guard lets
    // their paths through).
    let ops = Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics));
    // One layer stack for every route: `Router::layer` wraps each route in a boxed service
    // that is cloned, with everything below it, on every request, so each extra
    // `.layer(...)` costs every request allocations (see `middleware`).
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(middleware::ObserveLayer::new(state.clone()))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(middleware::GuardLayer::new(state.clone()))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .into_inner();
    site.merge(ops).layer(stack).with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Serves `key` from the cache, or builds it (reading the database), caches it and serves
/// it; either way as a 200 or a 304. The fallbacks while the primary fails, in order: the
/// read replica within its staleness bound (served, marked, never cached: nothing
/// confirmed it against the primary), then an entry still held, served stale, then 503.
///
/// `build` is called only on a miss, and its future is boxed: it holds the database call
/// and is many times larger than the rest of the handler, which would otherwise be moved
/// and allocated at that size for every hit too.
pub async fn cached_response(
    state: &AppState,
    key: String,
    scope: Scope,
    req_headers: &HeaderMap,
    build: impl AsyncFnOnce() -> Result<Sourced<Cached>, ApiError>,
) -> Result<Response, ApiError> {
    if let Some(hit) = state.cache.get(&key) {
        state.metrics.cache_hits.inc();
        // The first request for an encoding compresses the body; the cache counts it.
        let made = hit.prepare(compress::negotiate(req_headers));
        if made > 0 {
            state.cache.charge(&key, &hit, made);
        }
        return Ok(conditional(req_headers, &hit, CACHE_PUBLIC, Freshness::Hit));
    }
    let caching = state.cache.enabled() && state.cache.coherent();
    if state.cache.enabled() {
        state.metrics.cache_misses.inc();
    }
    let ticket = state.cache.ticket();
    match Box::pin(build()).await {
        Ok(Sourced {
            value,
            replica: Some(staleness),
        }) => Ok(conditional(
            req_headers,
            &value,
            CACHE_PUBLIC,
            Freshness::Replica { staleness },
        )),
        Ok(Sourced { value: built, .. }) if caching => {
            let built = Arc::new(built);
            let res = conditional(req_headers, &built, CACHE_PUBLIC, Freshness::Miss);
            state.cache.insert(ticket, key, scope, built);
            Ok(res)
        }
        Ok(Sourced { value: built, .. }) => Ok(conditional(
            req_headers,
            &built,
            CACHE_PUBLIC,
            Freshness::Uncached,
        )),
        Err(ApiError::DatabaseUnavailable(e)) => match state.cache.get_stale(&key) {
            Some(stale) => {
                state.metrics.cache_stale.inc();
                Ok(conditional(
                    req_headers,
                    &stale.value,
                    CACHE_PUBLIC,
                    Freshness::Stale { age: stale.age },
                ))
            }
            None => Err(ApiError::DatabaseUnavailable(e)),
        },
        Err(e) => Err(e),
    }
}

/// A published article by slug (one indexed read, through the breaker, from a replica if
/// the primary fails), or 404.
pub async fn published_article(state: &AppState, slug: &str) -> Result<Sourced<Article>, ApiError> {
    let found = state
        .read(async |c| articles::get_by_slug(c, slug).await)
        .await?;
    match found.value {
        Some(a) if a.is_published() => Ok(Sourced {
            value: a,
            replica: found.replica,
        }),
        _ => Err(ApiError::NotFound),
    }
}

/// List parameters shared by the API list and the index page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListParams {
    pub cursor: Option<String>,
    pub limit: Option<String>,
    pub tag: Option<String>,
    pub q: Option<String>,
}

pub const DEFAULT_PAGE: i64 = 20;
pub const MAX_PAGE: i64 = 100;

impl ListParams {
    pub fn to_query(&self) -> Result<ListQuery, ApiError> {
        let cursor = match self.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                Cursor::decode(c)
                    .ok_or_else(|| ApiError::InvalidQuery("cursor is not valid".into()))?,
            ),
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::InvalidQuery(format!(
                        "limit must be a whole number from 1 to {MAX_PAGE}"
                    ))
                })?,
        };
        let tag = match self.tag.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(t) if is_valid_tag(t) => Some(t.to_owned()),
            Some(_) => {
                return Err(ApiError::InvalidQuery(
                    "tag must be lowercase letters, digits and hyphens".into(),
                ));
            }
        };
        let search = match self.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            None => None,
            Some(q) => {
                check_search(q).map_err(ApiError::InvalidQuery)?;
                Some(q.to_owned())
            }
        };
        Ok(ListQuery {
            cursor,
            tag,
            search,
            limit,
        })
    }

    /// A cache key that is the same for equivalent queries.
    pub fn cache_key(prefix: &str, q: &ListQuery) -> String {
        format!(
            "{prefix}|{}|{}|{}|{}",
            q.cursor.map(|c| c.encode()).unwrap_or_default(),
            q.limit,
            q.tag.as_deref().unwrap_or(""),
            q.search.as_deref().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        cursor: Option<&str>,
        limit: Option<&str>,
        tag: Option<&str>,
        q: Option<&str>,
    ) -> ListParams {
        ListParams {
            cursor: cursor.map(Into::into),
            limit: limit.map(Into::into),
            tag: tag.map(Into::into),
            q: q.map(Into::into),
        }
    }

    #[test]
    fn list_params_validate() {
        let q = params(None, None, None, Some("  rust  "))
            .to_query()
            .expect("valid");
        assert_eq!(q.limit, DEFAULT_PAGE);
        assert_eq!(q.search.as_deref(), Some("rust"));
        for bad in [
            params(Some("nope"), None, None, None),
            params(None, Some("0"), None, None),
            params(None, Some("101"), None, None),
            params(None, Some("ten"), None, None),
            params(None, None, Some("Bad Tag"), None),
            params(None, None, None, Some("a\0b")),
        ] {
            assert!(bad.to_query().is_err(), "{bad:?}");
        }
    }
}
