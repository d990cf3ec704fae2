//! Regression tests for the defects found by trying the server as an attacker (issue 19):
//! each test names the defect it pins down.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{TOKEN, TestServer, db_pool, fresh_database, snapshot, wait_until};
use crate::resilience::{Mode, Proxy};

const WRONG_TOKEN: &str = "wrong-token-wrong-token-wrong-token-00";

/// A server without cache whose database connections go through a proxy the test controls.
async fn uncached_behind_proxy(db_timeout_ms: &str) -> (TestServer, Proxy) {
    let db = fresh_database().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    let srv = TestServer::start(
        &via_proxy,
        &[
            ("ARTICLES_CACHE_ENABLED", "false"),
            ("ARTICLES_DATABASE_TIMEOUT_MS", db_timeout_ms),
            // Each write runs once: these tests watch one database call, not a held retry
            // (and a 5 s call plus the default hold would not fit the request timeout).
            ("ARTICLES_WRITE_HOLD_MS", "0"),
        ],
    )
    .await;
    (srv, proxy)
}

/// A server whose database holds one published article, `a`.
async fn server_with_article_a() -> TestServer {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    srv.create_published("a", "A", "b", &[]).await;
    srv
}

/// Reads until the server closes the connection (EOF or reset), within `limit`.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A response (408, or the answer to a complete request): keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Defect 1: idle and half-sent requests are closed after the header-read timeout, open
/// connections are capped, and probes and real requests keep being answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_capped_while_probes_keep_working() {
    let db = fresh_database().await;
    let srv = TestServer::start(
        &db,
        &[
            ("ARTICLES_HEADER_READ_TIMEOUT_MS", "1000"),
            ("ARTICLES_MAX_CONNECTIONS", "100"),
        ],
    )
    .await;
    srv.create_published("a", "A", "b", &[]).await;
    let addr = srv.base.trim_start_matches("http://").to_owned();

    // 60 slow clients (below the cap): probes and reads are answered at once meanwhile.
    let mut slow = Vec::new();
    for i in 0..60 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        if i % 2 == 0 {
            // Half a request head, never finished (slowloris).
            s.write_all(b"GET /api/v1/articles HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .expect("write");
        }
        slow.push(s);
    }
    for path in ["/livez", "/readyz", "/api/v1/articles/a", "/articles/a"] {
        let started = tokio::time::Instant::now();
        let res = srv.get(path).await;
        assert_eq!(res.status(), 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{path} waited {:?} behind slow clients",
            started.elapsed()
        );
    }
    // Every one of them is closed by the server after the timeout.
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, Duration::from_secs(10)).await,
            "slow client {i} still open"
        );
    }

    // An idle keep-alive connection is closed too, after one complete exchange.
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(10)).await,
        "an idle keep-alive connection stayed open"
    );

    // 250 slow clients, more than the cap: the server never holds more than 100
    // connections, and requests still get through as the timeout frees slots.
    let mut flood = Vec::new();
    for _ in 0..250 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\n").await;
        flood.push(s);
    }
    let ok = wait_until(Duration::from_secs(15), || async {
        matches!(srv.client.get(srv.url("/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ok, "readyz not answered while flooded");
    let res = srv.get("/api/v1/articles/a").await;
    assert_eq!(res.status(), 200);
    let open = srv.metric("articles_http_connections_open", &[]).await;
    assert!(open <= 100.0, "{open} connections open, cap is 100");
    drop(flood);
    srv.stop().await;
}

/// Defect 2: invented methods do not create metric series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_share_one_metric_label() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    for i in 0..5 {
        let m = Method::from_bytes(format!("INVENTED{i}{}", "X".repeat(200)).as_bytes())
            .expect("method");
        let res = srv
            .client
            .request(m, srv.url("/api/v1/articles"))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 405);
    }
    let text = srv.get("/metrics").await.text().await.expect("metrics");
    assert!(!text.contains("INVENTED"), "{text}");
    assert!(
        srv.metric("articles_http_requests_total", &["method=\"other\""])
            .await
            >= 5.0
    );
    srv.stop().await;
}

/// Defect 3: a cursor outside PostgreSQL's time range is a 400, not a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_cursors_are_bad_requests() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    for cursor in [
        "-9223372036854775808_1",
        "-210866803200000001_1",
        "9223372036854775807_1",
    ] {
        let res = srv.get(&format!("/api/v1/articles?cursor={cursor}")).await;
        assert_eq!(res.status(), 400, "{cursor}");
        let body: serde_json::Value = res.json().await.expect("problem");
        assert_eq!(body["type"], "urn:articles:problem:invalid-query");
        let res = srv.get(&format!("/?cursor={cursor}")).await;
        assert_eq!(res.status(), 400, "{cursor}");
        assert_eq!(res.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    }
    srv.stop().await;
}

