//! The reader's HTML pages, rendered on the server and cached.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::{DEFAULT_PAGE, ListParams, cached_response, published_article};
use crate::cache::{Cached, Scope, page_article_key};
use crate::db::articles;
use crate::error::ApiError;
use crate::http::body_etag;
use crate::render::{self, IndexFilter};
use crate::state::AppState;
use crate::validate::is_valid_slug;

use crate::render::HTML;

fn html(mut body: String) -> Cached {
    // The cache counts the length: hold no more than that.
    body.shrink_to_fit();
    let etag = body_etag(body.as_bytes());
    Cached::new(body, etag, HTML)
}

pub async fn index(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(mut params) = params.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    params.limit = Some(DEFAULT_PAGE.to_string());
    let query = params.to_query()?;
    let key = ListParams::cache_key("page:index", &query);
    cached_response(&state, key, Scope::List, &headers, async || {
        let listed = state
            .read(async |c| articles::list_published(c, &query).await)
            .await?;
        let filter = IndexFilter {
            tag: query.tag.as_deref(),
            search: query.search.as_deref(),
        };
        listed.try_map(|(items, next)| {
            let page = render::index_page(state.site(), &items, next, &filter)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(html(page))
        })
    })
    .await
}

pub async fn article(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let slug = match path {
        Ok(Path(slug)) if is_valid_slug(&slug) => slug,
        _ => return Err(ApiError::NotFound),
    };
    let key = page_article_key(&slug);
    cached_response(&state, key, Scope::Article, &headers, async || {
        published_article(&state, &slug).await?.try_map(|a| {
            let page = render::article_page(state.site(), &a)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(html(page))
        })
    })
    .await
}
