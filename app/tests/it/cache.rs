//! The response cache: every replica drops what a write changed, through PostgreSQL's
//! LISTEN/NOTIFY, a lost listener clears it, it serves stale while the database is away
//! and fails fast on misses, compresses once, and can be switched off.

use std::io::Read;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{ACCEPT_ENCODING, IF_MATCH, IF_NONE_MATCH};
use serde_json::json;

use crate::harness::{TestServer, db_pool, fresh_database, wait_until};
use crate::resilience::{Mode, Proxy};

const LONG_TTL: (&str, &str) = ("ARTICLES_CACHE_TTL_SECONDS", "3600");

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

async fn text(srv: &TestServer, path: &str) -> String {
    srv.get(path).await.text().await.expect("body")
}

async fn page_has(srv: &TestServer, text: &str) -> bool {
    self::text(srv, "/articles/c").await.contains(text)
}

/// Every public view of article `c` on `srv` shows `title`.
async fn everywhere(srv: &TestServer, title: &str) -> bool {
    for path in [
        "/articles/c",
        "/api/v1/articles/c",
        "/",
        "/api/v1/articles",
        "/feed.xml",
    ] {
        if !text(srv, path).await.contains(title) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_reaches_the_others_caches() {
    let db = fresh_database().await;
    let a = TestServer::start(&db, &[LONG_TTL]).await;
    let b = TestServer::start(&db, &[LONG_TTL]).await;
    a.wait_coherent().await;
    b.wait_coherent().await;
    a.create_published("c", "Version one", "b", &[]).await;

    // (The publication's own notification may drop a first copy: read until all hit.)
    let all_hits = wait_until(Duration::from_secs(5), || async {
        let hits = b.metric("articles_cache_hits_total", &[]).await;
        everywhere(&b, "Version one").await
            && b.metric("articles_cache_hits_total", &[]).await >= hits + 5.0
    })
    .await;
    assert!(all_hits, "reads are not served from the cache");
    assert!(b.metric("articles_cache_entries", &[]).await >= 5.0);
    assert!(b.metric("articles_cache_bytes", &[]).await > 1000.0);

    // The writer sees its write at once; the other replica within a bounded time, though
    // its entries have an hour to live: article, lists, pages and feed.
    retitle(&a, "c", "Version two").await;
    assert!(everywhere(&a, "Version two").await);
    let written = Instant::now();
    let converged = wait_until(Duration::from_secs(2), || everywhere(&b, "Version two")).await;
    assert!(
        converged,
        "replica b still stale after {:?}",
        written.elapsed()
    );

    // A write that bypasses the servers is announced too (the trigger is in the database).
    let pool = db_pool(&db).await;
    sqlx::query(
        "UPDATE articles SET title = 'Version three', version = version + 1 WHERE slug = 'c'",
    )
    .execute(&pool)
    .await
    .expect("update");
    for srv in [&a, &b] {
        let ok = wait_until(Duration::from_secs(2), || everywhere(srv, "Version three")).await;
        assert!(ok, "{} missed a direct write", srv.base);
    }

    // A delete: gone on both.
    let res = a
        .write(Method::DELETE, "/api/v1/articles/c")
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 204);
    let gone = wait_until(Duration::from_secs(2), || async {
        b.get("/articles/c").await.status() == 404
            && b.get("/api/v1/articles/c").await.status() == 404
    })
    .await;
    assert!(gone, "replica b still serves a deleted article");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_its_listener_clears_its_cache() {
    let db = fresh_database().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    let a = TestServer::start(&db, &[LONG_TTL]).await;
    let b = TestServer::start(&via_proxy, &[LONG_TTL]).await;
    b.wait_coherent().await;
    a.create_published("c", "Version one", "b", &[]).await;
    assert!(page_has(&b, "Version one").await);
    assert!(page_has(&b, "Version one").await);

    // b is cut off from the database while a writes: the notification never reaches it.
    proxy.set(Mode::Down);
    retitle(&a, "c", "Version two").await;
    proxy.set(Mode::Forward);
    let converged = wait_until(Duration::from_secs(15), || page_has(&b, "Version two")).await;
    assert!(converged, "b kept a page across a missed notification");
    let resubscribed = wait_until(Duration::from_secs(15), || async {
        b.metric("articles_cache_resyncs_total", &[]).await >= 2.0
    })
    .await;
    assert!(resubscribed, "the listener did not subscribe again");
    assert!(page_has(&b, "Version two").await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_cached_pages_are_served_stale_and_misses_fail_fast() {
    let db = fresh_database().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    let srv = TestServer::start(
        &via_proxy,
        &[LONG_TTL, ("ARTICLES_DATABASE_TIMEOUT_MS", "1000")],
    )
    .await;
    srv.wait_coherent().await;
    srv.create_published("c", "Cached one", "b", &[]).await;
    srv.create_published("d", "Never read", "b", &[]).await;
    // Cached (the publication's own notification may drop a first copy: read until hits).
    let cached = wait_until(Duration::from_secs(5), || async {
        let mut all = true;
        for path in ["/articles/c", "/api/v1/articles/c", "/"] {
            all &= srv.get(path).await.headers()["x-cache"] == "hit";
        }
        all
    })
    .await;
    assert!(cached);

    proxy.set(Mode::Down);
    // The listener notices the cut: from then on nothing is served as fresh.
    let noticed = wait_until(Duration::from_secs(10), || async {
        srv.get("/articles/c").await.headers()["x-cache"] == "stale"
    })
    .await;
    assert!(
        noticed,
        "still served as fresh after the database went away"
    );
    for path in ["/articles/c", "/api/v1/articles/c", "/"] {
        let res = srv.get(path).await;
        assert_eq!(res.status(), 200, "{path} served stale");
        let h = res.headers();
        assert_eq!(h["x-cache"], "stale", "{path}");
        assert!(h.contains_key("age"), "{path}");
        assert!(
            h["cache-control"]
                .to_str()
                .expect("cc")
                .contains("stale-if-error"),
            "{path}"
        );
        assert!(res.text().await.expect("body").contains("Cached one"));
    }
    // Misses: once the breaker has seen the outage, each is a 503 within milliseconds.
    let open = wait_until(Duration::from_secs(10), || async {
        srv.get("/articles/d").await.status() == 503
            && srv.metric("articles_db_circuit_open", &[]).await == 1.0
    })
    .await;
    assert!(open, "the breaker never opened");
    for path in ["/articles/d", "/api/v1/articles/d", "/?q=never"] {
        let started = Instant::now();
        let res = srv.get(path).await;
        assert_eq!(res.status(), 503, "{path}");
        assert_eq!(res.headers()["retry-after"], "1");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    let page = text(&srv, "/articles/d").await;
    assert!(page.contains("Briefly unavailable"), "{page}");
    // The page names the problem as the API would, for monitors and load tests.
    assert!(
        page.contains(r#"data-problem-type="urn:articles:problem:database-unavailable""#),
        "{page}"
    );

    proxy.set(Mode::Forward);
    srv.wait_ready().await;
    let back = wait_until(Duration::from_secs(10), || async {
        let res = srv.get("/articles/d").await;
        res.status() == 200 && res.headers()["x-cache"] != "stale"
    })
    .await;
    assert!(back, "no fresh answers after the outage");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_bodies_are_compressed_once_for_gzip_and_brotli() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[LONG_TTL]).await;
    srv.wait_coherent().await;
    srv.create_published(
        "c",
        "Compressed",
        &"Some *Markdown* text. ".repeat(200),
        &[],
    )
    .await;
    let plain = text(&srv, "/articles/c").await;
    for (accept, encoding) in [("gzip, deflate, br", "br"), ("gzip", "gzip")] {
        let res = srv
            .client
            .get(srv.url("/articles/c"))
            .header(ACCEPT_ENCODING, accept)
            .send()
            .await
            .expect("get");
        assert_eq!(res.headers()["content-encoding"], encoding);
        assert_eq!(res.headers()["vary"], "Authorization, Accept-Encoding");
        let etag = res.headers()["etag"].to_str().expect("etag").to_owned();
        let raw = res.bytes().await.expect("bytes");
        assert!(
            raw.len() * 3 < plain.len(),
            "{encoding}: {} of {}",
            raw.len(),
            plain.len()
        );
        let mut decoded = String::new();
        match encoding {
            "br" => brotli::Decompressor::new(&raw[..], 4096)
                .read_to_string(&mut decoded)
                .expect("brotli"),
            _ => flate2::read::GzDecoder::new(&raw[..])
                .read_to_string(&mut decoded)
                .expect("gzip"),
        };
        assert_eq!(decoded, plain, "{encoding}");
        let res = srv
            .client
            .get(srv.url("/articles/c"))
            .header(ACCEPT_ENCODING, accept)
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 304);
        assert_eq!(res.headers()["vary"], "Authorization, Accept-Encoding");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_rendered_once_when_written_and_old_rows_in_the_background() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    srv.create("c", "Rendered", "Some **bold** words.", &[])
        .await;
    let pool = db_pool(&db).await;
    let (html, version): (String, i32) =
        sqlx::query_as("SELECT body_html, render_version FROM articles WHERE slug = 'c'")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert!(html.contains("<strong>bold</strong>"), "{html}");
    assert_eq!(version, article_server::render::RENDER_VERSION);
    // A row without a rendering (written by an older server, or by hand) is rendered by the
    // next server to start, and shown right meanwhile.
    sqlx::query(
        "INSERT INTO articles (slug, title, body, status, published_at) \
         VALUES ('old', 'Old', 'An *old* body.', 'published', now())",
    )
    .execute(&pool)
    .await
    .expect("insert");
    assert!(text(&srv, "/articles/old").await.contains("<em>old</em>"));
    srv.stop().await;
    let srv = TestServer::start(&db, &[]).await;
    let rendered = wait_until(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i32>("SELECT render_version FROM articles WHERE slug = 'old'")
            .fetch_one(&pool)
            .await
            .expect("row")
            == article_server::render::RENDER_VERSION
    })
    .await;
    assert!(rendered, "the old row was not rendered");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_cache_shows_other_replicas_writes_at_once() {
    let db = fresh_database().await;
    let a = TestServer::start(&db, &[]).await;
    let b = TestServer::start(&db, &[("ARTICLES_CACHE_ENABLED", "false"), LONG_TTL]).await;
    a.create_published("c", "Version one", "b", &[]).await;
    assert!(page_has(&b, "Version one").await);
    retitle(&a, "c", "Version two").await;
    assert!(page_has(&b, "Version two").await);
    assert_eq!(b.metric("articles_cache_hits_total", &[]).await, 0.0);
    a.stop().await;
    b.stop().await;
}
