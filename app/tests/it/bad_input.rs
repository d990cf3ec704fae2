//! Each kind of bad input gets a specific 4xx with a problem body, and nothing stored changes.

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use serde_json::{Value, json};

use crate::harness::{TestServer, db_pool, fresh_database, snapshot};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    if_match: bool,
    status: u16,
    problem: &'static str,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    problem: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        content_type: Some("application/json"),
        body: body.into(),
        if_match: true,
        status,
        problem,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_specific_problem_and_changes_nothing() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[("ARTICLES_MAX_BODY_BYTES", "4096")]).await;
    let pool = db_pool(&db).await;
    srv.create("kept", "Kept", "original body", &["a"]).await;
    srv.publish("kept").await;
    let before = snapshot(&pool).await;

    let post = |name, body: &str, status, problem| {
        case(
            name,
            Method::POST,
            "/api/v1/articles",
            body,
            status,
            problem,
        )
    };
    let patch = |name, body: &str, status, problem| {
        case(
            name,
            Method::PATCH,
            "/api/v1/articles/kept",
            body,
            status,
            problem,
        )
    };
    let long = "x".repeat(201);
    let mut cases = vec![
        post(
            "malformed json",
            "{\"slug\": \"a\", ",
            400,
            "malformed-json",
        ),
        post(
            "trailing garbage",
            "{\"slug\":\"a\",\"title\":\"t\",\"body\":\"b\"} x",
            400,
            "malformed-json",
        ),
        post(
            "wrong type",
            "{\"slug\": 5, \"title\": \"t\", \"body\": \"b\"}",
            422,
            "schema-mismatch",
        ),
        post(
            "tags not a list",
            "{\"slug\":\"a\",\"title\":\"t\",\"body\":\"b\",\"tags\":\"x\"}",
            422,
            "schema-mismatch",
        ),
        post(
            "missing field",
            "{\"slug\": \"a\", \"title\": \"t\"}",
            422,
            "schema-mismatch",
        ),
        post(
            "unknown field",
            "{\"slug\":\"a\",\"title\":\"t\",\"body\":\"b\",\"admin\":true}",
            422,
            "schema-mismatch",
        ),
        post("not an object", "[1,2,3]", 422, "schema-mismatch"),
        post(
            "bad slug",
            "{\"slug\":\"Bad Slug!\",\"title\":\"t\",\"body\":\"b\"}",
            422,
            "validation-failed",
        ),
        post(
            "sql in slug",
            "{\"slug\":\"a'; DROP TABLE articles; --\",\"title\":\"t\",\"body\":\"b\"}",
            422,
            "validation-failed",
        ),
        post(
            "over-long title",
            &format!("{{\"slug\":\"a\",\"title\":\"{long}\",\"body\":\"b\"}}"),
            422,
            "validation-failed",
        ),
        post(
            "nul in title",
            "{\"slug\":\"a\",\"title\":\"a\\u0000b\",\"body\":\"b\"}",
            422,
            "validation-failed",
        ),
        post(
            "too many tags",
            "{\"slug\":\"a\",\"title\":\"t\",\"body\":\"b\",\"tags\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\"]}",
            422,
            "validation-failed",
        ),
        post(
            "duplicate slug",
            "{\"slug\":\"kept\",\"title\":\"t\",\"body\":\"b\"}",
            409,
            "slug-taken",
        ),
        patch(
            "patch unknown field",
            "{\"slug\":\"other\"}",
            422,
            "schema-mismatch",
        ),
        patch(
            "patch empty title",
            "{\"title\":\"   \"}",
            422,
            "validation-failed",
        ),
        patch("patch nothing", "{}", 422, "validation-failed"),
        patch("patch wrong type", "{\"body\": 12}", 422, "schema-mismatch"),
        case(
            "bad slug in path",
            Method::PATCH,
            "/api/v1/articles/NOT_A_SLUG",
            "{\"title\":\"x\"}",
            400,
            "invalid-slug",
        ),
        case(
            "sql in path",
            Method::DELETE,
            "/api/v1/articles/x'%20OR%20'1'='1",
            "",
            400,
            "invalid-slug",
        ),
        case(
            "publish bad time",
            Method::POST,
            "/api/v1/articles/kept/publish",
            "{\"at\":\"tomorrow\"}",
            422,
            "schema-mismatch",
        ),
        case(
            "publish unknown field",
            Method::POST,
            "/api/v1/articles/kept/publish",
            "{\"when\":1}",
            422,
            "schema-mismatch",
        ),
        case(
            "schedule a published article",
            Method::POST,
            "/api/v1/articles/kept/publish",
            "{\"at\":\"2999-01-01T00:00:00Z\"}",
            409,
            "already-published",
        ),
    ];
    let mut oversize = post("oversize body", "", 413, "payload-too-large");
    oversize.body = format!(
        "{{\"slug\":\"a\",\"title\":\"t\",\"body\":\"{}\"}}",
        "y".repeat(8000)
    )
    .into_bytes();
    cases.push(oversize);
    let mut utf8 = post("invalid utf-8", "", 400, "invalid-utf8");
    utf8.body = b"{\"slug\":\"a\",\"title\":\"\xff\xfe\",\"body\":\"b\"}".to_vec();
    cases.push(utf8);
    let mut ctype = post(
        "wrong content type",
        "{\"slug\":\"a\",\"title\":\"t\",\"body\":\"b\"}",
        415,
        "unsupported-media-type",
    );
    ctype.content_type = Some("text/plain");
    cases.push(ctype);
    let mut no_ctype = post(
        "no content type",
        "{\"slug\":\"a\",\"title\":\"t\",\"body\":\"b\"}",
        415,
        "unsupported-media-type",
    );
    no_ctype.content_type = None;
    cases.push(no_ctype);
    let mut stale = patch(
        "stale if-match",
        "{\"title\":\"x\"}",
        412,
        "precondition-failed",
    );
    stale.if_match = false;
    cases.push(stale);

    let current_etag = srv
        .write(Method::GET, "/api/v1/articles/kept")
        .send()
        .await
        .expect("get")
        .headers()["etag"]
        .to_str()
        .expect("etag")
        .to_owned();
    for c in cases {
        let mut req = srv.write(c.method.clone(), &c.path).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        req = req.header(
            IF_MATCH,
            if c.if_match {
                current_etag.as_str()
            } else {
                "\"a999.1\""
            },
        );
        let res = req.send().await.expect("send");
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert_eq!(
            ct.as_deref(),
            Some("application/problem+json"),
            "{}",
            c.name
        );
        assert_eq!(
            body["type"],
            format!("urn:articles:problem:{}", c.problem),
            "{}: {body}",
            c.name
        );
        assert_eq!(body["status"], c.status, "{}", c.name);
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            c.name
        );
        assert_eq!(
            snapshot(&pool).await,
            before,
            "{} changed stored data",
            c.name
        );
    }

    // Bad query parameters on reads.
    for (path, problem) in [
        ("/api/v1/articles?limit=0", "invalid-query"),
        ("/api/v1/articles?limit=abc", "invalid-query"),
        ("/api/v1/articles?cursor=garbage", "invalid-query"),
        ("/api/v1/articles?tag=NOT%20A%20TAG", "invalid-query"),
        ("/api/v1/articles/Bad_Slug", "invalid-slug"),
        ("/api/v1/nothing-here", "not-found"),
    ] {
        let res = srv.get(path).await;
        assert!(res.status().is_client_error(), "{path}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(
            body["type"],
            format!("urn:articles:problem:{problem}"),
            "{path}"
        );
    }

    // SQL-shaped search text is only text.
    let res = srv
        .get("/api/v1/articles?q=%27%3B%20DROP%20TABLE%20articles%3B%20--")
        .await;
    assert_eq!(res.status(), 200);
    let res = srv
        .client
        .put(srv.url("/api/v1/articles"))
        .json(&json!({}))
        .send()
        .await
        .expect("put");
    assert_eq!(res.status(), 405);
    assert_eq!(snapshot(&pool).await, before);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_shaped_text_is_stored_verbatim() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    let title = "Robert'); DROP TABLE articles;--";
    let a = srv.create("bobby", title, "1' OR '1'='1", &[]).await;
    assert_eq!(a["title"], title);
    let pool = db_pool(&db).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM articles")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 1);
    srv.stop().await;
}
