//! Many writers on two servers: optimistic concurrency loses no update.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::IF_MATCH;
use serde_json::{Value, json};

use crate::harness::{TestServer, fresh_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_write_loses_no_update() {
    const WRITERS: usize = 8;
    const EDITS: usize = 8;
    let db = fresh_database().await;
    let a = TestServer::start(&db, &[]).await;
    let b = TestServer::start(&db, &[]).await;
    a.create("shared", "Shared", "start", &[]).await;

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let srv = if w % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        tasks.push(tokio::spawn(async move {
            let client = crate::harness::client();
            let mut conflicts = 0u32;
            for e in 0..EDITS {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(tokio::time::Instant::now() < deadline, "writer {w} starved");
                    let cur = client
                        .get(format!("{srv}/api/v1/articles/shared"))
                        .bearer_auth(crate::harness::TOKEN)
                        .send()
                        .await
                        .expect("get");
                    let etag = cur.headers()["etag"].to_str().expect("etag").to_owned();
                    let body: Value = cur.json().await.expect("json");
                    let text = format!("{}\nw{w}-e{e}", body["body"].as_str().expect("body"));
                    let res = client
                        .request(Method::PATCH, format!("{srv}/api/v1/articles/shared"))
                        .bearer_auth(crate::harness::TOKEN)
                        .header(IF_MATCH, etag)
                        .json(&json!({ "body": text }))
                        .send()
                        .await
                        .expect("patch");
                    match res.status().as_u16() {
                        200 => break,
                        412 => conflicts += 1,
                        s => panic!("unexpected status {s}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.expect("writer");
    }
    let own = a
        .write(Method::GET, "/api/v1/articles/shared")
        .send()
        .await
        .expect("get");
    let article: Value = own.json().await.expect("json");
    let lines: Vec<&str> = article["body"]
        .as_str()
        .expect("body")
        .lines()
        .skip(1)
        .collect();
    assert_eq!(lines.len(), WRITERS * EDITS, "every edit is kept");
    for w in 0..WRITERS {
        for e in 0..EDITS {
            assert!(
                lines.contains(&format!("w{w}-e{e}").as_str()),
                "w{w}-e{e} lost"
            );
        }
    }
    assert_eq!(article["version"], (1 + WRITERS * EDITS) as u64);
    assert!(conflicts > 0, "the writers did contend");
    a.stop().await;
    b.stop().await;
}
