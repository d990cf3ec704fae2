//! Configuration from `ARTICLES_*` environment variables. The operator sets exactly these
//! names; `docs/article-server.md` documents each one.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

/// Every problem found, so one start-up attempt reports them all.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Where the database is: a full URL for local use, or the parts the operator sets.
#[derive(Clone)]
pub enum DatabaseConfig {
    Url(String),
    Parts {
        host: String,
        port: u16,
        name: String,
        user: String,
        password: String,
    },
}

impl fmt::Debug for DatabaseConfig {
    // Never print the password or a URL that may hold one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(_) => f.write_str("Url(<redacted>)"),
            Self::Parts {
                host,
                port,
                name,
                user,
                ..
            } => f
                .debug_struct("Parts")
                .field("host", host)
                .field("port", port)
                .field("name", name)
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

/// The optional read-only fallback: the replicas' Service (see `db::failover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReplicaConfig {
    pub host: String,
    /// `None`: the write connection's port.
    pub port: Option<u16>,
    /// Answers older than this are refused rather than served (`db::failover::staleness`).
    pub max_lag: Duration,
}

impl DatabaseConfig {
    /// The same database, user and password as the write connection, on the replicas' host.
    pub fn read_options(
        &self,
        replica: &ReadReplicaConfig,
    ) -> Result<PgConnectOptions, sqlx::Error> {
        let options = self.connect_options()?.host(&replica.host);
        Ok(match replica.port {
            Some(port) => options.port(port),
            None => options,
        })
    }

    /// Connection options without start-up parameters; the caller adds timeouts.
    pub fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        match self {
            Self::Url(url) => PgConnectOptions::from_str(url),
            Self::Parts {
                host,
                port,
                name,
                user,
                password,
            } => Ok(PgConnectOptions::new_without_pgpass()
                .host(host)
                .port(*port)
                .database(name)
                .username(user)
                .password(password)),
        }
    }
}

/// The bearer token for writes. Debug output never shows it.
#[derive(Clone)]
pub struct WriteToken(pub String);

impl fmt::Debug for WriteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WriteToken(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub ttl: Duration,
    /// The bound on memory: bodies, their compressed copies, keys.
    pub max_bytes: usize,
    /// An extra bound on the number of entries, only if `ARTICLES_CACHE_MAX_ENTRIES` is set
    /// (the variable of older versions, still accepted).
    pub max_entries: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub database: DatabaseConfig,
    pub read_replica: Option<ReadReplicaConfig>,
    pub write_token: WriteToken,
    pub pool_size: u32,
    /// Connections the pool opens before the server reports ready and keeps open, so that
    /// a request does not wait for a new connection (a login) while the database is up.
    pub pool_min: u32,
    pub db_timeout: Duration,
    /// How long a write waits for a primary when none can be reached (a failover, a
    /// restart): it is run again every 50 ms meanwhile, and only if nothing was sent.
    pub write_hold: Duration,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_body_bytes: usize,
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
    pub cache: CacheConfig,
    pub site_title: String,
    pub public_url: String,
    pub job_poll_interval: Duration,
    pub job_lease: Duration,
}

pub const MIN_TOKEN_LEN: usize = 32;

