//! At 10,000 articles, no hot query path plans a sequential scan. Plans come from the
//! statements the server runs (the `*_SQL` constants), with `enable_seqscan` left on,
//! after ANALYZE.

use article_server::db::{self, articles, jobs};
use chrono::{DateTime, Utc};
use sqlx::{Execute, PgPool};

use crate::harness::{config, db_pool, fresh_database};

/// The JSON plan of `q`, planned with its bound values.
async fn plan(
    pool: &PgPool,
    mut q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> String {
    let args = q.take_arguments().expect("args").unwrap_or_default();
    let sql = q.sql();
    let rows: Vec<(serde_json::Value,)> = sqlx::query_as_with(
        sqlx::AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {}", sql.as_str())),
        args,
    )
    .fetch_all(pool)
    .await
    .expect("explain");
    rows[0].0.to_string()
}

/// "Node Type [index]" of every plan node, depth first: a readable summary for the report.
fn nodes(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(t) = m.get("Node Type").and_then(|t| t.as_str()) {
                match m.get("Index Name").and_then(|i| i.as_str()) {
                    Some(i) => out.push(format!("{t} [{i}]")),
                    None => out.push(t.to_owned()),
                }
            }
            m.values().for_each(|x| nodes(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| nodes(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_paths_use_indexes_at_ten_thousand_articles() {
    let db = fresh_database().await;
    db::migrate_on(
        db::migrate_connect(&config(&db, &[]))
            .await
            .expect("connect"),
    )
    .await
    .expect("migrate");
    let pool = db_pool(&db).await;
    sqlx::query(
        "INSERT INTO articles (slug, title, summary, body, tags, status, published_at, render_version) \
         SELECT 'article-' || i, 'Title ' || i || ' ' || (ARRAY['rust','postgres','kubernetes','cooking','travel'])[1 + i % 5], \
                'Summary ' || i, repeat('lorem ipsum dolor sit amet ', 20) || ' word' || (i % 500), \
                ARRAY['tag-' || (i % 50), 'all'], \
                CASE WHEN i % 10 = 0 THEN 'draft' ELSE 'published' END, \
                CASE WHEN i % 10 = 0 THEN NULL ELSE now() - make_interval(mins => i) END, \
                CASE WHEN i % 1000 = 0 THEN 0 ELSE 1 END \
         FROM generate_series(1, 10000) AS i",
    )
    .execute(&pool)
    .await
    .expect("seed articles");
    sqlx::query(
        "INSERT INTO jobs (kind, payload, state, run_at, visible_at, attempts, finished_at) \
         SELECT 'publish_article', jsonb_build_object('article_id', i), CASE WHEN i <= 50 THEN 'pending' ELSE 'done' END, \
                now() + make_interval(mins => i), now() + make_interval(mins => i), \
                CASE WHEN i <= 50 THEN 0 ELSE 1 END, CASE WHEN i <= 50 THEN NULL ELSE now() END \
         FROM generate_series(1, 10000) AS i",
    )
    .execute(&pool)
    .await
    .expect("seed jobs");
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .expect("analyze");
    let seqscan: String = sqlx::query_scalar("SHOW enable_seqscan")
        .fetch_one(&pool)
        .await
        .expect("show");
    assert_eq!(seqscan, "on");

    let start: (DateTime<Utc>, i64) = (DateTime::<Utc>::MAX_UTC, i64::MAX);
    let mid: (DateTime<Utc>, i64) =
        sqlx::query_as("SELECT published_at, id FROM articles WHERE id = 5001")
            .fetch_one(&pool)
            .await
            .expect("cursor");
    let cases = [
        (
            "list first page",
            sqlx::query(articles::LIST_SQL)
                .bind(start.0)
                .bind(start.1)
                .bind(21i64),
        ),
        (
            "list later page",
            sqlx::query(articles::LIST_SQL)
                .bind(mid.0)
                .bind(mid.1)
                .bind(21i64),
        ),
        (
            "list by rare tag",
            sqlx::query(articles::LIST_TAG_SQL)
                .bind(start.0)
                .bind(start.1)
                .bind(21i64)
                .bind("tag-7"),
        ),
        (
            "list by common tag",
            sqlx::query(articles::LIST_TAG_SQL)
                .bind(start.0)
                .bind(start.1)
                .bind(21i64)
                .bind("all"),
        ),
        (
            "search",
            sqlx::query(articles::LIST_SEARCH_SQL)
                .bind(start.0)
                .bind(start.1)
                .bind(21i64)
                .bind("word42"),
        ),
        (
            "search common word",
            sqlx::query(articles::LIST_SEARCH_SQL)
                .bind(start.0)
                .bind(start.1)
                .bind(21i64)
                .bind("rust"),
        ),
        (
            "search within tag",
            sqlx::query(articles::LIST_TAG_SEARCH_SQL)
                .bind(start.0)
                .bind(start.1)
                .bind(21i64)
                .bind("tag-7")
                .bind("word7"),
        ),
        (
            "get by slug",
            sqlx::query(articles::GET_BY_SLUG_SQL).bind("article-4242"),
        ),
        (
            "claim a job",
            sqlx::query(jobs::CLAIM_SQL).bind("w").bind(30.0f64),
        ),
        ("queue depth", sqlx::query(jobs::DEPTH_SQL)),
        (
            "cancel an article's pending job",
            sqlx::query(jobs::CANCEL_FOR_ARTICLE_SQL).bind(4242i64),
        ),
        (
            "articles to render again",
            sqlx::query(articles::STALE_RENDER_SQL)
                .bind(article_server::render::RENDER_VERSION)
                .bind(100i64),
        ),
    ];
    let mut report = String::new();
    for (name, q) in cases {
        let p = plan(&pool, q).await;
        let mut summary = Vec::new();
        nodes(&serde_json::from_str(&p).expect("plan json"), &mut summary);
        report.push_str(&format!("{name}: {}\n", summary.join(" > ")));
        assert!(
            !p.contains("Seq Scan"),
            "{name} plans a sequential scan:\n{p}"
        );
    }
    eprintln!("{report}");
}