/// Defect 4: characters XML cannot carry are rejected, and the feed stays well-formed
/// for a real XML parser even when such a character is already stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_stays_well_formed_xml() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    for (field, value) in [
        ("title", "T\u{FFFF}"),
        ("summary", "s\u{FFFE}"),
        ("body", "b\u{FDD0}"),
    ] {
        let mut body = json!({ "slug": "x", "title": "T", "body": "b" });
        body[field] = json!(value);
        let res = srv
            .write(Method::POST, "/api/v1/articles")
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 422, "{field}");
    }
    srv.create_published(
        "fine",
        "Ünïcode & <angles> 🦀",
        "CR\r\nLF\n\ttab & <b>x</b> ]]>",
        &["news"],
    )
    .await;
    // A row written before the check existed.
    let pool = db_pool(&db).await;
    sqlx::query(
        "INSERT INTO articles (slug, title, body, status, published_at) \
         VALUES ('old', 'Old \u{FFFF} title', 'body \u{FFFE}\u{1}', 'published', now())",
    )
    .execute(&pool)
    .await
    .expect("insert");
    let res = srv.get("/feed.xml").await;
    assert_eq!(res.status(), 200);
    let xml = res.text().await.expect("xml");
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let titles: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("entry"))
        .filter_map(|e| e.children().find(|c| c.has_tag_name("title")))
        .filter_map(|t| t.text().map(str::to_owned))
        .collect();
    assert_eq!(titles, ["Old  title", "Ünïcode & <angles> 🦀"]);
    srv.stop().await;
}

/// Defect 5: a request its client abandons leaves the in-flight gauge and is counted and
/// logged (as 499).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_leave_the_in_flight_gauge() {
    let (srv, proxy) = uncached_behind_proxy("5000").await;
    proxy.set(Mode::Stall);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    // The first may fail fast instead, on the pooled connection the stall just cut.
    for i in 0..6 {
        let r = impatient
            .get(srv.url(&format!("/api/v1/articles?q=w{i}")))
            .send()
            .await;
        assert!(r.is_err(), "the database stalls, so the client gives up");
    }
    proxy.set(Mode::Forward);
    // The scrape itself is the one request in flight.
    let settled = wait_until(Duration::from_secs(10), || async {
        srv.metric("articles_http_requests_in_flight", &[]).await == 1.0
            && srv
                .metric("articles_http_requests_total", &["status=\"499\""])
                .await
                >= 5.0
    })
    .await;
    assert!(
        settled,
        "in flight {}, abandoned counted {}",
        srv.metric("articles_http_requests_in_flight", &[]).await,
        srv.metric("articles_http_requests_total", &["status=\"499\""])
            .await
    );
    srv.stop().await;
}

