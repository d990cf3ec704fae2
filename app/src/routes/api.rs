//! The JSON API under `/api/v1`. Reads are public and cached; writes need the bearer token
//! and clear this replica's cache.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{ListParams, cached_response, published_article};
use crate::auth::{Credentials, WriteAuth, credentials};
use crate::cache::{Cached, Scope, api_article_key};
use crate::db::articles::{self, Article, Precondition, RepoError};
use crate::error::ApiError;
use crate::extract::{JsonBody, OptionalJsonBody};
use crate::http::{
    CACHE_NONE, CACHE_PRIVATE, Freshness, article_etag, body_etag, conditional, if_match,
};
use crate::render;
use crate::state::AppState;
use crate::validate::{CreateArticle, PublishArticle, UpdateArticle, is_valid_slug};

const JSON: &str = "application/json";

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound => ApiError::NotFound,
            RepoError::SlugTaken => ApiError::SlugTaken,
            RepoError::PreconditionFailed => ApiError::PreconditionFailed,
            RepoError::AlreadyPublished => ApiError::AlreadyPublished,
            RepoError::Db(e) => e.into(),
        }
    }
}

/// A list entry: everything but the body.
#[derive(Serialize)]
struct Summary<'a> {
    id: i64,
    slug: &'a str,
    title: &'a str,
    summary: &'a str,
    tags: &'a [String],
    published_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Page<'a> {
    items: Vec<Summary<'a>>,
    next_cursor: Option<String>,
}

fn slug_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match path {
        Ok(Path(slug)) if is_valid_slug(&slug) => Ok(slug),
        _ => Err(ApiError::InvalidSlug),
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    let mut body = serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))?;
    // Cached bodies: the cache counts the length, so hold no more than that.
    body.shrink_to_fit();
    Ok(body)
}

fn article_json(a: &Article) -> Result<Cached, ApiError> {
    Ok(Cached::new(to_json(a)?, article_etag(a), JSON))
}

/// The response to a write: the article as stored now, with its new ETag.
fn written(status: StatusCode, a: &Article) -> Result<Response, ApiError> {
    let mut res = (status, to_json(a)?).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_NONE));
    if let Ok(v) = HeaderValue::from_str(&article_etag(a)) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED
        && let Ok(v) = HeaderValue::from_str(&format!("/api/v1/articles/{}", a.slug))
    {
        h.insert(header::LOCATION, v);
    }
    Ok(res)
}

fn precondition(headers: &HeaderMap, required: bool) -> Result<Precondition, ApiError> {
    match if_match(headers) {
        Precondition::None if required => Err(ApiError::PreconditionRequired),
        p => Ok(p),
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let query = params.to_query()?;
    let key = ListParams::cache_key("api:list", &query);
    cached_response(&state, key, Scope::List, &headers, async || {
        let listed = state
            .read(async |c| articles::list_published(c, &query).await)
            .await?;
        listed.try_map(|(items, next)| {
            let page = Page {
                items: items
                    .iter()
                    .map(|a| Summary {
                        id: a.id,
                        slug: &a.slug,
                        title: &a.title,
                        summary: &a.summary,
                        tags: &a.tags,
                        published_at: a.published_at,
                        updated_at: a.updated_at,
                    })
                    .collect(),
                next_cursor: next.map(|c| c.encode()),
            };
            let body = to_json(&page)?;
            let etag = body_etag(&body);
            Ok(Cached::new(body, etag, JSON))
        })
    })
    .await
}

/// Anyone gets a published article; the token holder also gets drafts and scheduled ones.
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let slug = slug_of(path)?;
    match credentials(&headers, &state.token) {
        Credentials::Invalid => Err(ApiError::Unauthorized),
        Credentials::Valid => {
            let found = state
                .read(async |c| articles::get_by_slug(c, &slug).await)
                .await?;
            let a = found.value.ok_or(ApiError::NotFound)?;
            let freshness = match found.replica {
                Some(staleness) => Freshness::Replica { staleness },
                None => Freshness::Uncached,
            };
            Ok(conditional(
                &headers,
                &article_json(&a)?,
                CACHE_PRIVATE,
                freshness,
            ))
        }
        Credentials::None => {
            let key = api_article_key(&slug);
            cached_response(&state, key, Scope::Article, &headers, async || {
                published_article(&state, &slug)
                    .await?
                    .try_map(|a| article_json(&a))
            })
            .await
        }
    }
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    _auth: WriteAuth,
    JsonBody(input): JsonBody<CreateArticle>,
) -> Result<Response, ApiError> {
    let new = input.validate().map_err(ApiError::Validation)?;
    let rendered = render::render_body(&new.body);
    let a = state
        .write(async |c| articles::create(c, &new, &rendered).await)
        .await?;
    // A draft is in no public response: nothing cached changes.

    written(StatusCode::CREATED, &a)
}

/// Needs `If-Match` (428 without), so a client cannot overwrite an edit it has not seen.
pub async fn update(
    State(state): State<Arc<AppState>>,
    _auth: WriteAuth,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    JsonBody(input): JsonBody<UpdateArticle>,
) -> Result<Response, ApiError> {
    let slug = slug_of(path)?;
    let pre = precondition(&headers, true)?;
    let patch = input.validate().map_err(ApiError::Validation)?;
    let rendered = patch.body.as_deref().map(render::render_body);
    let a = state
        .write(async |c| articles::update(c, &slug, &pre, &patch, rendered.as_ref()).await)
        .await?;
    // This replica sees its own write at once; the others through the notification.
    state.cache.invalidate_article(&slug);
    written(StatusCode::OK, &a)
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    _auth: WriteAuth,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let slug = slug_of(path)?;
    let pre = precondition(&headers, false)?;
    state
        .write(async |c| articles::delete(c, &slug, &pre).await)
        .await?;
    // This replica sees its own write at once; the others through the notification.
    state.cache.invalidate_article(&slug);
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_NONE));
    Ok(res)
}

/// Publishes now, or at `{"at": "<RFC 3339 time>"}` through the job queue.
pub async fn publish(
    State(state): State<Arc<AppState>>,
    _auth: WriteAuth,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    OptionalJsonBody(input): OptionalJsonBody<PublishArticle>,
) -> Result<Response, ApiError> {
    let slug = slug_of(path)?;
    let pre = precondition(&headers, false)?;
    let a = state
        .write(async |c| articles::publish(c, &slug, &pre, input.at()).await)
        .await?;
    // This replica sees its own write at once; the others through the notification.
    state.cache.invalidate_article(&slug);
    written(StatusCode::OK, &a)
}