/// `ARTICLES_WRITE_HOLD_MS` by default: longer than a switchover (about 3 s) and the
/// write Service's move after a failover, within the default request timeout.
pub const DEFAULT_WRITE_HOLD_MS: u64 = 5000;

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the process environment.
    /// An empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut p = Vec::new();

        let listen_addr = parse_or(
            &get,
            &mut p,
            "ARTICLES_LISTEN_ADDR",
            "0.0.0.0:8080".parse().ok(),
            |v| {
                v.parse::<SocketAddr>()
                    .map_err(|_| "expected an address such as 0.0.0.0:8080".into())
            },
        );

        let database = database(&get, &mut p);
        let read_replica = read_replica(&get, &mut p);

        let write_token = match get("ARTICLES_WRITE_TOKEN") {
            None => {
                p.push(
                    "ARTICLES_WRITE_TOKEN: required (a secret of at least 32 characters)".into(),
                );
                None
            }
            Some(t) if t.chars().count() < MIN_TOKEN_LEN => {
                p.push(format!(
                    "ARTICLES_WRITE_TOKEN: must be at least {MIN_TOKEN_LEN} characters, got {}",
                    t.chars().count()
                ));
                None
            }
            Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                p.push(
                    "ARTICLES_WRITE_TOKEN: must not contain whitespace or control characters"
                        .into(),
                );
                None
            }
            Some(t) => Some(WriteToken(t)),
        };

        let pool_size = int(&get, &mut p, "ARTICLES_DATABASE_POOL_SIZE", 10, 1, 1000);
        let pool_min = int(
            &get,
            &mut p,
            "ARTICLES_DATABASE_POOL_MIN",
            pool_size.unwrap_or(10),
            0,
            1000,
        );
        if let (Some(min), Some(size)) = (pool_min, pool_size)
            && min > size
        {
            p.push(format!(
                "ARTICLES_DATABASE_POOL_MIN ({min}) must not be more than ARTICLES_DATABASE_POOL_SIZE ({size})"
            ));
        }
        let db_timeout = millis(
            &get,
            &mut p,
            "ARTICLES_DATABASE_TIMEOUT_MS",
            2000,
            10,
            600_000,
        );
        let write_hold = millis(
            &get,
            &mut p,
            "ARTICLES_WRITE_HOLD_MS",
            DEFAULT_WRITE_HOLD_MS,
            0,
            600_000,
        );
        let request_timeout = millis(
            &get,
            &mut p,
            "ARTICLES_REQUEST_TIMEOUT_MS",
            10_000,
            10,
            600_000,
        );
        let header_read_timeout = millis(
            &get,
            &mut p,
            "ARTICLES_HEADER_READ_TIMEOUT_MS",
            10_000,
            10,
            600_000,
        );
        let max_connections = int(&get, &mut p, "ARTICLES_MAX_CONNECTIONS", 1000, 1, 1_000_000);
        let max_body_bytes = int(
            &get,
            &mut p,
            "ARTICLES_MAX_BODY_BYTES",
            1 << 20,
            1024,
            64 << 20,
        );
        let drain_delay = seconds(&get, &mut p, "ARTICLES_DRAIN_DELAY_SECONDS", 5, 0, 3600);
        let shutdown_timeout = seconds(
            &get,
            &mut p,
            "ARTICLES_SHUTDOWN_TIMEOUT_SECONDS",
            20,
            1,
            3600,
        );
        let cache_enabled = parse_or(
            &get,
            &mut p,
            "ARTICLES_CACHE_ENABLED",
            Some(true),
            parse_bool,
        );
        let cache_ttl = seconds(&get, &mut p, "ARTICLES_CACHE_TTL_SECONDS", 600, 1, 86_400);
        let cache_max_bytes = int(
            &get,
            &mut p,
            "ARTICLES_CACHE_MAX_BYTES",
            64 << 20,
            64 << 10,
            64 << 30,
        );
        let cache_max_entries = match get("ARTICLES_CACHE_MAX_ENTRIES") {
            None => Some(None),
            Some(_) => int(&get, &mut p, "ARTICLES_CACHE_MAX_ENTRIES", 0, 1, 10_000_000)
                .map(|n| Some(n as usize)),
        };
        let site_title = get("ARTICLES_SITE_TITLE").unwrap_or_else(|| "Articles".to_owned());
        if site_title.chars().count() > 200 {
            p.push("ARTICLES_SITE_TITLE: at most 200 characters".into());
        }
        let public_url = parse_or(
            &get,
            &mut p,
            "ARTICLES_PUBLIC_URL",
            Some("http://localhost:8080".to_owned()),
            parse_public_url,
        );
        let job_poll_interval = millis(
            &get,
            &mut p,
            "ARTICLES_JOB_POLL_INTERVAL_MS",
            1000,
            10,
            3_600_000,
        );
        let job_lease = seconds(&get, &mut p, "ARTICLES_JOB_LEASE_SECONDS", 30, 1, 86_400);

        if let (Some(drain), Some(total)) = (drain_delay, shutdown_timeout)
            && drain >= total
        {
            p.push(format!(
                "ARTICLES_DRAIN_DELAY_SECONDS ({}) must be less than ARTICLES_SHUTDOWN_TIMEOUT_SECONDS ({}): \
                 the drain is part of the shutdown budget",
                drain.as_secs(),
                total.as_secs()
            ));
        }

        // A held write still needs its own database call once a primary answers, and the
        // request timeout must leave it that time, or a write that lands is answered 503.
        if let (Some(hold), Some(db), Some(request)) = (write_hold, db_timeout, request_timeout)
            && hold + db >= request
        {
            p.push(format!(
                "ARTICLES_WRITE_HOLD_MS ({}) plus ARTICLES_DATABASE_TIMEOUT_MS ({}) must be less than \
                 ARTICLES_REQUEST_TIMEOUT_MS ({}): a held write needs time to run once a primary answers",
                hold.as_millis(),
                db.as_millis(),
                request.as_millis()
            ));
        }

        match (
            listen_addr,
            database,
            read_replica,
            write_token,
            pool_size,
            pool_min,
            db_timeout,
            write_hold,
            request_timeout,
            header_read_timeout,
            max_connections,
            max_body_bytes,
            drain_delay,
            shutdown_timeout,
            cache_enabled,
            cache_ttl,
            cache_max_bytes,
            cache_max_entries,
            public_url,
            job_poll_interval,
            job_lease,
        ) {
            (
                Some(listen_addr),
                Some(database),
                Some(read_replica),
                Some(write_token),
                Some(pool_size),
                Some(pool_min),
                Some(db_timeout),
                Some(write_hold),
                Some(request_timeout),
                Some(header_read_timeout),
                Some(max_connections),
                Some(max_body_bytes),
                Some(drain_delay),
                Some(shutdown_timeout),
                Some(enabled),
                Some(ttl),
                Some(max_bytes),
                Some(max_entries),
                Some(public_url),
                Some(job_poll_interval),
                Some(job_lease),
            ) if p.is_empty() => Ok(Config {
                listen_addr,
                database,
                read_replica,
                write_token,
                pool_size: pool_size as u32,
                pool_min: pool_min as u32,
                db_timeout,
                write_hold,
                request_timeout,
                header_read_timeout,
                max_connections: max_connections as usize,
                max_body_bytes: max_body_bytes as usize,
                drain_delay,
                shutdown_timeout,
                cache: CacheConfig {
                    enabled,
                    ttl,
                    max_bytes: max_bytes as usize,
                    max_entries,
                },
                site_title,
                public_url,
                job_poll_interval,
                job_lease,
            }),
            _ => Err(ConfigError { problems: p }),
        }
    }

    /// Requests allowed in flight before new ones are shed with 503. Derived from the pool
    /// size: beyond this, requests would only queue for a connection.
    pub fn max_in_flight(&self) -> usize {
        (self.pool_size as usize * 16).max(64)
    }
}

