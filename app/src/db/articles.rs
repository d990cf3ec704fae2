//! Article storage. Every query path here has an index; `tests/it/explain.rs` checks the
//! plans of the `*_SQL` constants at 10,000 articles.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection};

use super::DbError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Article {
    pub id: i64,
    pub slug: String,
    pub title: String,
    pub summary: String,
    pub body: String,
    pub tags: Vec<String>,
    pub status: String,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub published_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    /// The body rendered to sanitised HTML when it was written (see `render`).
    #[serde(skip)]
    pub body_html: String,
    /// The renderer version that produced `body_html`; 0 means not rendered yet.
    #[serde(skip)]
    pub render_version: i32,
}

impl Article {
    pub fn is_published(&self) -> bool {
        self.status == STATUS_PUBLISHED
    }

    /// The strong ETag of this version. The id makes a deleted-and-recreated slug's ETags
    /// differ.
    pub fn etag(&self) -> String {
        format!("\"a{}.{}\"", self.id, self.version)
    }
}

pub const STATUS_PUBLISHED: &str = "published";

/// The columns of [`Article`], in one place for every statement.
macro_rules! columns {
    () => {
        "id, slug, title, summary, body, tags, status, scheduled_at, published_at, created_at, updated_at, version, body_html, render_version"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("not found")]
    NotFound,
    #[error("slug taken")]
    SlugTaken,
    #[error("version mismatch")]
    PreconditionFailed,
    #[error("already published")]
    AlreadyPublished,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl super::Outage for RepoError {
    fn db_error(&self) -> Option<&DbError> {
        match self {
            RepoError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for RepoError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.constraint() == Some("articles_slug_key")
        {
            return RepoError::SlugTaken;
        }
        RepoError::Db(DbError::from(e))
    }
}

/// 9999-12-31T23:59:59.999999Z: the latest time a cursor may carry.
const MAX_CURSOR_MICROS: i64 = 253_402_300_799_999_999;

/// Position after the last item of a page: newest first by (published_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub published_at: DateTime<Utc>,
    pub id: i64,
}

impl Cursor {
    /// Before every article: the start of the first page.
    fn start() -> (DateTime<Utc>, i64) {
        (DateTime::<Utc>::MAX_UTC, i64::MAX)
    }

    pub fn encode(&self) -> String {
        format!("{}_{}", self.published_at.timestamp_micros(), self.id)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let (micros, id) = s.split_once('_')?;
        let micros: i64 = micros.parse().ok()?;
        let id: i64 = id.parse().ok()?;
        // Beyond these bounds PostgreSQL cannot store the time (and no article has it):
        // refuse here rather than fail in the query.
        if id <= 0 || !(0..=MAX_CURSOR_MICROS).contains(&micros) {
            return None;
        }
        Some(Cursor {
            published_at: DateTime::from_timestamp_micros(micros)?,
            id,
        })
    }
}

/// The expected state of an article, from `If-Match` (RFC 9110 §13.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No `If-Match`: any state; a missing article is a 404.
    None,
    /// `If-Match: *`: the article must exist (412 if it does not).
    Exists,
    /// `If-Match` with entity tags: one of them must be, character for character, the
    /// current version's ETag (the strong comparison; weak tags never match).
    Tags(Vec<String>),
}

impl Precondition {
    fn holds(&self, a: &Article) -> bool {
        match self {
            Precondition::None | Precondition::Exists => true,
            Precondition::Tags(tags) => {
                let current = a.etag();
                tags.contains(&current)
            }
        }
    }

    /// A missing article fails any `If-Match` with 412, and is a 404 without one.
    fn missing(&self) -> RepoError {
        match self {
            Precondition::None => RepoError::NotFound,
            _ => RepoError::PreconditionFailed,
        }
    }
}

// Four static statements instead of one with `$n IS NULL OR ...`: a generic plan for the
// latter cannot use the GIN indexes.
pub const LIST_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " \
     FROM articles WHERE status = 'published' AND (published_at, id) < ($1, $2) \
     ORDER BY published_at DESC, id DESC LIMIT $3"
);
pub const LIST_TAG_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " \
     FROM articles WHERE status = 'published' AND (published_at, id) < ($1, $2) AND tags @> ARRAY[$4::text] \
     ORDER BY published_at DESC, id DESC LIMIT $3"
);
pub const LIST_SEARCH_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " \
     FROM articles WHERE status = 'published' AND (published_at, id) < ($1, $2) \
     AND search @@ websearch_to_tsquery('english', $4) \
     ORDER BY published_at DESC, id DESC LIMIT $3"
);
pub const LIST_TAG_SEARCH_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " \
     FROM articles WHERE status = 'published' AND (published_at, id) < ($1, $2) AND tags @> ARRAY[$4::text] \
     AND search @@ websearch_to_tsquery('english', $5) \
     ORDER BY published_at DESC, id DESC LIMIT $3"
);
pub const GET_BY_SLUG_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " \
     FROM articles WHERE slug = $1"
);

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub cursor: Option<Cursor>,
    pub tag: Option<String>,
    pub search: Option<String>,
    pub limit: i64,
}

