//! Ten replicas starting at once against an empty database all come up.

use article_server::db;

use crate::harness::{TestServer, db_pool, fresh_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_servers_starting_together_migrate_safely() {
    let db = fresh_database().await;
    let starts = (0..10).map(|_| {
        let db = db.clone();
        async move { TestServer::start(&db, &[]).await }
    });
    let servers = futures_join_all(starts).await;
    let pool = db_pool(&db).await;
    let (applied, ok): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE success) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .expect("migrations");
    let expected = db::MIGRATOR.iter().count() as i64;
    assert_eq!((applied, ok), (expected, expected));
    for s in servers {
        assert_eq!(s.get("/readyz").await.status(), 200);
        s.stop().await;
    }
}

async fn futures_join_all<F: std::future::Future<Output = TestServer> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<TestServer> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("start"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_is_live_but_not_ready_until_the_database_exists() {
    // A database that does not exist yet: live, not ready; then created: ready.
    let url = fresh_database().await;
    let missing = format!("{}_later", url);
    let srv = TestServer::start_unready(crate::harness::config(
        &missing,
        &[("ARTICLES_DATABASE_TIMEOUT_MS", "500")],
    ))
    .await;
    assert!(
        crate::harness::wait_until(std::time::Duration::from_secs(10), || async {
            srv.get("/livez").await.status() == 200
        })
        .await
    );
    assert_eq!(srv.get("/readyz").await.status(), 503);
    let res = srv.get("/api/v1/articles").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");

    let name = missing.rsplit('/').next().expect("name").to_owned();
    let admin = db_pool(&url).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create");
    srv.wait_ready().await;
    assert_eq!(srv.get("/api/v1/articles").await.status(), 200);
    srv.stop().await;
}
