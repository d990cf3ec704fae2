//! The job queue: scheduled publication, lease expiry after a replica dies, and several
//! servers sharing the queue with no job done twice.

use std::time::Duration;

use article_server::db::{self, jobs};
use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestServer, config, db_pool, fresh_database, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_publication_happens_at_its_time() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    srv.create("later", "Later", "b", &[]).await;
    let at = (Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let res = srv
        .write(Method::POST, "/api/v1/articles/later/publish")
        .json(&json!({ "at": at }))
        .send()
        .await
        .expect("schedule");
    assert_eq!(res.status(), 200);
    let a: Value = res.json().await.expect("json");
    assert_eq!(a["status"], "scheduled");
    assert_eq!(
        srv.get("/api/v1/articles/later").await.status(),
        404,
        "not public before its time"
    );

    let published = wait_until(Duration::from_secs(15), || async {
        srv.get("/api/v1/articles/later").await.status() == 200
    })
    .await;
    assert!(published, "scheduled article never published");
    let a: Value = srv
        .get("/api/v1/articles/later")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(a["status"], "published");
    assert_eq!(a["published_at"].as_str().map(|s| s.len() > 10), Some(true));

    let pool = db_pool(&db).await;
    let (state, attempts): (String, i32) = sqlx::query_as("SELECT state, attempts FROM jobs")
        .fetch_one(&pool)
        .await
        .expect("job");
    assert_eq!((state.as_str(), attempts), ("done", 1));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_held_by_a_dead_replica_is_retried_after_its_lease() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    srv.create("orphan", "Orphan", "b", &[]).await;
    // Stop the only server, then schedule through the database as it would.
    srv.stop().await;
    let pool = db_pool(&db).await;
    let at = Utc::now() - chrono::Duration::seconds(1);
    sqlx::query("UPDATE articles SET status = 'scheduled', scheduled_at = date_trunc('milliseconds', $1::timestamptz)")
        .bind(at)
        .execute(&pool)
        .await
        .expect("schedule");
    let scheduled_at: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT scheduled_at FROM articles")
            .fetch_one(&pool)
            .await
            .expect("at");
    let mut tx = pool.begin().await.expect("tx");
    jobs::enqueue(
        &mut tx,
        jobs::KIND_PUBLISH_ARTICLE,
        &json!({ "article_id": 1, "scheduled_at": scheduled_at }),
        at,
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");

    // A replica claims the job with a 2 s lease, then dies without finishing it.
    let mut conn = pool.acquire().await.expect("connection");
    let claimed = jobs::claim(&mut conn, "dead-replica", Duration::from_secs(2))
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!(claimed.attempts, 1);
    assert!(
        jobs::claim(&mut conn, "other", Duration::from_secs(2))
            .await
            .expect("claim")
            .is_none(),
        "leased jobs are not handed out twice"
    );

    let srv = TestServer::start(&db, &[]).await;
    let done = wait_until(Duration::from_secs(15), || async {
        srv.get("/api/v1/articles/orphan").await.status() == 200
    })
    .await;
    assert!(done, "the orphaned job was not retried");
    let (state, attempts, locked_by): (String, i32, Option<String>) =
        sqlx::query_as("SELECT state, attempts, locked_by FROM jobs")
            .fetch_one(&pool)
            .await
            .expect("job");
    assert_eq!((state.as_str(), attempts, locked_by), ("done", 2, None));

    // The dead replica's late completion is fenced off: its lease (attempt 1) is gone.
    assert!(
        jobs::begin_fenced(&mut conn, &claimed)
            .await
            .expect("fence")
            .is_none()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_servers_share_the_queue_and_no_job_runs_twice() {
    const N: i64 = 150;
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
        "INSERT INTO articles (slug, title, body, status, scheduled_at) \
         SELECT 'job-' || i, 'Job ' || i, 'b', 'scheduled', date_trunc('milliseconds', now()) - interval '1 second' \
         FROM generate_series(1, $1) AS i",
    )
    .bind(N)
    .execute(&pool)
    .await
    .expect("seed articles");
    sqlx::query(
        "INSERT INTO jobs (kind, payload, run_at, visible_at) \
         SELECT 'publish_article', jsonb_build_object('article_id', id, 'scheduled_at', scheduled_at), scheduled_at, scheduled_at \
         FROM articles",
    )
    .execute(&pool)
    .await
    .expect("seed jobs");

    let opts = [("ARTICLES_JOB_POLL_INTERVAL_MS", "20")];
    let (a, b, c) = tokio::join!(
        TestServer::start(&db, &opts),
        TestServer::start(&db, &opts),
        TestServer::start(&db, &opts)
    );
    let all_done = wait_until(Duration::from_secs(30), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'done'")
            .fetch_one(&pool)
            .await
            .expect("count");
        left == 0
    })
    .await;
    assert!(all_done, "jobs left undone");

    let mut per_server = Vec::new();
    for s in [&a, &b, &c] {
        per_server.push(
            s.metric("articles_jobs_processed_total", &["outcome=\"done\""])
                .await,
        );
    }
    assert_eq!(
        per_server.iter().sum::<f64>(),
        N as f64,
        "each job done exactly once: {per_server:?}"
    );
    let twice: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE attempts <> 1")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(twice, 0, "a job was taken more than once");
    let published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM articles WHERE status = 'published' AND version = 2",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(published, N, "each article published once");
    eprintln!("jobs done per server: {per_server:?}");
    a.stop().await;
    b.stop().await;
    c.stop().await;
}