type Getter<'a> = dyn Fn(&str) -> Option<String> + 'a;

fn parse_or<T>(
    get: &Getter<'_>,
    problems: &mut Vec<String>,
    name: &str,
    default: Option<T>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    match get(name) {
        None => default,
        Some(v) => match parse(v.trim()) {
            Ok(t) => Some(t),
            Err(why) => {
                problems.push(format!("{name}: {why}"));
                None
            }
        },
    }
}

fn int(
    get: &Getter<'_>,
    p: &mut Vec<String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Option<u64> {
    parse_or(get, p, name, Some(default), |v| parse_int(v, min, max))
}

fn millis(
    get: &Getter<'_>,
    p: &mut Vec<String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Option<Duration> {
    int(get, p, name, default, min, max).map(Duration::from_millis)
}

fn seconds(
    get: &Getter<'_>,
    p: &mut Vec<String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Option<Duration> {
    int(get, p, name, default, min, max).map(Duration::from_secs)
}

fn parse_int(v: &str, min: u64, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number from {min} to {max}, got {v:?}"
        )),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
    }
}

fn parse_public_url(v: &str) -> Result<String, String> {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, got {v:?}"))?;
    if rest.is_empty()
        || rest.starts_with('/')
        || v.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "expected an http:// or https:// URL with a host, got {v:?}"
        ));
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// A host name or address as the operator writes it: no scheme, port, path or spaces.
fn parse_host(v: &str) -> Result<String, String> {
    let bad = |c: char| c.is_whitespace() || c.is_control() || "/:@?#".contains(c);
    if v.len() > 253 || v.chars().any(bad) {
        return Err(format!(
            "expected a host name or IP address such as s-postgresql-replicas (no port, scheme or path), got {v:?}"
        ));
    }
    Ok(v.to_owned())
}

fn parse_port(v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("expected a port from 1 to 65535, got {v:?}"))
}

