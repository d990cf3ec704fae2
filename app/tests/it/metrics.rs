//! `/metrics`: requests by route and status, latency, pool usage, job queue depth.

use crate::harness::{TestServer, fresh_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_requests_pool_and_queue() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    srv.create("m", "M", "b", &[]).await;
    assert_eq!(srv.get("/api/v1/articles/m").await.status(), 404);
    assert_eq!(srv.get("/api/v1/articles/m").await.status(), 404);
    assert_eq!(srv.get("/no/such/path").await.status(), 404);

    let res = srv.get("/metrics").await;
    assert_eq!(
        res.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = res.text().await.expect("text");
    let has = |needle: &str| text.lines().any(|l| l.contains(needle));
    assert!(
        has(
            "articles_http_requests_total{method=\"GET\",route=\"/api/v1/articles/{slug}\",status=\"404\"} 2"
        ),
        "{text}"
    );
    assert!(has("route=\"unmatched\",status=\"404\""), "{text}");
    assert!(
        has("articles_http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(
        has("articles_db_pool_connections{state=\"idle\"}"),
        "{text}"
    );
    assert!(has("articles_db_pool_max_connections 10"), "{text}");
    assert!(
        has("articles_jobs_queue_depth{state=\"pending\"} 0"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));

    // A scheduled publication shows in the queue depth.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let res = srv
        .write(reqwest::Method::POST, "/api/v1/articles/m/publish")
        .json(&serde_json::json!({ "at": at }))
        .send()
        .await
        .expect("schedule");
    assert_eq!(res.status(), 200);
    assert_eq!(
        srv.metric("articles_jobs_queue_depth", &["state=\"pending\""])
            .await,
        1.0
    );
    assert_eq!(
        srv.metric("articles_jobs_queue_depth", &["state=\"due\""])
            .await,
        0.0
    );
    srv.stop().await;
}

/// A server reports ready with its pool open (`ARTICLES_DATABASE_POOL_MIN`, by default the
/// pool size), so that no request waits for a login; with a minimum of 0 it stays lazy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_server_has_its_pool_open() {
    let db = fresh_database().await;
    let warm = TestServer::start(&db, &[("ARTICLES_DATABASE_POOL_SIZE", "4")]).await;
    assert_eq!(warm.metric("articles_db_pool_connections", &[]).await, 4.0);
    // The server's own count against the database's: four logins of the request pool, one
    // of the change listener.
    let pool = crate::harness::db_pool(&db).await;
    let logins: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() and application_name = 'article-server'",
    )
    .fetch_one(&pool)
    .await
    .expect("pg_stat_activity");
    assert_eq!(logins, 5);
    warm.stop().await;

    let lazy = TestServer::start(
        &db,
        &[
            ("ARTICLES_DATABASE_POOL_SIZE", "4"),
            ("ARTICLES_DATABASE_POOL_MIN", "0"),
        ],
    )
    .await;
    assert!(lazy.metric("articles_db_pool_connections", &[]).await < 4.0);
    lazy.stop().await;
}
