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

// ---------------------------------------------------------------------------------------
// A replicated pair for the failover tests: a primary and a streaming hot standby made with
// `pg_basebackup -R`, each its own postmaster on 127.0.0.1, private to one test (promote,
// stop and SIGSTOP are destructive). Same binaries and user switch as the shared server.

static NODE_PIDS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

extern "C" fn stop_nodes_at_exit() {
    if let Ok(pids) = NODE_PIDS.lock() {
        for pid in pids.iter() {
            // SAFETY: signalling postmasters this process started.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGCONT);
                libc::kill(*pid as libc::pid_t, libc::SIGQUIT);
            }
        }
    }
}

/// One postmaster of a [`Cluster`].
pub struct Node {
    pub port: u16,
    pub pid: u32,
    data: PathBuf,
    log: PathBuf,
}

impl Node {
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub async fn connect(&self, db: &str) -> PgConnection {
        PgConnection::connect(&self.url(db))
            .await
            .unwrap_or_else(|e| panic!("connect to port {}: {e}", self.port))
    }

    /// SIGSTOP: a frozen host. Its sockets stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// The postmaster and its children: a frozen host freezes every backend.
    fn signal_all(&self, sig: libc::c_int) {
        let mut pids = vec![self.pid];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.to_owned();
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if ppid == Some(self.pid) {
                pids.push(pid);
            }
        }
        for pid in pids {
            // SAFETY: signalling the postmaster we started and its children.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub primary: Node,
    pub standby: Option<Node>,
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("run {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Cluster {
    /// A primary with database `articles`, and, if asked, a hot standby streaming from it.
    /// Commits wait for the standby's flush (`synchronous_standby_names = '*'`), as with
    /// Patroni's synchronous mode, so a failover loses no acknowledged write.
    pub async fn start(with_standby: bool) -> Cluster {
        let c = tokio::task::spawn_blocking(move || Self::start_blocking(with_standby))
            .await
            .expect("cluster task")
            .unwrap_or_else(|e| panic!("cannot start the replicated cluster: {e}"));
        let mut admin = c.primary.connect("postgres").await;
        sqlx::raw_sql("CREATE DATABASE articles")
            .execute(&mut admin)
            .await
            .expect("create database");
        let _ = admin.close().await;
        c
    }

    fn start_blocking(with_standby: bool) -> Result<Cluster, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let bin = bindir()?;
        let user = run_as()?;
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-ha{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if let Some((uid, gid)) = user {
            chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        static HOOK: std::sync::Once = std::sync::Once::new();
        // SAFETY: registering a plain extern "C" function, once.
        HOOK.call_once(|| unsafe {
            libc::atexit(stop_nodes_at_exit);
        });
        let data = dir.join("primary");
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
            .arg(&data);
        as_user(&mut initdb, user);
        run(&mut initdb, "initdb")?;
        let mut cluster = Cluster {
            // Without a standby, a synchronous commit would wait forever.
            primary: Self::spawn(
                &bin,
                user,
                &dir,
                data,
                "primary",
                &[
                    "-c",
                    "wal_level=replica",
                    "-c",
                    if with_standby {
                        "synchronous_standby_names=*"
                    } else {
                        "synchronous_standby_names="
                    },
                ],
            )?,
            standby: None,
            dir: dir.clone(),
            bin: bin.clone(),
            user,
        };
        if with_standby {
            let sdata = dir.join("standby");
            let mut base = Command::new(bin.join("pg_basebackup"));
            base.args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-D",
            ])
            .arg(&sdata);
            as_user(&mut base, user);
            run(&mut base, "pg_basebackup")?;
            cluster.standby = Some(Self::spawn(
                &bin,
                user,
                &dir,
                sdata,
                "standby",
                &["-c", "hot_standby=on"],
            )?);
        }
        Ok(cluster)
    }

    fn spawn(
        bin: &Path,
        user: Option<(u32, u32)>,
        dir: &Path,
        data: PathBuf,
        name: &str,
        extra: &[&str],
    ) -> Result<Node, String> {
        let port = free_port()?;
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
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
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=100", "-c", "shared_buffers=32MB"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        as_user(&mut cmd, user);
        // SAFETY: as for the shared server: prctl in the child after the uid change.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
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
        NODE_PIDS.lock().map_err(|e| e.to_string())?.push(pid);
        let node = Node {
            port,
            pid,
            data,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
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
                return Ok(node);
            }
            if !pid_alive(pid) || Instant::now() > deadline {
                return Err(format!("{name} did not start:\n{}", node.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn standby(&self) -> &Node {
        self.standby.as_ref().expect("a cluster with a standby")
    }

    fn pg_ctl(&self, args: &[&str], data: &Path) -> Result<(), String> {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args(args).arg("-D").arg(data);
        as_user(&mut cmd, self.user);
        run(&mut cmd, &format!("pg_ctl {}", args.join(" ")))
    }

    /// A clean, fast shutdown of the primary (the standby receives everything first).
    pub fn stop_primary(&self) {
        self.pg_ctl(
            &["stop", "-m", "fast", "-w", "-t", "30"],
            &self.primary.data,
        )
        .expect("stop the primary");
    }

    /// `pg_ctl promote`, waiting until the standby accepts writes.
    pub fn promote_standby(&self) {
        self.pg_ctl(&["promote", "-w", "-t", "30"], &self.standby().data)
            .expect("promote the standby");
    }

    /// Waits until the standby has replayed everything the primary has written so far.
    pub async fn wait_replayed(&self) {
        let mut p = self.primary.connect("postgres").await;
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut p)
            .await
            .expect("primary lsn");
        let _ = p.close().await;
        let s = db_pool(&self.standby().url("postgres")).await;
        let ok = wait_until(Duration::from_secs(30), || async {
            sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                .bind(&lsn)
                .fetch_one(&s)
                .await
                .unwrap_or(false)
        })
        .await;
        assert!(ok, "the standby did not replay up to the primary");
        s.close().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in std::iter::once(&self.primary).chain(self.standby.as_ref()) {
            node.thaw();
            // SAFETY: SIGQUIT (immediate shutdown) to a postmaster this test started.
            unsafe {
                libc::kill(node.pid as libc::pid_t, libc::SIGQUIT);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A stand-in for the Kubernetes Service in front of the primary: new connections go to
/// the current target; connections already open stay with the old one (as conntrack keeps
/// them), unless cut.
pub struct ServiceProxy {
    pub port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl ServiceProxy {
    pub async fn start(target: u16) -> ServiceProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(target));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let (t, c) = (target.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = t.load(Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().expect("lock").push(task);
            }
        });
        ServiceProxy {
            port,
            target,
            conns,
            accept,
        }
    }

    /// The Service now selects `port`; open connections are kept.
    pub fn point_at(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    /// Resets every open connection (the old endpoint went away).
    pub fn cut(&self) {
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
