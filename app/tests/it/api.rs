//! The JSON API: CRUD, publication, listing, conditional requests, auth.

use reqwest::Method;
use reqwest::header::{CACHE_CONTROL, ETAG, IF_MATCH, IF_NONE_MATCH};
use serde_json::{Value, json};

use crate::harness::{TestServer, fresh_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_with_etags() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;

    let created = srv.create("hello-world", "Hello", "# Hi", &["news"]).await;
    assert_eq!(created["status"], "draft");
    assert_eq!(created["version"], 1);

    // A draft is invisible to the public, visible to the token holder.
    assert_eq!(srv.get("/api/v1/articles/hello-world").await.status(), 404);
    let own = srv
        .write(Method::GET, "/api/v1/articles/hello-world")
        .send()
        .await
        .expect("get");
    assert_eq!(own.status(), 200);
    assert_eq!(own.headers()[CACHE_CONTROL], "private, no-store");
    let etag = own.headers()[ETAG].to_str().expect("etag").to_owned();

    // Update without If-Match: 428. With a stale one: 412. With the current one: 200.
    let patch = json!({ "title": "Hello again" });
    let res = srv
        .write(Method::PATCH, "/api/v1/articles/hello-world")
        .json(&patch)
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 428);
    let res = srv
        .write(Method::PATCH, "/api/v1/articles/hello-world")
        .header(IF_MATCH, &etag)
        .json(&patch)
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 200);
    let new_etag = res.headers()[ETAG].to_str().expect("etag").to_owned();
    assert_ne!(new_etag, etag);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["title"], "Hello again");
    assert_eq!(body["version"], 2);

    let res = srv
        .write(Method::PATCH, "/api/v1/articles/hello-world")
        .header(IF_MATCH, &etag)
        .json(&json!({ "title": "Lost update" }))
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 412);
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    // Delete with a stale ETag fails; with the current one succeeds.
    let res = srv
        .write(Method::DELETE, "/api/v1/articles/hello-world")
        .header(IF_MATCH, &etag)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 412);
    let res = srv
        .write(Method::DELETE, "/api/v1/articles/hello-world")
        .header(IF_MATCH, &new_etag)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 204);
    let res = srv
        .write(Method::GET, "/api/v1/articles/hello-world")
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 404);

    // A recreated slug gets new ETags: the old one does not match it.
    srv.create("hello-world", "Again", "b", &[]).await;
    let res = srv
        .write(Method::PATCH, "/api/v1/articles/hello-world")
        .header(IF_MATCH, &new_etag)
        .json(&patch)
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 412);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_newest_first_with_cursor_tag_and_search() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    for i in 0..25 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        let body = if i == 7 {
            "The quick brown fox jumps"
        } else {
            "Lorem ipsum"
        };
        srv.create(&format!("post-{i}"), &format!("Post {i}"), body, &[tag])
            .await;
        srv.publish(&format!("post-{i}")).await;
    }
    srv.create("draft-one", "Draft", "quick fox", &["even"])
        .await;

    // Pages of 10: 25 newest first, then nothing more.
    let mut seen = Vec::new();
    let mut path = "/api/v1/articles?limit=10".to_owned();
    loop {
        let page: Value = srv.get(&path).await.json().await.expect("json");
        for item in page["items"].as_array().expect("items") {
            seen.push(item["slug"].as_str().expect("slug").to_owned());
            assert!(item.get("body").is_none(), "lists carry no bodies");
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/articles?limit=10&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("post-{i}")).collect();
    assert_eq!(seen, expected);

    let page: Value = srv
        .get("/api/v1/articles?tag=odd&limit=100")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["items"].as_array().expect("items").len(), 12);

    let page: Value = srv
        .get("/api/v1/articles?q=quick%20foxes")
        .await
        .json()
        .await
        .expect("json");
    let slugs: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["slug"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        slugs,
        ["post-7"],
        "stemmed search finds the published match only"
    );

    let page: Value = srv
        .get("/api/v1/articles?q=fox&tag=even")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["items"].as_array().expect("items").len(), 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_304_to_a_matching_if_none_match() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    srv.create("a", "A", "x", &[]).await;
    srv.publish("a").await;

    for path in [
        "/api/v1/articles/a",
        "/api/v1/articles",
        "/",
        "/articles/a",
        "/feed.xml",
    ] {
        let first = srv.get(path).await;
        assert_eq!(first.status(), 200, "{path}");
        assert_eq!(
            first.headers()[CACHE_CONTROL],
            "public, max-age=0, must-revalidate",
            "{path}"
        );
        let etag = first.headers()[ETAG].to_str().expect("etag").to_owned();
        let again = srv
            .client
            .get(srv.url(path))
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .expect("get");
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()[ETAG].to_str().expect("etag"), etag);
        assert!(again.bytes().await.expect("body").is_empty());
        let other = srv
            .client
            .get(srv.url(path))
            .header(IF_NONE_MATCH, "\"other\"")
            .send()
            .await
            .expect("get");
        assert_eq!(other.status(), 200, "{path}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_token_and_reads_do_not() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    let body = json!({ "slug": "x", "title": "X", "body": "b" });
    let res = srv
        .client
        .post(srv.url("/api/v1/articles"))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let res = srv
        .client
        .post(srv.url("/api/v1/articles"))
        .bearer_auth("wrong-token-wrong-token-wrong-token-00")
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 401);
    for (method, path) in [
        (Method::PATCH, "/api/v1/articles/x"),
        (Method::DELETE, "/api/v1/articles/x"),
        (Method::POST, "/api/v1/articles/x/publish"),
    ] {
        let res = srv
            .client
            .request(method, srv.url(path))
            .send()
            .await
            .expect("write");
        assert_eq!(res.status(), 401, "{path}");
    }
    assert_eq!(srv.get("/api/v1/articles").await.status(), 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_a_request_id() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    let res = srv.get("/livez").await;
    let id = res.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let res = srv
        .client
        .get(srv.url("/livez"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("get");
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    srv.stop().await;
}