/// `Some(None)`: no read replica configured; `None`: a problem was recorded.
fn read_replica(get: &Getter<'_>, p: &mut Vec<String>) -> Option<Option<ReadReplicaConfig>> {
    let host = parse_or(get, p, "ARTICLES_DATABASE_READ_HOST", None, parse_host);
    let port = parse_or(get, p, "ARTICLES_DATABASE_READ_PORT", None, parse_port);
    let max_lag = seconds(get, p, "ARTICLES_READ_MAX_LAG_SECONDS", 30, 1, 86_400);
    if get("ARTICLES_DATABASE_READ_HOST").is_none() {
        if get("ARTICLES_DATABASE_READ_PORT").is_some() {
            p.push(
                "ARTICLES_DATABASE_READ_PORT: set only together with ARTICLES_DATABASE_READ_HOST \
                 (the replicas' host); without it the server reads from the primary only"
                    .into(),
            );
            return None;
        }
        return max_lag.map(|_| None);
    }
    Some(Some(ReadReplicaConfig {
        host: host?,
        port: match get("ARTICLES_DATABASE_READ_PORT") {
            Some(_) => Some(port?),
            None => None,
        },
        max_lag: max_lag?,
    }))
}

fn database(get: &Getter<'_>, p: &mut Vec<String>) -> Option<DatabaseConfig> {
    const PARTS: [&str; 5] = [
        "ARTICLES_DATABASE_HOST",
        "ARTICLES_DATABASE_PORT",
        "ARTICLES_DATABASE_NAME",
        "ARTICLES_DATABASE_USER",
        "ARTICLES_DATABASE_PASSWORD",
    ];
    let url = get("ARTICLES_DATABASE_URL");
    let given: Vec<&str> = PARTS.iter().copied().filter(|n| get(n).is_some()).collect();
    match url {
        Some(_) if !given.is_empty() => {
            p.push(format!(
                "ARTICLES_DATABASE_URL and {} are both set: give either the URL or the parts, not both",
                given.join(", ")
            ));
            None
        }
        Some(url) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                p.push("ARTICLES_DATABASE_URL: expected a postgres:// or postgresql:// URL".into());
                return None;
            }
            // The parser's message may quote the URL, and the URL may hold a password.
            match PgConnectOptions::from_str(&url) {
                Ok(_) => Some(DatabaseConfig::Url(url)),
                Err(_) => {
                    p.push("ARTICLES_DATABASE_URL: not a valid PostgreSQL connection URL".into());
                    None
                }
            }
        }
        None => {
            let mut missing = Vec::new();
            let mut req = |name: &'static str| {
                let v = get(name);
                if v.is_none() {
                    missing.push(name);
                }
                v
            };
            let host = req("ARTICLES_DATABASE_HOST");
            let name = req("ARTICLES_DATABASE_NAME");
            let user = req("ARTICLES_DATABASE_USER");
            let password = req("ARTICLES_DATABASE_PASSWORD");
            let port = parse_or(get, p, "ARTICLES_DATABASE_PORT", Some(5432u16), parse_port);
            if !missing.is_empty() {
                p.push(format!(
                    "database: set ARTICLES_DATABASE_URL, or all of ARTICLES_DATABASE_HOST, \
                     ARTICLES_DATABASE_NAME, ARTICLES_DATABASE_USER, ARTICLES_DATABASE_PASSWORD \
                     (missing: {})",
                    missing.join(", ")
                ));
                return None;
            }
            Some(DatabaseConfig::Parts {
                host: host?,
                port: port?,
                name: name?,
                user: user?,
                password: password?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_with_only_required_vars() {
        let c = load(&[
            ("ARTICLES_DATABASE_URL", "postgres://u:p@localhost/db"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
        ])
        .expect("valid");
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.pool_size, 10);
        assert_eq!(c.pool_min, 10, "a warm pool by default");
        assert_eq!(c.db_timeout, Duration::from_millis(2000));
        assert_eq!(c.request_timeout, Duration::from_millis(10_000));
        assert_eq!(c.write_hold, Duration::from_millis(DEFAULT_WRITE_HOLD_MS));
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.drain_delay, Duration::from_secs(5));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(20));
        assert!(c.cache.enabled);
        assert_eq!(c.cache.ttl, Duration::from_secs(600));
        assert_eq!(c.cache.max_bytes, 64 << 20);
        assert_eq!(c.cache.max_entries, None);
        assert_eq!(c.site_title, "Articles");
        assert_eq!(c.public_url, "http://localhost:8080");
        assert_eq!(c.job_poll_interval, Duration::from_millis(1000));
        assert_eq!(c.job_lease, Duration::from_secs(30));
    }

    #[test]
    fn the_read_replica_is_optional_and_validated() {
        let base = [
            ("ARTICLES_DATABASE_HOST", "s-postgresql"),
            ("ARTICLES_DATABASE_NAME", "articles"),
            ("ARTICLES_DATABASE_USER", "app"),
            ("ARTICLES_DATABASE_PASSWORD", "secret"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
        ];
        let c = load(&base).expect("valid");
        assert_eq!(c.read_replica, None);

        let mut vars = base.to_vec();
        vars.push(("ARTICLES_DATABASE_READ_HOST", "s-postgresql-replicas"));
        let c = load(&vars).expect("valid");
        let r = c.read_replica.expect("configured");
        assert_eq!(r.host, "s-postgresql-replicas");
        assert_eq!(r.port, None);
        assert_eq!(r.max_lag, Duration::from_secs(30));
        let options = c.database.read_options(&r).expect("options");
        assert_eq!(options.get_host(), "s-postgresql-replicas");
        assert_eq!(options.get_port(), 5432);
        assert_eq!(options.get_database(), Some("articles"));

        vars.push(("ARTICLES_DATABASE_READ_PORT", "6432"));
        vars.push(("ARTICLES_READ_MAX_LAG_SECONDS", "5"));
        let r = load(&vars)
            .expect("valid")
            .read_replica
            .expect("configured");
        assert_eq!((r.port, r.max_lag), (Some(6432), Duration::from_secs(5)));

        let mut bad = base.to_vec();
        bad.push(("ARTICLES_DATABASE_READ_HOST", "postgres://replicas:5432"));
        bad.push(("ARTICLES_READ_MAX_LAG_SECONDS", "0"));
        let text = load(&bad).unwrap_err().to_string();
        assert!(
            text.contains("ARTICLES_DATABASE_READ_HOST: expected a host name"),
            "{text}"
        );
        assert!(
            text.contains("ARTICLES_READ_MAX_LAG_SECONDS: expected a whole number from 1"),
            "{text}"
        );

        let mut orphan = base.to_vec();
        orphan.push(("ARTICLES_DATABASE_READ_PORT", "5433"));
        let text = load(&orphan).unwrap_err().to_string();
        assert!(
            text.contains("set only together with ARTICLES_DATABASE_READ_HOST"),
            "{text}"
        );
    }

    #[test]
    fn the_old_entry_bound_is_still_accepted() {
        let c = load(&[
            ("ARTICLES_DATABASE_URL", "postgres://localhost/db"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
            ("ARTICLES_CACHE_MAX_ENTRIES", "1000"),
            ("ARTICLES_CACHE_MAX_BYTES", "1048576"),
        ])
        .expect("valid");
        assert_eq!(c.cache.max_entries, Some(1000));
        assert_eq!(c.cache.max_bytes, 1 << 20);
        let e = load(&[
            ("ARTICLES_DATABASE_URL", "postgres://localhost/db"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
            ("ARTICLES_CACHE_MAX_BYTES", "12"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("ARTICLES_CACHE_MAX_BYTES"), "{e}");
    }

    #[test]
    fn parts_are_accepted_with_default_port() {
        let c = load(&[
            ("ARTICLES_DATABASE_HOST", "db"),
            ("ARTICLES_DATABASE_NAME", "articles"),
            ("ARTICLES_DATABASE_USER", "app"),
            ("ARTICLES_DATABASE_PASSWORD", "p@ss/word"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
        ])
        .expect("valid");
        match c.database {
            DatabaseConfig::Parts {
                port, ref password, ..
            } => {
                assert_eq!(port, 5432);
                assert_eq!(password, "p@ss/word");
            }
            DatabaseConfig::Url(_) => panic!("expected parts"),
        }
    }

    #[test]
    fn url_and_parts_together_is_an_error() {
        let e = load(&[
            ("ARTICLES_DATABASE_URL", "postgres://localhost/db"),
            ("ARTICLES_DATABASE_HOST", "db"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("both set"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_and_secrets_are_not_echoed() {
        let e = load(&[
            ("ARTICLES_DATABASE_HOST", "db"),
            ("ARTICLES_DATABASE_PASSWORD", "hunter2-secret"),
            ("ARTICLES_WRITE_TOKEN", "short-secret"),
            ("ARTICLES_DATABASE_POOL_SIZE", "lots"),
            ("ARTICLES_CACHE_ENABLED", "maybe"),
            ("ARTICLES_PUBLIC_URL", "ftp://x"),
            ("ARTICLES_LISTEN_ADDR", "nowhere"),
        ])
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "ARTICLES_DATABASE_NAME",
            "ARTICLES_DATABASE_USER",
            "ARTICLES_WRITE_TOKEN: must be at least 32",
            "ARTICLES_DATABASE_POOL_SIZE",
            "ARTICLES_CACHE_ENABLED",
            "ARTICLES_PUBLIC_URL",
            "ARTICLES_LISTEN_ADDR",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("short-secret"), "{text}");
    }

    #[test]
    fn the_warm_pool_follows_the_pool_size_and_fits_in_it() {
        let with = |vars: &[(&'static str, &'static str)]| {
            let mut all = vec![
                ("ARTICLES_DATABASE_URL", "postgres://u:p@localhost/db"),
                ("ARTICLES_WRITE_TOKEN", TOKEN),
            ];
            all.extend_from_slice(vars);
            load(&all)
        };
        let c = with(&[("ARTICLES_DATABASE_POOL_SIZE", "4")]).expect("valid");
        assert_eq!((c.pool_size, c.pool_min), (4, 4));
        let c = with(&[("ARTICLES_DATABASE_POOL_MIN", "0")]).expect("valid");
        assert_eq!((c.pool_size, c.pool_min), (10, 0));
        let e = with(&[
            ("ARTICLES_DATABASE_POOL_SIZE", "4"),
            ("ARTICLES_DATABASE_POOL_MIN", "5"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ARTICLES_DATABASE_POOL_MIN (5) must not be more than ARTICLES_DATABASE_POOL_SIZE (4)"),
            "{e}"
        );
    }

    #[test]
    fn missing_token_and_database_are_errors() {
        let e = load(&[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("ARTICLES_WRITE_TOKEN: required"), "{text}");
        assert!(text.contains("set ARTICLES_DATABASE_URL"), "{text}");
    }

    #[test]
    fn drain_must_fit_in_shutdown_budget() {
        let e = load(&[
            ("ARTICLES_DATABASE_URL", "postgres://localhost/db"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
            ("ARTICLES_DRAIN_DELAY_SECONDS", "30"),
            ("ARTICLES_SHUTDOWN_TIMEOUT_SECONDS", "20"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("must be less than"), "{e}");
    }

    #[test]
    fn a_held_write_must_fit_in_the_request_timeout() {
        let e = load(&[
            ("ARTICLES_DATABASE_URL", "postgres://localhost/db"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
            ("ARTICLES_WRITE_HOLD_MS", "8000"),
            ("ARTICLES_DATABASE_TIMEOUT_MS", "2000"),
        ])
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "ARTICLES_WRITE_HOLD_MS (8000) plus ARTICLES_DATABASE_TIMEOUT_MS (2000) must be less than ARTICLES_REQUEST_TIMEOUT_MS (10000)"
            ),
            "{e}"
        );
        let c = load(&[
            ("ARTICLES_DATABASE_URL", "postgres://localhost/db"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
            ("ARTICLES_WRITE_HOLD_MS", "0"),
        ])
        .expect("no hold is allowed");
        assert_eq!(c.write_hold, Duration::ZERO);
    }

    #[test]
    fn url_with_password_is_redacted_in_debug() {
        let c = load(&[
            ("ARTICLES_DATABASE_URL", "postgres://u:topsecret@h/db"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
        ])
        .expect("valid");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
        assert!(!dbg.contains(TOKEN), "{dbg}");
    }

    #[test]
    fn public_url_trailing_slash_is_trimmed_and_bools_parse() {
        let c = load(&[
            ("ARTICLES_DATABASE_URL", "postgres://localhost/db"),
            ("ARTICLES_WRITE_TOKEN", TOKEN),
            ("ARTICLES_PUBLIC_URL", "https://news.example/"),
            ("ARTICLES_CACHE_ENABLED", "false"),
        ])
        .expect("valid");
        assert_eq!(c.public_url, "https://news.example");
        assert!(!c.cache.enabled);
    }
}
