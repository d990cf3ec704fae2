//! A PostgreSQL failover under the article server, on a real primary and a real streaming
//! hot standby (`harness::Cluster`), with a TCP proxy standing in for the write Service:
//! the write pool refuses a standby, a demoted server's connection is closed, writes come
//! back by themselves after a promotion, and reads are answered by the replica within the
//! staleness bound while the primary is down or frozen.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::harness::{Cluster, ServiceProxy, TOKEN, TestServer, db_pool, wait_until};

/// A short write hold, so that refusals are answered within a second or two.
const FAST: [(&str, &str); 3] = [
    ("ARTICLES_CACHE_ENABLED", "false"),
    ("ARTICLES_DATABASE_TIMEOUT_MS", "1000"),
    ("ARTICLES_WRITE_HOLD_MS", "300"),
];

fn with_replica<'a>(port: &'a str, max_lag: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut v = FAST.to_vec();
    v.extend([
        ("ARTICLES_DATABASE_READ_HOST", "127.0.0.1"),
        ("ARTICLES_DATABASE_READ_PORT", port),
        ("ARTICLES_READ_MAX_LAG_SECONDS", max_lag),
    ]);
    v
}

async fn try_create(srv: &TestServer, slug: &str) -> reqwest::Response {
    srv.client
        .post(srv.url("/api/v1/articles"))
        .bearer_auth(TOKEN)
        .json(&json!({ "slug": slug, "title": slug, "body": "text", "summary": "s", "tags": [] }))
        .send()
        .await
        .expect("request")
}

async fn problem_type(res: reqwest::Response) -> String {
    let body: Value = res.json().await.unwrap_or_default();
    body["type"].as_str().unwrap_or("").to_owned()
}

async fn app_connections(conn: &PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'article-server' ORDER BY pid",
    )
    .fetch_all(conn)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_host_in_recovery_is_refused_with_503_never_500() {
    let c = Cluster::start(true).await;
    let svc = ServiceProxy::start(c.primary.port).await;
    let srv = TestServer::start(&svc.url("articles"), &FAST).await;
    srv.create_published("before", "Before", "body", &[]).await;
    c.wait_replayed().await;

    // The Service now selects the standby and the old connections are gone.
    svc.point_at(c.standby().port);
    svc.cut();
    for i in 0..4 {
        let res = try_create(&srv, &format!("refused-{i}")).await;
        assert_eq!(res.status(), 503, "write {i}");
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(
            problem_type(res).await,
            "urn:articles:problem:database-failing-over",
            "write {i}"
        );
    }
    let read = srv.get("/api/v1/articles/before").await;
    assert_eq!(
        read.status(),
        503,
        "no read replica configured: reads refuse too"
    );
    assert!(srv.metric("articles_db_standby_refused_total", &[]).await >= 1.0);
    let ready = srv.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.expect("json")["reason"],
        "database failing over"
    );

    // The pool holds no connection to the standby: each one was closed as it was made.
    let standby = db_pool(&c.standby().url("postgres")).await;
    let none_left = wait_until(Duration::from_secs(5), || async {
        app_connections(&standby).await.is_empty()
    })
    .await;
    assert!(none_left, "the write pool kept a connection to a standby");
    let mut articles = c.standby().connect("articles").await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT slug FROM articles ORDER BY slug")
        .fetch_all(&mut articles)
        .await
        .expect("articles");
    assert_eq!(stored, ["before"], "nothing was written");
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_a_promotion_is_held_and_lands_instead_of_a_503() {
    let c = Cluster::start(true).await;
    let svc = ServiceProxy::start(c.primary.port).await;
    let srv = TestServer::start(
        &svc.url("articles"),
        &[
            ("ARTICLES_CACHE_ENABLED", "false"),
            ("ARTICLES_DATABASE_TIMEOUT_MS", "1000"),
            ("ARTICLES_WRITE_HOLD_MS", "8000"),
            ("ARTICLES_REQUEST_TIMEOUT_MS", "15000"),
        ],
    )
    .await;
    srv.create_published("before", "Before", "body", &[]).await;
    c.wait_replayed().await;

    // The write Service selects the standby while it is still in recovery (as after a
    // failover, before the promotion): the write finds no primary and is held.
    svc.point_at(c.standby().port);
    svc.cut();
    let sent = Instant::now();
    let write = {
        let (client, url) = (srv.client.clone(), srv.url("/api/v1/articles"));
        tokio::spawn(async move {
            let res = client
                .post(url)
                .bearer_auth(TOKEN)
                .json(&json!({ "slug": "held", "title": "t", "body": "b", "summary": "s", "tags": [] }))
                .send()
                .await
                .expect("request");
            (Instant::now(), res.status().as_u16())
        })
    };
    let refused = wait_until(Duration::from_secs(5), || async {
        srv.metric("articles_db_standby_refused_total", &[]).await >= 1.0
    })
    .await;
    assert!(refused, "the write never reached the standby");
    // An observation window, not a wait for a condition: past the database timeout (1 s)
    // an unheld write would have been answered 503 already.
    tokio::time::sleep_until((sent + Duration::from_millis(1500)).into()).await;
    assert!(
        !write.is_finished(),
        "the write was answered instead of held"
    );

    let c = &c;
    tokio::task::block_in_place(|| c.promote_standby());
    let promoted = Instant::now();
    let (answered, status) = write.await.expect("writer");
    assert_eq!(status, 201, "the held write landed on the new primary");
    assert!(answered >= promoted, "answered before the promotion");
    assert_eq!(
        srv.metric("articles_db_writes_held_total", &["outcome=\"ran\""])
            .await,
        1.0
    );
    let mut new_primary = c.standby().connect("articles").await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT slug FROM articles ORDER BY slug")
        .fetch_all(&mut new_primary)
        .await
        .expect("articles");
    assert_eq!(stored, ["before", "held"], "written once");
    drop(srv);
}

