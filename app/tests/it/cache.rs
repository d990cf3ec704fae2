//! The response cache: own writes show at once, other replicas' writes within the TTL,
//! and it can be switched off.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::IF_MATCH;
use serde_json::json;

use crate::harness::{TestServer, fresh_database, wait_until};

async fn retitle(srv: &TestServer, slug: &str, title: &str) {
    let cur = srv
        .write(Method::GET, &format!("/api/v1/articles/{slug}"))
        .send()
        .await
        .expect("get");
    let etag = cur.headers()["etag"].to_str().expect("etag").to_owned();
    let res = srv
        .write(Method::PATCH, &format!("/api/v1/articles/{slug}"))
        .header(IF_MATCH, etag)
        .json(&json!({ "title": title }))
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 200);
}

async fn page_has(srv: &TestServer, text: &str) -> bool {
    srv.get("/articles/c")
        .await
        .text()
        .await
        .expect("html")
        .contains(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_invalidate_and_other_replicas_converge_within_ttl() {
    let db = fresh_database().await;
    let ttl = [("ARTICLES_CACHE_TTL_SECONDS", "1")];
    let a = TestServer::start(&db, &ttl).await;
    let b = TestServer::start(&db, &ttl).await;
    a.create("c", "Version one", "b", &[]).await;
    a.publish("c").await;

    assert!(page_has(&a, "Version one").await);
    assert!(page_has(&b, "Version one").await);
    assert!(b.metric("articles_cache_misses_total", &[]).await >= 1.0);
    assert!(page_has(&b, "Version one").await);
    assert!(
        b.metric("articles_cache_hits_total", &[]).await >= 1.0,
        "second read is a hit"
    );

    // The writing replica shows the change at once.
    retitle(&a, "c", "Version two").await;
    assert!(page_has(&a, "Version two").await);
    assert!(
        a.get("/api/v1/articles/c")
            .await
            .text()
            .await
            .expect("json")
            .contains("Version two")
    );

    // The other replica converges within the TTL.
    let converged = wait_until(Duration::from_secs(5), || page_has(&b, "Version two")).await;
    assert!(converged, "replica b still stale after the TTL");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_cache_shows_other_replicas_writes_at_once() {
    let db = fresh_database().await;
    let a = TestServer::start(&db, &[]).await;
    let b = TestServer::start(
        &db,
        &[
            ("ARTICLES_CACHE_ENABLED", "false"),
            ("ARTICLES_CACHE_TTL_SECONDS", "3600"),
        ],
    )
    .await;
    a.create("c", "Version one", "b", &[]).await;
    a.publish("c").await;
    assert!(page_has(&b, "Version one").await);
    retitle(&a, "c", "Version two").await;
    assert!(page_has(&b, "Version two").await);
    assert_eq!(b.metric("articles_cache_hits_total", &[]).await, 0.0);
    a.stop().await;
    b.stop().await;
}
