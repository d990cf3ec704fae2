//! Test harness: one real PostgreSQL server per test binary, one database per test, and
//! article servers started in-process (or as child processes) against it.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
//! `postgres` system user (Debian's package creates it) in a data directory under /tmp
//! owned by that user. The postmaster is tied to this process twice over: an `atexit` hook
//! stops it and deletes its directory when the tests end, and `PR_SET_PDEATHSIG` kills it
//! if this process dies without running that hook. Directories left by killed runs are
//! removed by the next run.

#![allow(dead_code)]

use std::collections::HashMap;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use article_server::Config;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-token-0123456789abcdef0123456789";
const DIR_PREFIX: &str = "article-server-it-";

pub struct Postgres {
    pub port: u16,
    pid: u32,
    dir: PathBuf,
}

static PG: OnceLock<Postgres> = OnceLock::new();
static PG_PID: AtomicU32 = AtomicU32::new(0);
static PG_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The shared server, started on first use.
pub fn postgres() -> &'static Postgres {
    PG.get_or_init(|| {
        start_postgres().unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"))
    })
}

fn bindir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if bin.join("initdb").exists() && bin.join("postgres").exists() {
            return Ok(bin);
        }
    }
    Err(
        "initdb and postgres not found under /usr/lib/postgresql/*/bin or `pg_config --bindir`: \
         install postgresql (make deps)"
            .into(),
    )
}

/// uid and gid of the `postgres` user, when we are root and must switch to it.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| {
            "running as root but there is no `postgres` user: install postgresql (make deps)".into()
        })
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        // std drops supplementary groups before setuid when run as root.
        cmd.uid(uid).gid(gid);
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes directories and logs of earlier runs whose process is gone (killed before its
/// hook ran).
fn remove_stale_dirs() {
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let owner: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if owner.is_some_and(|p| !pid_alive(p)) {
            let path = entry.path();
            // A server process a killed run left behind: stop it by its recorded pid.
            if path.extension().is_some_and(|e| e == "pid")
                && let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("article-server"))
            {
                // SAFETY: sending a signal to a pid we started and recorded.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
        }
    }
}

