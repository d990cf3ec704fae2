//! The database goes away and comes back, through a TCP proxy the test controls: requests
//! fail fast with 503 and Retry-After, probes say not ready, and the server recovers alone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::{TestServer, fresh_database, postgres, wait_until};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Forward,
    /// Refuse: close each new connection at once.
    Down,
    /// Accept and never answer: a database that hangs.
    Stall,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(Mutex::new(Mode::Forward));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (m, c) = (mode.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mode = *m.lock().expect("lock");
                let task = match mode {
                    Mode::Down => continue,
                    Mode::Stall => tokio::spawn(async move {
                        let _hold = client;
                        std::future::pending::<()>().await;
                    }),
                    Mode::Forward => tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }),
                };
                c.lock().expect("lock").push(task);
            }
        });
        Proxy {
            port,
            mode,
            conns,
            accept,
        }
    }

    /// A proxy in front of the test PostgreSQL, and `db`'s URL through it.
    pub async fn in_front_of(db: &str) -> (Proxy, String) {
        let proxy = Proxy::start(postgres().port).await;
        let via = db.replace(
            &format!(":{}/", postgres().port),
            &format!(":{}/", proxy.port),
        );
        (proxy, via)
    }

    /// Switches mode and cuts every open connection.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(Mode::Down);
    }
}

async fn outage(srv: &TestServer, proxy: &Proxy, mode: Mode) {
    proxy.set(mode);
    let unready = wait_until(Duration::from_secs(10), || async {
        srv.get("/readyz").await.status() == 503
    })
    .await;
    assert!(unready, "{mode:?}: readyz stayed 200");
    assert_eq!(
        srv.get("/livez").await.status(),
        200,
        "{mode:?}: still alive"
    );

    // A burst of reads: every one answered quickly with 503 + Retry-After, none queued.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let client = srv.client.clone();
        let url = srv.url(&format!("/api/v1/articles?q=w{i}"));
        tasks.push(tokio::spawn(async move {
            client.get(url).send().await.expect("request")
        }));
    }
    for t in tasks {
        let res = t.await.expect("task");
        assert_eq!(res.status(), 503, "{mode:?}");
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{mode:?}: took {:?}",
        started.elapsed()
    );

    proxy.set(Mode::Forward);
    srv.wait_ready().await;
    let res = srv.get("/api/v1/articles").await;
    assert_eq!(res.status(), 200, "{mode:?}: recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_sheds_fast_and_recovers() {
    let db = fresh_database().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    let srv = TestServer::start(
        &via_proxy,
        &[
            ("ARTICLES_CACHE_ENABLED", "false"),
            ("ARTICLES_DATABASE_TIMEOUT_MS", "400"),
            ("ARTICLES_DATABASE_POOL_SIZE", "3"),
        ],
    )
    .await;
    srv.create("a", "A", "b", &[]).await;
    srv.publish("a").await;

    outage(&srv, &proxy, Mode::Down).await;
    outage(&srv, &proxy, Mode::Stall).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_sheds_excess_requests_instead_of_queueing() {
    let db = fresh_database().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    // Pool of 1: at most 64 requests in flight (the floor of the derived cap).
    let srv = TestServer::start(
        &via_proxy,
        &[
            ("ARTICLES_CACHE_ENABLED", "false"),
            ("ARTICLES_DATABASE_TIMEOUT_MS", "2000"),
            ("ARTICLES_DATABASE_POOL_SIZE", "1"),
        ],
    )
    .await;
    proxy.set(Mode::Stall);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..150 {
        let client = srv.client.clone();
        let url = srv.url(&format!("/api/v1/articles?q=s{i}"));
        tasks.push(tokio::spawn(async move {
            let res = client.get(url).send().await.expect("request");
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.expect("problem");
            (status, body["type"].as_str().unwrap_or("").to_owned())
        }));
    }
    let mut shed = 0;
    for t in tasks {
        let (status, kind) = t.await.expect("task");
        assert_eq!(status, 503);
        if kind == "urn:articles:problem:overloaded" {
            shed += 1;
        }
    }
    assert!(shed > 0, "nothing was shed");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "requests queued: {:?}",
        started.elapsed()
    );
    assert!(srv.metric("articles_http_requests_shed_total", &[]).await >= f64::from(shed));
    proxy.set(Mode::Forward);
    srv.wait_ready().await;
    srv.stop().await;
}
