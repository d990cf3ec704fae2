//! The real binary: start-up errors, and SIGTERM under load with a second server taking
//! over, without a failed request.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::harness::{TOKEN, client, fresh_database, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_article-server");

fn command(envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .envs(envs.iter().copied())
        .kill_on_drop(true)
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn bad_configuration_fails_at_start_with_a_clear_message() {
    let out = command(&[
        ("ARTICLES_WRITE_TOKEN", "short"),
        ("ARTICLES_DATABASE_POOL_SIZE", "many"),
    ])
    .output()
    .await
    .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "ARTICLES_WRITE_TOKEN: must be at least 32",
        "ARTICLES_DATABASE_POOL_SIZE",
        "ARTICLES_DATABASE_URL",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert!(!err.contains("short\""), "the token is not echoed: {err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

struct Proc {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(self.log.with_extension("pid"));
    }
}

fn spawn(db: &str, name: &str) -> Proc {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!(
        "article-server-it-{}-server-{name}.log",
        std::process::id()
    ));
    let file = std::fs::File::create(&log).expect("log file");
    let child = command(&[
        ("ARTICLES_DATABASE_URL", db),
        ("ARTICLES_WRITE_TOKEN", TOKEN),
        ("ARTICLES_LISTEN_ADDR", &addr),
        ("ARTICLES_DRAIN_DELAY_SECONDS", "3"),
        ("ARTICLES_SHUTDOWN_TIMEOUT_SECONDS", "8"),
        ("ARTICLES_CACHE_TTL_SECONDS", "1"),
        ("RUST_LOG", "info"),
    ])
    .stdout(file)
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn server");
    // Recorded so a later run can stop this server if this test process is killed.
    let pidfile = log.with_extension("pid");
    std::fs::write(
        &pidfile,
        child.id().map(|p| p.to_string()).unwrap_or_default(),
    )
    .expect("pid file");
    Proc {
        child,
        base: format!("http://{addr}"),
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_fails_no_request() {
    let db = fresh_database().await;
    let mut a = spawn(&db, "a");
    let b = spawn(&db, "b");
    let http = client();
    for p in [&a, &b] {
        let ok = wait_until(Duration::from_secs(30), || async {
            matches!(http.get(format!("{}/readyz", p.base)).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ok, "{} not ready", p.base);
    }
    let res = http
        .post(format!("{}/api/v1/articles", a.base))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "slug": "hot", "title": "Hot", "body": "b" }))
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    let res = http
        .post(format!("{}/api/v1/articles/hot/publish", a.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("publish");
    assert_eq!(res.status(), 200);

    // A stand-in for the Service: routes to backends whose /readyz passed on the last probe.
    let backends = Arc::new([a.base.clone(), b.base.clone()]);
    let ready = Arc::new([AtomicBool::new(true), AtomicBool::new(true)]);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (backends, ready, stop, http) =
            (backends.clone(), ready.clone(), stop.clone(), http.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                for (i, base) in backends.iter().enumerate() {
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_millis(500), http.get(format!("{base}/readyz")).send()).await,
                        Ok(Ok(r)) if r.status() == 200
                    );
                    ready[i].store(ok, Ordering::SeqCst);
                }
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for w in 0..6u64 {
        let (backends, ready, stop, http, sent, failures) = (
            backends.clone(),
            ready.clone(),
            stop.clone(),
            http.clone(),
            sent.clone(),
            failures.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let choices: Vec<usize> = (0..2).filter(|i| ready[*i].load(Ordering::SeqCst)).collect();
                let Some(&i) = choices.get((n as usize) % choices.len().max(1)) else {
                    failures.lock().expect("lock").push("no ready backend".into());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let base = &backends[i];
                let req = match n % 4 {
                    0 => http
                        .post(format!("{base}/api/v1/articles"))
                        .bearer_auth(TOKEN)
                        .json(&serde_json::json!({ "slug": format!("w{w}-{n}"), "title": "T", "body": "b" })),
                    1 => http.get(format!("{base}/articles/hot")),
                    2 => http.get(format!("{base}/api/v1/articles/hot")),
                    _ => http.get(format!("{base}/api/v1/articles?q=hot")),
                };
                sent.fetch_add(1, Ordering::SeqCst);
                match req.send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => failures.lock().expect("lock").push(format!("{base}: status {}", r.status())),
                    Err(e) => failures.lock().expect("lock").push(format!("{base}: {e}")),
                }
            }
        }));
    }

    // Let load run against both, then stop A with SIGTERM.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sent.load(Ordering::SeqCst) > 200
        })
        .await
    );
    let pid = a.child.id().expect("pid") as libc::pid_t;
    let signalled = Instant::now();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    // At once not ready, yet still serving during the drain delay.
    let unready = wait_until(Duration::from_millis(1500), || async {
        matches!(http.get(format!("{}/readyz", a.base)).send().await, Ok(r) if r.status() == 503)
    })
    .await;
    assert!(unready, "A did not report not-ready promptly");
    let during = http
        .get(format!("{}/api/v1/articles/hot", a.base))
        .send()
        .await
        .expect("served during drain");
    assert_eq!(during.status(), 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "checks ran inside the drain delay"
    );

    let status = tokio::time::timeout(Duration::from_secs(12), a.child.wait())
        .await
        .expect("A exits before its shutdown timeout")
        .expect("wait");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "A exits 0");
    assert!(
        took >= Duration::from_secs(3),
        "A kept serving for the drain delay ({took:?})"
    );

    // Keep the load on B a moment longer, then stop.
    let before = sent.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sent.load(Ordering::SeqCst) > before + 100
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.expect("load task");
    }
    prober.await.expect("prober");
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        sent.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );

    // Structured logs: JSON lines carrying the request id.
    let log = std::fs::read_to_string(&a.log).expect("log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "A logged JSON");
    assert!(
        lines.iter().any(|l| l["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
            && l["status"] == 200),
        "a request line with its request id"
    );
    assert!(lines.iter().any(|l| l["message"] == "stopped"));
    assert!(!log.contains(TOKEN), "no secret in the log");
}