/// Defect 6: reader URLs answer HTML pages with the right status; the API keeps JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_urls_answer_html_errors() {
    let (srv, proxy) = uncached_behind_proxy("500").await;
    srv.create_published("a", "A", "b", &[]).await;
    let html = "text/html; charset=utf-8";
    for (method, path, status) in [
        (Method::GET, "/about", 404),
        (Method::GET, "/articles/", 404),
        (Method::GET, "/articles/a/", 404),
        (Method::GET, "/articles/Bad%20Slug", 404),
        (Method::GET, "/?cursor=nope", 400),
        (Method::GET, "/?tag=Not%20A%20Tag", 400),
        (Method::POST, "/", 405),
        (Method::DELETE, "/articles/a", 405),
    ] {
        let res = srv
            .client
            .request(method.clone(), srv.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), status, "{method} {path}");
        assert_eq!(res.headers()[CONTENT_TYPE], html, "{method} {path}");
        let page = res.text().await.expect("page");
        assert!(page.starts_with("<!doctype html>"), "{path}: {page}");
    }
    for path in ["/api/v1/nope", "/api/v1/articles/nope", "/api"] {
        let res = srv.get(path).await;
        assert_eq!(res.status(), 404, "{path}");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
    }
    proxy.set(Mode::Down);
    let res = srv.get("/").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()[CONTENT_TYPE], html);
    assert_eq!(res.headers()["retry-after"], "1");
    let res = srv.get("/api/v1/articles").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
    proxy.set(Mode::Forward);
    srv.wait_ready().await;
    srv.stop().await;
}

/// Defect 7: a positional array is not a create body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_positional_array_is_not_a_body() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    let pool = db_pool(&db).await;
    let before = snapshot(&pool).await;
    for body in [
        r#"["arr", "Title", "", "body", []]"#,
        r#"["arr", "Title", "summary", "body"]"#,
    ] {
        let res = srv
            .write(Method::POST, "/api/v1/articles")
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 422, "{body}");
        let problem: serde_json::Value = res.json().await.expect("problem");
        assert_eq!(problem["type"], "urn:articles:problem:schema-mismatch");
    }
    let res = srv
        .write(Method::POST, "/api/v1/articles/x/publish")
        .header(CONTENT_TYPE, "application/json")
        .body(r#"["2030-01-01T00:00:00Z"]"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(res.status(), 422);
    assert_eq!(snapshot(&pool).await, before, "nothing stored");
    srv.stop().await;
}

/// Defect 8: invisible and reordering characters are rejected in titles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_titles_are_rejected() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    for title in [
        "\u{200B}\u{200B}",
        "evil\u{202E}txt.exe",
        "\u{2066}x\u{2069}",
    ] {
        let res = srv
            .write(Method::POST, "/api/v1/articles")
            .json(&json!({ "slug": "x", "title": title, "body": "b" }))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 422, "{title:?}");
        let problem: serde_json::Value = res.json().await.expect("problem");
        assert_eq!(problem["errors"][0]["field"], "title");
    }
    let res = srv
        .write(Method::POST, "/api/v1/articles")
        .json(&json!({ "slug": "a\u{200B}b", "title": "T", "body": "b" }))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 422);
    srv.create("fine", "Zwölf Boxkämpfer 👨‍👩‍👧", "b", &[]).await;
    srv.stop().await;
}

/// Defect 9: If-Match is a strong, exact comparison, and `If-Match: *` on a missing
/// article is 412.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_is_strong_and_star_needs_an_article() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    let a = srv.create("a", "A", "b", &[]).await;
    let (id, version) = (
        a["id"].as_i64().expect("id"),
        a["version"].as_i64().expect("v"),
    );
    for lookalike in [
        format!("\"a0{id}.{version}\""),
        format!("\"a+{id}.{version}\""),
        format!("\"a{id}.0{version}\""),
        format!("W/\"a{id}.{version}\""),
    ] {
        let res = srv
            .write(Method::PATCH, "/api/v1/articles/a")
            .header(IF_MATCH, &lookalike)
            .json(&json!({ "title": "B" }))
            .send()
            .await
            .expect("patch");
        assert_eq!(res.status(), 412, "{lookalike}");
    }
    let res = srv
        .write(Method::PATCH, "/api/v1/articles/a")
        .header(IF_MATCH, format!("\"x\", \"a{id}.{version}\""))
        .json(&json!({ "title": "B" }))
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 200);
    for (method, path, if_match, status) in [
        (Method::DELETE, "/api/v1/articles/missing", Some("*"), 412),
        (Method::DELETE, "/api/v1/articles/missing", None, 404),
        (
            Method::POST,
            "/api/v1/articles/missing/publish",
            Some("*"),
            412,
        ),
        (
            Method::DELETE,
            "/api/v1/articles/missing",
            Some("\"a1.1\""),
            412,
        ),
    ] {
        let mut req = srv.write(method.clone(), path);
        if let Some(v) = if_match {
            req = req.header(IF_MATCH, v);
        }
        let res = req.send().await.expect("request");
        assert_eq!(res.status(), status, "{method} {path} {if_match:?}");
    }
    let res = srv
        .write(Method::PATCH, "/api/v1/articles/missing")
        .header(IF_MATCH, "*")
        .json(&json!({ "title": "B" }))
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 412);
    srv.stop().await;
}

