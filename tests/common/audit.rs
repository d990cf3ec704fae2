//! The local cluster's audit log: every write request, metadata only, one JSON event a line.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// How the operator's requests begin their user agent (`articlesite-operator/<version> (<id>)`).
pub const USER_AGENT_PREFIX: &str = "articlesite-operator/";

/// The audit log of the local cluster; asserts that it is there.
pub fn audit_log() -> PathBuf {
    let path = super::cluster_dir().join("logs/audit.log");
    assert!(
        path.exists(),
        "audit log {} missing: the local cluster records writes there",
        path.display()
    );
    path
}

/// The size of a file now: the offset from which to read what comes after.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Audit events after byte `offset` that satisfy `keep`.
pub fn audit_events(path: &Path, offset: u64, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut f = File::open(path).expect("open audit log");
    f.seek(SeekFrom::Start(offset)).expect("seek audit log");
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|e| keep(e))
        .collect()
}

/// A request that changes something.
pub fn is_write(e: &Value) -> bool {
    matches!(
        e["verb"].as_str(),
        Some("create" | "update" | "patch" | "delete" | "deletecollection")
    )
}

/// A request of the operator (any of its processes), by its user agent.
pub fn by_operator(e: &Value) -> bool {
    e["userAgent"]
        .as_str()
        .is_some_and(|ua| ua.starts_with(USER_AGENT_PREFIX))
}

/// A request on object `name` of `resource` (plural, as in the URL: `leases`).
pub fn on_object(e: &Value, resource: &str, name: &str) -> bool {
    e["objectRef"]["resource"].as_str() == Some(resource)
        && e["objectRef"]["name"].as_str() == Some(name)
}

/// A request on an object of namespace `ns`.
pub fn in_namespace(e: &Value, ns: &str) -> bool {
    e["objectRef"]["namespace"].as_str() == Some(ns)
}

/// The replica in an operator's user agent: `articlesite-operator/<version> (<identity>)`.
pub fn agent_identity(e: &Value) -> Option<String> {
    let ua = e["userAgent"].as_str()?;
    let (_, rest) = ua.split_once(" (")?;
    Some(rest.split(')').next()?.to_string())
}

/// When the API server received the request.
pub fn received(e: &Value) -> jiff::Timestamp {
    timestamp(e, "requestReceivedTimestamp")
}

/// When the API server had answered it (the ResponseComplete stage).
pub fn completed(e: &Value) -> jiff::Timestamp {
    timestamp(e, "stageTimestamp")
}

fn timestamp(e: &Value, field: &str) -> jiff::Timestamp {
    e[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("audit event without {field}: {e}"))
}

/// A request the API server carried out (2xx).
pub fn succeeded(e: &Value) -> bool {
    e["responseStatus"]["code"]
        .as_u64()
        .is_some_and(|c| (200..300).contains(&c))
}

/// One replica's leadership as the API server saw it: from its first successful write of the
/// Lease after another holder's, until the next holder's first (`None`: to the end).
#[derive(Clone, Debug)]
pub struct Term {
    pub identity: String,
    /// When its first successful Lease write of the term was received, and its last.
    pub from: jiff::Timestamp,
    pub last_write: jiff::Timestamp,
    pub until: Option<jiff::Timestamp>,
}

/// The terms of Lease `ns/name`, from the audit events of its writes (every event is read;
/// others are skipped). A replica that took the Lease back after another holder starts a new term.
pub fn lease_terms(events: &[Value], ns: &str, name: &str) -> Vec<Term> {
    let mut writes: Vec<&Value> = events
        .iter()
        .filter(|e| {
            is_write(e)
                && succeeded(e)
                && in_namespace(e, ns)
                && on_object(e, "leases", name)
                && e["stage"].as_str() == Some("ResponseComplete")
        })
        .collect();
    writes.sort_by_key(|e| received(e));
    let mut terms: Vec<Term> = Vec::new();
    for e in writes {
        let who = agent_identity(e).unwrap_or_else(|| "?".into());
        match terms.last_mut() {
            Some(t) if t.identity == who => t.last_write = received(e),
            _ => {
                if let Some(t) = terms.last_mut() {
                    t.until = Some(received(e));
                }
                terms.push(Term {
                    identity: who,
                    from: received(e),
                    last_write: received(e),
                    until: None,
                });
            }
        }
    }
    terms
}

/// Consecutive writes of one replica (sorted by arrival), with their span at the API server.
#[derive(Clone, Debug)]
pub struct Block {
    pub identity: String,
    pub first_received: jiff::Timestamp,
    pub last_completed: jiff::Timestamp,
    pub writes: usize,
}

/// Checks that exactly one replica wrote at any time: every write in `writes` (audit events,
/// ResponseComplete) arrived within a term of its replica and was answered before the next
/// holder's term began, and no two replicas' blocks of writes overlap. Returns the blocks, or
/// what went wrong with the writes and terms.
pub fn check_one_writer(writes: &[Value], terms: &[Term]) -> Result<Vec<Block>, String> {
    let mut sorted: Vec<&Value> = writes
        .iter()
        .filter(|e| e["stage"].as_str() == Some("ResponseComplete"))
        .collect();
    sorted.sort_by_key(|e| received(e));
    let mut blocks: Vec<Block> = Vec::new();
    for e in &sorted {
        let who = agent_identity(e).unwrap_or_else(|| "?".into());
        let (r, c) = (received(e), completed(e));
        let within = terms
            .iter()
            .any(|t| t.identity == who && t.from < r && t.until.is_none_or(|u| c < u));
        if !within {
            return Err(format!(
                "{who} wrote ({} {}, received {r}, answered {c}) outside its leadership; terms: {terms:#?}",
                e["verb"].as_str().unwrap_or_default(),
                e["requestURI"].as_str().unwrap_or_default(),
            ));
        }
        match blocks.last_mut() {
            Some(b) if b.identity == who => {
                b.last_completed = b.last_completed.max(c);
                b.writes += 1;
            }
            _ => blocks.push(Block {
                identity: who,
                first_received: r,
                last_completed: c,
                writes: 1,
            }),
        }
    }
    for pair in blocks.windows(2) {
        if pair[0].last_completed >= pair[1].first_received {
            return Err(format!(
                "write blocks overlap: {:?} and {:?}",
                pair[0], pair[1]
            ));
        }
    }
    Ok(blocks)
}

/// The shortest time between the arrival of one holder's last successful Lease write and the
/// next holder's first (`None` with fewer than two terms). Without a release in between it is
/// at least the lease duration: the next holder waited that long after seeing the last write.
pub fn shortest_takeover(terms: &[Term]) -> Option<jiff::SignedDuration> {
    terms
        .windows(2)
        .map(|p| p[1].from.duration_since(p[0].last_write))
        .min()
}