extern "C" fn stop_postgres_at_exit() {
    let pid = PG_PID.load(Ordering::SeqCst);
    if pid != 0 {
        // SAFETY: signalling our own child; SIGQUIT is PostgreSQL's immediate shutdown.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_alive(pid) && Instant::now() < deadline {
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe {
                libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if let Some(dir) = PG_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn start_postgres() -> Result<Postgres, String> {
    let bin = bindir()?;
    let user = run_as()?;
    remove_stale_dirs();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let _ = PG_DIR.set(dir.clone());
    // SAFETY: registering a plain extern "C" function.
    unsafe {
        libc::atexit(stop_postgres_at_exit);
    }
    if let Some((uid, gid)) = user {
        chown(&dir, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let data = dir.join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_user(&mut initdb, user);
    let out = initdb.output().map_err(|e| format!("run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        let log_path = dir.join(format!("postgres-{port}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1"])
            .args([
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
            ])
            .args([
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=64MB",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        as_user(&mut cmd, user);
        // SAFETY: prctl is async-signal-safe; it runs in the child after the uid change,
        // which would otherwise clear it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The death signal fires when the spawning *thread* exits, so spawn from a thread
        // that lives as long as the process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = cmd.spawn();
            let ok = child.is_ok();
            let _ = tx.send(child.map(|c| c.id()).map_err(|e| e.to_string()));
            if ok {
                loop {
                    std::thread::park();
                }
            }
        });
        let pid = rx.recv().map_err(|e| e.to_string())??;
        PG_PID.store(pid, Ordering::SeqCst);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(Postgres { port, pid, dir });
            }
            if !pid_alive(pid) || Instant::now() > deadline {
                last = std::fs::read_to_string(&log_path).unwrap_or_default();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Err(format!("postgres did not start; its log:\n{last}"))
}

impl Postgres {
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

/// A new, empty database for one test.
pub async fn fresh_database() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let pg = postgres();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connect as admin");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let _ = admin.close().await;
    pg.url(&name)
}

pub async fn db_pool(url: &str) -> PgPool {
    PgPool::connect(url)
        .await
        .expect("connect to test database")
}

/// Settings for a test server: the required ones, fast timings, and `overrides`.
pub fn config(db_url: &str, overrides: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = [
        ("ARTICLES_DATABASE_URL", db_url),
        ("ARTICLES_WRITE_TOKEN", TOKEN),
        ("ARTICLES_LISTEN_ADDR", "127.0.0.1:0"),
        ("ARTICLES_DRAIN_DELAY_SECONDS", "0"),
        ("ARTICLES_SHUTDOWN_TIMEOUT_SECONDS", "10"),
        ("ARTICLES_JOB_POLL_INTERVAL_MS", "100"),
        ("ARTICLES_PUBLIC_URL", "http://test.example"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        vars.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|k| vars.get(k).cloned()).expect("valid test config")
}

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), article_server::RunError>>>,
}

impl TestServer {
    /// Starts a server in this process and waits until it is ready.
    pub async fn start(db_url: &str, overrides: &[(&str, &str)]) -> TestServer {
        let s = Self::start_unready(config(db_url, overrides)).await;
        s.wait_ready().await;
        s
    }

    pub async fn start_unready(config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(article_server::run(config, listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            base,
            client: client(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn wait_ready(&self) {
        let ok = wait_until(Duration::from_secs(30), || async {
            matches!(self.client.get(self.url("/readyz")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ok, "server at {} did not become ready", self.base);
    }

    /// Waits until the change listener has subscribed: only then does the cache store and
    /// serve entries.
    pub async fn wait_coherent(&self) {
        let ok = wait_until(Duration::from_secs(30), || async {
            self.metric("articles_cache_resyncs_total", &[]).await >= 1.0
        })
        .await;
        assert!(ok, "server at {} never subscribed to changes", self.base);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub fn write(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
    }

    /// Creates an article and returns its JSON.
    pub async fn create(
        &self,
        slug: &str,
        title: &str,
        body: &str,
        tags: &[&str],
    ) -> serde_json::Value {
        let res = self
            .write(reqwest::Method::POST, "/api/v1/articles")
            .json(&serde_json::json!({ "slug": slug, "title": title, "body": body, "tags": tags, "summary": format!("about {title}") }))
            .send()
            .await
            .expect("create");
        assert_eq!(
            res.status(),
            201,
            "create {slug}: {}",
            res.text().await.unwrap_or_default()
        );
        res.json().await.expect("json")
    }

    /// Creates an article and publishes it at once.
    pub async fn create_published(&self, slug: &str, title: &str, body: &str, tags: &[&str]) {
        self.create(slug, title, body, tags).await;
        self.publish(slug).await;
    }

    pub async fn publish(&self, slug: &str) -> serde_json::Value {
        let res = self
            .write(
                reqwest::Method::POST,
                &format!("/api/v1/articles/{slug}/publish"),
            )
            .send()
            .await
            .expect("publish");
        assert_eq!(res.status(), 200, "publish {slug}");
        res.json().await.expect("json")
    }

    /// Reads a metric's value from `/metrics` (the sum over series matching `labels`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.get("/metrics").await.text().await.expect("metrics");
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops in time");
            r.expect("server task").expect("server run");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
    }
}

/// Everything stored, as text: compared before and after a bad request.
pub async fn snapshot(pool: &PgPool) -> String {
    let articles: Option<String> = sqlx::query_scalar(
        "SELECT jsonb_agg(to_jsonb(a) - 'search' ORDER BY id)::text FROM articles a",
    )
    .fetch_one(pool)
    .await
    .expect("snapshot articles");
    let jobs: Option<String> =
        sqlx::query_scalar("SELECT jsonb_agg(to_jsonb(j) ORDER BY id)::text FROM jobs j")
            .fetch_one(pool)
            .await
            .expect("snapshot jobs");
    format!(
        "{}\n{}",
        articles.unwrap_or_default(),
        jobs.unwrap_or_default()
    )
}