/// A page of published articles, newest first, and the cursor of the next page if any.
pub async fn list_published(
    conn: &mut PgConnection,
    q: &ListQuery,
) -> Result<(Vec<Article>, Option<Cursor>), DbError> {
    let (at, id) = q
        .cursor
        .map(|c| (c.published_at, c.id))
        .unwrap_or_else(Cursor::start);
    // One extra row tells whether another page exists.
    let fetch = q.limit + 1;
    let query = match (&q.tag, &q.search) {
        (None, None) => sqlx::query_as::<_, Article>(LIST_SQL)
            .bind(at)
            .bind(id)
            .bind(fetch),
        (Some(tag), None) => sqlx::query_as(LIST_TAG_SQL)
            .bind(at)
            .bind(id)
            .bind(fetch)
            .bind(tag),
        (None, Some(s)) => sqlx::query_as(LIST_SEARCH_SQL)
            .bind(at)
            .bind(id)
            .bind(fetch)
            .bind(s),
        (Some(tag), Some(s)) => sqlx::query_as(LIST_TAG_SEARCH_SQL)
            .bind(at)
            .bind(id)
            .bind(fetch)
            .bind(tag)
            .bind(s),
    };
    let mut rows = query.fetch_all(conn).await?;
    let next = if rows.len() as i64 > q.limit {
        rows.truncate(q.limit as usize);
        rows.last().and_then(|a| {
            a.published_at.map(|published_at| Cursor {
                published_at,
                id: a.id,
            })
        })
    } else {
        None
    };
    Ok((rows, next))
}

pub async fn get_by_slug(conn: &mut PgConnection, slug: &str) -> Result<Option<Article>, DbError> {
    Ok(sqlx::query_as(GET_BY_SLUG_SQL)
        .bind(slug)
        .fetch_optional(conn)
        .await?)
}

#[derive(Debug, Clone)]
pub struct NewArticle {
    pub slug: String,
    pub title: String,
    pub summary: String,
    pub body: String,
    pub tags: Vec<String>,
}

/// The body rendered to HTML, stored beside it, and the renderer's version.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub html: String,
    pub version: i32,
}

pub async fn create(
    conn: &mut PgConnection,
    a: &NewArticle,
    r: &Rendered,
) -> Result<Article, RepoError> {
    let sql = concat!(
        "INSERT INTO articles (slug, title, summary, body, tags, body_html, render_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
        columns!()
    );
    Ok(sqlx::query_as(sql)
        .bind(&a.slug)
        .bind(&a.title)
        .bind(&a.summary)
        .bind(&a.body)
        .bind(&a.tags)
        .bind(&r.html)
        .bind(r.version)
        .fetch_one(conn)
        .await?)
}

/// Fields to change; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct ArticlePatch {
    pub title: Option<String>,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub tags: Option<Vec<String>>,
}

async fn lock_by_slug(
    tx: &mut PgConnection,
    slug: &str,
    pre: &Precondition,
) -> Result<Article, RepoError> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " \
         FROM articles WHERE slug = $1 FOR UPDATE"
    );
    sqlx::query_as(sql)
        .bind(slug)
        .fetch_optional(tx)
        .await?
        .ok_or_else(|| pre.missing())
}

/// Applies `patch` if the article still matches `pre`; the version goes up by one.
pub async fn update(
    conn: &mut PgConnection,
    slug: &str,
    pre: &Precondition,
    patch: &ArticlePatch,
    rendered: Option<&Rendered>,
) -> Result<Article, RepoError> {
    let mut tx = conn.begin().await.map_err(DbError::from)?;
    let current = lock_by_slug(&mut tx, slug, pre).await?;
    if !pre.holds(&current) {
        return Err(RepoError::PreconditionFailed);
    }
    let sql = concat!(
        "UPDATE articles SET title = COALESCE($2, title), summary = COALESCE($3, summary), \
         body = COALESCE($4, body), tags = COALESCE($5, tags), \
         body_html = COALESCE($6, body_html), render_version = COALESCE($7, render_version), \
         version = version + 1, updated_at = now() \
         WHERE id = $1 \
         RETURNING ",
        columns!()
    );
    let updated: Article = sqlx::query_as(sql)
        .bind(current.id)
        .bind(&patch.title)
        .bind(&patch.summary)
        .bind(&patch.body)
        .bind(&patch.tags)
        .bind(rendered.map(|r| r.html.as_str()))
        .bind(rendered.map(|r| r.version))
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(updated)
}