/// Defect 10: security headers on pages, the feed and the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_security_headers() {
    let srv = server_with_article_a().await;
    for path in [
        "/",
        "/articles/a",
        "/articles/none",
        "/feed.xml",
        "/api/v1/articles",
    ] {
        let res = srv.get(path).await;
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().expect("csp");
        for part in [
            "default-src 'none'",
            "frame-ancestors 'none'",
            "style-src 'sha256-",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        // The server's own time, so that a client can tell its wait from the server's.
        let timing = h["server-timing"].to_str().expect("server-timing");
        let ms: f64 = timing
            .strip_prefix("app;dur=")
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{path}: Server-Timing {timing}"));
        assert!(
            (0.0..10_000.0).contains(&ms),
            "{path}: Server-Timing {timing}"
        );
        assert_eq!(
            h["referrer-policy"], "strict-origin-when-cross-origin",
            "{path}"
        );
    }
    srv.stop().await;
}

/// Defect 11: one rule for a wrong token on every read route: 401. No token is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_on_every_read() {
    let srv = server_with_article_a().await;
    for path in [
        "/",
        "/articles/a",
        "/feed.xml",
        "/api/v1/articles",
        "/api/v1/articles/a",
    ] {
        let res = srv
            .client
            .get(srv.url(path))
            .bearer_auth(WRONG_TOKEN)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 401, "{path}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer", "{path}");
        let res = srv
            .client
            .get(srv.url(path))
            .header("authorization", "Basic dXNlcjpwYXNz")
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 401, "{path}");
        assert_eq!(srv.get(path).await.status(), 200, "{path}");
        let res = srv
            .client
            .get(srv.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 200, "{path}");
    }
    // Probes and metrics take no token and judge none.
    for path in ["/livez", "/metrics"] {
        let res = srv
            .client
            .get(srv.url(path))
            .bearer_auth(WRONG_TOKEN)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 200, "{path}");
    }
    srv.stop().await;
}

/// Defect 12: scheduling again replaces the pending job; publishing or deleting removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_schedule_replaces_the_old_job() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    let pool = db_pool(&db).await;
    let pending = |slug: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs j JOIN articles a ON a.id = (j.payload->>'article_id')::bigint \
                 WHERE j.state = 'pending' AND a.slug = $1",
            )
            .bind(slug)
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    for slug in ["a", "b"] {
        srv.create(slug, "T", "b", &[]).await;
        for year in 2030..2035 {
            let res = srv
                .write(Method::POST, &format!("/api/v1/articles/{slug}/publish"))
                .json(&json!({ "at": format!("{year}-01-01T09:00:00Z") }))
                .send()
                .await
                .expect("schedule");
            assert_eq!(res.status(), 200);
        }
        assert_eq!(pending(slug).await, 1, "{slug}: one pending job");
    }
    let at: String = sqlx::query_scalar(
        "SELECT payload->>'scheduled_at' FROM jobs WHERE state = 'pending' LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("job");
    assert!(at.starts_with("2034-01-01"), "the last schedule wins: {at}");
    srv.publish("a").await;
    assert_eq!(pending("a").await, 0, "published by hand: no job left");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'pending'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(total, 1, "b's job is untouched");
    let res = srv
        .write(Method::DELETE, "/api/v1/articles/b")
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 204);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'pending'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(total, 0, "deleted: no job left");
    srv.stop().await;
}
