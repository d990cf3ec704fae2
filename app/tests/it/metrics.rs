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
