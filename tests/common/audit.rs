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

/// A request on an object of namespace `ns`.
pub fn in_namespace(e: &Value, ns: &str) -> bool {
    e["objectRef"]["namespace"].as_str() == Some(ns)
}