/// One write: when it was answered, the status, whether Retry-After came with it, the slug.
type Answer = (Instant, u16, bool, String);

/// A writer that posts articles one after another and records every answer.
struct Writer {
    log: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(srv: &TestServer) -> Writer {
        let log: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, url) = (srv.client.clone(), srv.url("/api/v1/articles"));
        let (l, s) = (log.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut n = 0;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let slug = format!("w{n}");
                let res = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .json(&json!({ "slug": slug, "title": "t", "body": "b", "summary": "s", "tags": [] }))
                    .send()
                    .await;
                let (status, retry_after) = match &res {
                    Ok(r) => (r.status().as_u16(), r.headers().contains_key("retry-after")),
                    Err(_) => (0, false),
                };
                l.lock()
                    .expect("lock")
                    .push((Instant::now(), status, retry_after, slug));
                if status != 201 {
                    // A client that honours Retry-After would wait a second; this one
                    // retries at once, to measure the recovery closely.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Writer { log, stop, task }
    }

    fn first_success_after(&self, t: Instant) -> Option<Instant> {
        self.log
            .lock()
            .expect("lock")
            .iter()
            .find(|(at, status, ..)| *at > t && *status == 201)
            .map(|(at, ..)| *at)
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("writer");
        Arc::try_unwrap(self.log)
            .expect("sole owner")
            .into_inner()
            .expect("lock")
    }
}

async fn failover_under_writes(frozen: bool) {
    let kind = if frozen { "frozen" } else { "stopped" };
    let c = Cluster::start(true).await;
    let svc = ServiceProxy::start(c.primary.port).await;
    let srv = TestServer::start(&svc.url("articles"), &FAST).await;
    let writer = Writer::start(&srv);
    let steady = wait_until(Duration::from_secs(10), || async {
        writer
            .first_success_after(Instant::now() - Duration::from_secs(60))
            .is_some()
    })
    .await;
    assert!(steady, "no write succeeded before the fault");

    // The fault, then what Patroni does: promote the standby, move the Service.
    let fault = Instant::now();
    if frozen {
        // Connections already open stay with the frozen host, as conntrack keeps them.
        c.primary.freeze();
    } else {
        let c = &c;
        tokio::task::block_in_place(|| c.stop_primary());
    }
    let c = &c;
    tokio::task::block_in_place(|| c.promote_standby());
    svc.point_at(c.standby().port);
    let promoted = Instant::now();

    let recovered = wait_until(Duration::from_secs(30), || async {
        writer.first_success_after(promoted).is_some()
    })
    .await;
    let log = writer.finish().await;
    assert!(
        recovered,
        "{kind}: writes did not come back within 30 s of the promotion"
    );
    let back = log
        .iter()
        .find(|(at, status, ..)| *at > promoted && *status == 201)
        .map(|(at, ..)| *at)
        .expect("a write after the promotion");
    let failed = log.iter().filter(|(_, s, ..)| *s != 201).count();
    println!(
        "failover ({kind} primary): writes back {:.2} s after the fault, {:.2} s after the promotion \
         and Service switch; {} writes acknowledged, {failed} refused with 503",
        (back - fault).as_secs_f64(),
        (back - promoted).as_secs_f64(),
        log.len() - failed,
    );
    assert!(
        back - promoted < Duration::from_secs(10),
        "{kind}: recovery took {:?}",
        back - promoted
    );
    for (_, status, retry_after, slug) in &log {
        assert!(
            *status == 201 || (*status == 503 && *retry_after),
            "{kind}: {slug} answered {status} (retry-after: {retry_after})"
        );
    }

    // Every acknowledged article is on the new primary.
    let mut new_primary = c.standby().connect("articles").await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT slug FROM articles")
        .fetch_all(&mut new_primary)
        .await
        .expect("articles");
    let lost: Vec<&String> = log
        .iter()
        .filter(|(_, s, ..)| *s == 201)
        .map(|(.., slug)| slug)
        .filter(|slug| !stored.contains(slug))
        .collect();
    assert!(lost.is_empty(), "{kind}: acknowledged but lost: {lost:?}");
    c.primary.thaw();
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_come_back_by_themselves_after_the_primary_stops_and_the_standby_is_promoted() {
    failover_under_writes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_come_back_by_themselves_after_the_primary_freezes_and_the_standby_is_promoted() {
    failover_under_writes(true).await;
}

const READ_PATHS: [&str; 5] = [
    "/articles/a",
    "/api/v1/articles/a",
    "/",
    "/feed.xml",
    "/api/v1/articles",
];

/// Reads every path until `window` has passed; returns (answered from the replica, total,
/// slowest).
async fn read_through(srv: &TestServer, window: Duration) -> (usize, usize, Duration) {
    let started = Instant::now();
    let (mut ok, mut total, mut slowest) = (0, 0, Duration::ZERO);
    while started.elapsed() < window {
        for path in READ_PATHS {
            let t = Instant::now();
            let res = srv.get(path).await;
            slowest = slowest.max(t.elapsed());
            total += 1;
            let from_replica = res
                .headers()
                .get("x-served-from")
                .is_some_and(|v| v == "replica");
            if res.status() == 200 && from_replica {
                ok += 1;
            } else {
                println!("  {path}: {} replica={from_replica}", res.status());
            }
        }
    }
    (ok, total, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_come_from_the_replica_while_the_primary_is_stopped_until_the_bound() {
    let c = Cluster::start(true).await;
    let port = c.standby().port.to_string();
    let srv = TestServer::start(&c.primary.url("articles"), &with_replica(&port, "4")).await;
    srv.create_published("a", "A", "body", &[]).await;
    c.wait_replayed().await;
    let res = srv.get("/articles/a").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("x-served-from").is_none(),
        "the primary answers while it is up"
    );

    // The last time the server reached the primary: the bound counts from here.
    let last_primary = Instant::now();
    let c = &c;
    tokio::task::block_in_place(|| c.stop_primary());
    let stopped = Instant::now();
    let (ok, total, slowest) = read_through(&srv, Duration::from_millis(2500)).await;
    println!(
        "primary stopped: {ok}/{total} reads answered 200 from the replica in the first 2.5 s \
         (availability {:.1}%), slowest {} ms",
        100.0 * ok as f64 / total as f64,
        slowest.as_millis()
    );
    assert_eq!(ok, total, "reads failed while the replica could serve them");
    let res = srv.get("/api/v1/articles/a").await;
    let staleness: f64 = res.headers()["x-replica-staleness-seconds"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(staleness <= 4.0, "staleness {staleness}");
    let ready = srv.get("/readyz").await;
    assert_eq!(
        ready.status(),
        200,
        "ready, degraded: the pod still serves reads"
    );
    assert!(ready.json::<Value>().await.expect("json")["degraded"].is_string());
    let write = try_create(&srv, "during").await;
    assert_eq!(write.status(), 503, "writes never go to a replica");
    assert!(srv.metric("articles_db_replica_reads_total", &[]).await >= ok as f64);

    // Not streaming any more, the replica may miss what was written since the server last
    // reached the primary: past the bound it is refused.
    let refused_at = std::cell::Cell::new(None);
    let refused = wait_until(Duration::from_secs(15), || async {
        let res = srv.get("/api/v1/articles/a").await;
        let status = res.status();
        let kind = problem_type(res).await;
        if status == 503 && kind == "urn:articles:problem:replica-too-stale" {
            refused_at.set(Some((stopped.elapsed(), last_primary.elapsed())));
            true
        } else {
            false
        }
    })
    .await;
    assert!(refused, "a replica beyond the bound kept answering");
    let (after_stop, after_primary) = refused_at.get().expect("time");
    println!(
        "primary stopped: replica refused {:.2} s after the stop, {:.2} s after the server last \
         reached the primary (bound 4 s)",
        after_stop.as_secs_f64(),
        after_primary.as_secs_f64()
    );
    assert!(
        after_primary >= Duration::from_millis(3900),
        "refused before the bound: {after_primary:?}"
    );
    assert!(
        after_primary <= Duration::from_secs(7),
        "refused long after the bound: {after_primary:?}"
    );
    assert!(srv.metric("articles_db_replica_refused_total", &[]).await >= 1.0);
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_come_from_a_streaming_replica_while_the_primary_is_frozen() {
    let c = Cluster::start(true).await;
    let port = c.standby().port.to_string();
    let srv = TestServer::start(&c.primary.url("articles"), &with_replica(&port, "2")).await;
    srv.create_published("a", "A", "body", &[]).await;
    c.wait_replayed().await;

    c.primary.freeze();
    // Twice the bound: a replica that streams and has applied all it received is as
    // current as the primary, however long since the last write.
    let (ok, total, slowest) = read_through(&srv, Duration::from_secs(4)).await;
    println!(
        "primary frozen: {ok}/{total} reads answered 200 from the streaming replica over 4 s \
         (availability {:.1}%), slowest {} ms",
        100.0 * ok as f64 / total as f64,
        slowest.as_millis()
    );
    assert_eq!(ok, total);
    // A hung primary answers nothing: each read gives it half the database timeout (1 s
    // here) and the replica the rest, so no read waits the whole timeout on the primary
    // (before, the first reads waited the full 1,000 ms and then asked the replica).
    assert!(
        slowest < Duration::from_millis(1000),
        "a read waited {} ms with the primary frozen (database timeout 1,000 ms)",
        slowest.as_millis()
    );
    assert_eq!(
        srv.get("/api/v1/articles/a").await.headers()["x-replica-staleness-seconds"],
        "0.0"
    );
    // The kubelet waits 2 s for /readyz and takes the pod out of its Service after two late
    // answers: with the primary frozen the probe must still answer in time, and ready.
    let t = Instant::now();
    let ready = srv.get("/readyz").await;
    let took = t.elapsed();
    println!(
        "primary frozen: /readyz answered {} in {} ms",
        ready.status(),
        took.as_millis()
    );
    assert_eq!(ready.status(), 200);
    assert!(
        took < Duration::from_secs(2),
        "/readyz took {} ms",
        took.as_millis()
    );

    // Thawed, the primary answers again and the replica is no longer asked.
    c.primary.thaw();
    let back = wait_until(Duration::from_secs(15), || async {
        let res = srv.get("/articles/a").await;
        res.status() == 200 && res.headers().get("x-served-from").is_none()
    })
    .await;
    assert!(back, "reads did not return to the primary after the thaw");

    // Now a replica that received WAL it has not applied: behind by the age of its newest
    // applied commit, refused once that passes the bound.
    let standby = db_pool(&c.standby().url("postgres")).await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .expect("pause replay");
    srv.create_published("late", "Late", "body", &[]).await;
    let behind = wait_until(Duration::from_secs(15), || async {
        {
            sqlx::query_scalar::<_, bool>(
                "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn() \
                 AND now() - pg_last_xact_replay_timestamp() > interval '2.5 seconds'",
            )
            .fetch_one(&standby)
            .await
            .unwrap_or(false)
        }
    })
    .await;
    assert!(behind, "the standby did not fall behind");
    c.primary.freeze();
    let page = srv.get("/articles/a").await;
    assert_eq!(page.status(), 503, "the page refuses too (as HTML)");
    let res = srv.get("/api/v1/articles/a").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.expect("problem");
    assert_eq!(body["type"], "urn:articles:problem:replica-too-stale");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("applying WAL"),
        "{body}"
    );
    c.primary.thaw();
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_hits_25006_closes_its_connection() {
    let c = Cluster::start(false).await;
    let mut overrides = FAST.to_vec();
    overrides.push(("ARTICLES_DATABASE_POOL_SIZE", "1"));
    let srv = TestServer::start(&c.primary.url("articles"), &overrides).await;
    srv.create("one", "One", "body", &[]).await;
    let admin = db_pool(&c.primary.url("articles")).await;
    let before = app_connections(&admin).await;
    assert_eq!(before.len(), 1, "one pooled connection: {before:?}");

    // The server turns read-only under the open connection (a demotion, or a fence).
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("read-only");
    }
    // `pg_reload_conf` only signals the backends: the pooled one applies the setting when it
    // takes the signal, a moment later. Until then a write still commits (201).
    let mut refused = None;
    // Those answered 201 before the backend took the signal: acknowledged, so stored.
    let mut acknowledged = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for n in 0.. {
        let slug = format!("two-{n}");
        let res = try_create(&srv, &slug).await;
        match res.status().as_u16() {
            503 => {
                refused = Some(res);
                break;
            }
            201 if tokio::time::Instant::now() < deadline => {
                acknowledged.push(slug);
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("a write answered {other} while the server turned read-only"),
        }
    }
    let res = refused.expect("a refused write");
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.expect("problem");
    assert_eq!(body["type"], "urn:articles:problem:database-failing-over");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("failing over")
    );
    assert_eq!(
        srv.metric("articles_db_read_only_closed_total", &[]).await,
        1.0
    );
    let closed = wait_until(Duration::from_secs(5), || async {
        !app_connections(&admin).await.contains(&before[0])
    })
    .await;
    assert!(closed, "the connection that saw 25006 is still open");
    // While read-only, new connections are refused as they are made.
    let res = try_create(&srv, "three").await;
    assert_eq!(res.status(), 503);

    for sql in [
        "ALTER SYSTEM RESET default_transaction_read_only",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("read-write");
    }
    let writable = wait_until(Duration::from_secs(10), || async {
        try_create(&srv, "four").await.status() == 201
    })
    .await;
    assert!(writable, "writes did not come back");
    let after = app_connections(&admin).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(
        after[0], before[0],
        "the pool handed out the demoted connection again"
    );
    let stored: Vec<String> = sqlx::query_scalar("SELECT slug FROM articles ORDER BY slug")
        .fetch_all(&admin)
        .await
        .expect("articles");
    let mut expected: Vec<String> = ["four", "one"].map(String::from).to_vec();
    expected.extend(acknowledged);
    expected.sort();
    assert_eq!(
        stored, expected,
        "the acknowledged writes are stored, the refused ones are not"
    );
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_on_the_replica_comes_before_a_stale_entry_and_a_stale_entry_after_it() {
    let c = Cluster::start(true).await;
    let port = c.standby().port.to_string();
    let mut overrides = with_replica(&port, "3");
    overrides.retain(|(k, _)| *k != "ARTICLES_CACHE_ENABLED");
    let srv = TestServer::start(&c.primary.url("articles"), &overrides).await;
    srv.wait_coherent().await;
    srv.create_published("a", "A", "body", &[]).await;
    for expected in ["miss", "hit"] {
        let res = srv.get("/api/v1/articles/a").await;
        assert_eq!(res.headers()["x-cache"], expected);
    }
    c.wait_replayed().await;

    let c = &c;
    tokio::task::block_in_place(|| c.stop_primary());
    // Once the change listener has noticed, the cache is suspended: the replica answers,
    // and what it answers is not stored.
    let from_replica = wait_until(Duration::from_secs(10), || async {
        let res = srv.get("/api/v1/articles/a").await;
        res.status() == 200
            && res
                .headers()
                .get("x-served-from")
                .is_some_and(|v| v == "replica")
    })
    .await;
    assert!(from_replica, "the replica never answered");
    let res = srv.get("/api/v1/articles/a").await;
    assert_eq!(res.headers()["x-cache"], "bypass");

    // Past the bound the replica is refused, and the entry still held is served stale
    // instead of a 503.
    let stale = wait_until(Duration::from_secs(15), || async {
        let res = srv.get("/api/v1/articles/a").await;
        res.status() == 200
            && res.headers()["x-cache"] == "stale"
            && res.headers().get("x-served-from").is_none()
    })
    .await;
    assert!(stale, "no stale entry after the replica was refused");
    assert!(srv.metric("articles_db_replica_refused_total", &[]).await >= 1.0);
    // Nothing cached for this one: a refused replica and no entry is a 503.
    let res = srv.get("/api/v1/articles?limit=7").await;
    assert_eq!(res.status(), 503);
    drop(srv);
}
