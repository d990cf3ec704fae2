//! The Atom feed of the newest published articles.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{DEFAULT_PAGE, cached_response};
use crate::cache::{Cached, Scope};
use crate::db::articles::{self, ListQuery};
use crate::error::ApiError;
use crate::http::body_etag;
use crate::render;
use crate::state::AppState;

pub async fn atom(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    cached_response(
        &state,
        "feed".to_owned(),
        Scope::List,
        &headers,
        async || {
            let query = ListQuery {
                limit: DEFAULT_PAGE,
                ..ListQuery::default()
            };
            let listed = state
                .read(async |c| articles::list_published(c, &query).await)
                .await?;
            listed.try_map(|(items, _)| {
                let xml = render::atom_feed(state.site(), &items)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                let etag = body_etag(xml.as_bytes());
                Ok(Cached::new(
                    xml,
                    etag,
                    "application/atom+xml; charset=utf-8",
                ))
            })
        },
    )
    .await
}