pub async fn delete(
    conn: &mut PgConnection,
    slug: &str,
    pre: &Precondition,
) -> Result<(), RepoError> {
    let mut tx = conn.begin().await.map_err(DbError::from)?;
    let current = lock_by_slug(&mut tx, slug, pre).await?;
    if !pre.holds(&current) {
        return Err(RepoError::PreconditionFailed);
    }
    sqlx::query("DELETE FROM articles WHERE id = $1")
        .bind(current.id)
        .execute(&mut *tx)
        .await?;
    super::jobs::cancel_for_article(&mut tx, current.id).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(())
}

/// Publishes now (`at` is `None` or not in the future), or schedules publication at `at`
/// by enqueueing a job in the same transaction.
pub async fn publish(
    conn: &mut PgConnection,
    slug: &str,
    pre: &Precondition,
    at: Option<DateTime<Utc>>,
) -> Result<Article, RepoError> {
    let mut tx = conn.begin().await.map_err(DbError::from)?;
    let current = lock_by_slug(&mut tx, slug, pre).await?;
    if !pre.holds(&current) {
        return Err(RepoError::PreconditionFailed);
    }
    let future = at.filter(|t| *t > Utc::now());
    let article = match future {
        None if current.is_published() => current,
        None => {
            super::jobs::cancel_for_article(&mut tx, current.id).await?;
            let sql = concat!(
                "UPDATE articles SET status = 'published', published_at = now(), scheduled_at = NULL, \
                 version = version + 1, updated_at = now() WHERE id = $1 \
                 RETURNING ",
                columns!()
            );
            sqlx::query_as(sql)
                .bind(current.id)
                .fetch_one(&mut *tx)
                .await?
        }
        Some(_) if current.is_published() => return Err(RepoError::AlreadyPublished),
        Some(at) => {
            let sql = concat!(
                "UPDATE articles SET status = 'scheduled', scheduled_at = $2, \
                 version = version + 1, updated_at = now() WHERE id = $1 \
                 RETURNING ",
                columns!()
            );
            let a: Article = sqlx::query_as(sql)
                .bind(current.id)
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
            // The new schedule replaces any earlier one.
            super::jobs::cancel_for_article(&mut tx, a.id).await?;
            let payload = serde_json::json!({ "article_id": a.id, "scheduled_at": a.scheduled_at });
            super::jobs::enqueue(&mut tx, super::jobs::KIND_PUBLISH_ARTICLE, &payload, at).await?;
            a
        }
    };
    tx.commit().await.map_err(DbError::from)?;
    Ok(article)
}

/// Articles whose stored HTML is missing or from an older renderer, a batch at a time.
pub const STALE_RENDER_SQL: &str =
    "SELECT id, version, body FROM articles WHERE render_version < $1 ORDER BY id LIMIT $2";

pub async fn stale_renders(
    conn: &mut PgConnection,
    current: i32,
    limit: i64,
) -> Result<Vec<(i64, i64, String)>, DbError> {
    Ok(sqlx::query_as(STALE_RENDER_SQL)
        .bind(current)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// Stores a rendering of version `version` of the article; a no-op if it changed since.
/// The version number stays: the content did not change.
pub async fn store_render(
    conn: &mut PgConnection,
    id: i64,
    version: i64,
    r: &Rendered,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE articles SET body_html = $3, render_version = $4 WHERE id = $1 AND version = $2",
    )
    .bind(id)
    .bind(version)
    .bind(&r.html)
    .bind(r.version)
    .execute(conn)
    .await?;
    Ok(())
}

/// The scheduled-publication job's effect; returns the slug it published. A no-op
/// (`None`) when the article was deleted, published by hand or rescheduled since the job
/// was enqueued.
pub async fn publish_scheduled(
    tx: &mut PgConnection,
    article_id: i64,
    scheduled_at: DateTime<Utc>,
) -> Result<Option<String>, DbError> {
    let sql = "UPDATE articles SET status = 'published', published_at = scheduled_at, scheduled_at = NULL, \
         version = version + 1, updated_at = now() \
         WHERE id = $1 AND status = 'scheduled' AND scheduled_at = $2 RETURNING slug";
    Ok(sqlx::query_scalar(sql)
        .bind(article_id)
        .bind(scheduled_at)
        .fetch_optional(tx)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = Cursor {
            published_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("valid"),
            id: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
    }

    #[test]
    fn bad_cursors_are_rejected() {
        for bad in [
            "",
            "abc",
            "1_",
            "_1",
            "1_0",
            "1_-5",
            "99999999999999999999_1",
            "1_2_3",
            "1;DROP TABLE",
            "-9223372036854775808_1",
            "-210866803200000001_1",
            "253402300800000000_1",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn statements_select_every_column() {
        for sql in [
            LIST_SQL,
            LIST_TAG_SQL,
            LIST_SEARCH_SQL,
            LIST_TAG_SEARCH_SQL,
            GET_BY_SLUG_SQL,
        ] {
            assert!(sql.contains(columns!()), "{sql}");
        }
    }
}
