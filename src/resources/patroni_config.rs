//! The ConfigMap `<site>-postgresql-patroni` with `patroni.yml`, mounted read-only at
//! `/etc/patroni/patroni.yml`. Everything per pod (name, IP, namespace, credentials) comes from
//! the environment (`PATRONI_*`, see `statefulset`), so one file serves every instance.
//!
//! `bootstrap.dcs` is the dynamic configuration Patroni stores in the `-config` Endpoints when
//! the cluster is first created, and never reads again; a later change of
//! `spec.database.synchronousMode` is written by the operator into that stored configuration
//! (`plan::database`), which Patroni applies on its next loop.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use serde_json::json;

use super::{Component, Names, PATRONI_PORT, POSTGRES_PORT, backup, object_meta};
use crate::crd::{ArticleSite, SynchronousMode};
use crate::patroni::{SyncReplication, SynchronousKeys};

pub const CONFIG_KEY: &str = "patroni.yml";
pub const MOUNT_DIR: &str = "/etc/patroni";
/// PGDATA, on the claim: the path today's single-instance pods use, so that Patroni takes the
/// existing data directory of an upgraded site over.
pub const PGDATA: &str = "/var/lib/postgresql/pgdata";
pub const SOCKET_DIR: &str = "/var/run/postgresql";
/// Run by Patroni after `initdb` (creates the site's database; part of the image).
const POST_BOOTSTRAP: &str = "/usr/local/bin/patroni-post-bootstrap";

/// Lock and loop timers. Patroni enforces ttl >= 20 and loop_wait + 2 * retry_timeout <= ttl;
/// 20/3/8 is the shortest failover its maintainers advise (a dead primary is replaced within
/// about ttl + loop_wait = 23 s).
pub const TTL: i64 = 20;
pub const LOOP_WAIT: i64 = 3;
pub const RETRY_TIMEOUT: i64 = 8;

/// Patroni's `synchronous_mode` and `synchronous_mode_strict` for a mode. Both synchronous
/// modes use quorum commit: with two replicas a commit waits for whichever answers first, so
/// losing (or wiping) one replica never pauses writes, where `on` waits on one named standby
/// until Patroni names another. A failover still loses nothing: Patroni promotes only a member
/// that has every quorum-acknowledged commit (it compares it with the other voters).
pub fn synchronous_keys(mode: SynchronousMode) -> SynchronousKeys {
    let (mode, strict) = match mode {
        SynchronousMode::Synchronous => (SyncReplication::Quorum, false),
        SynchronousMode::Strict => (SyncReplication::Quorum, true),
        SynchronousMode::Asynchronous => (SyncReplication::Off, false),
    };
    SynchronousKeys { mode, strict }
}

/// WAL a replication slot may hold back: a quarter of the volume, so that a dead replica can
/// never fill the primary's disk (its slot is invalidated and it is rebuilt instead).
pub fn max_slot_wal_keep_size(claim_size: &str) -> String {
    let bytes = crate::quantity::whole(claim_size).unwrap_or(1 << 30);
    format!("{}MB", (bytes / 4 / (1 << 20)).max(64))
}

/// The document, as a JSON value (YAML is a superset; the file is written as YAML).
pub fn document(site: &ArticleSite, claim_size: &str) -> serde_json::Value {
    let keys = synchronous_keys(site.spec.database.synchronous_mode);
    let mut dcs = json!({
        "ttl": TTL,
        "loop_wait": LOOP_WAIT,
        "retry_timeout": RETRY_TIMEOUT,
        "synchronous_mode": keys.mode.to_json(),
        "failsafe_mode": true,
        "postgresql": {
            "use_pg_rewind": true,
            "use_slots": true,
            "parameters": {
                "wal_level": "replica",
                "hot_standby": "on",
                "wal_log_hints": "on",
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "max_slot_wal_keep_size": max_slot_wal_keep_size(claim_size),
                "wal_keep_size": "128MB",
            },
        },
    });
    if keys.strict {
        dcs["synchronous_mode_strict"] = json!(true);
    }
    let mut doc = json!({
        "restapi": {"listen": format!("0.0.0.0:{PATRONI_PORT}")},
        "bootstrap": {
            "dcs": dcs,
            "initdb": [
                {"encoding": "UTF8"},
                {"auth-host": "scram-sha-256"},
                {"auth-local": "trust"},
                "no-locale",
            ],
            "post_bootstrap": POST_BOOTSTRAP,
        },
        "postgresql": {
            "listen": format!("0.0.0.0:{POSTGRES_PORT}"),
            "data_dir": PGDATA,
            // Patroni writes the replication password here: the /tmp emptyDir, not the claim.
            "pgpass": "/tmp/pgpass",
            // A new replica's base backup starts at once instead of after a spread checkpoint
            // (up to minutes with the default checkpoint_timeout).
            "basebackup": [{"checkpoint": "fast"}],
            "use_unix_socket": true,
            "parameters": {"unix_socket_directories": SOCKET_DIR},
            "pg_hba": [
                "local all all trust",
                "host all all all scram-sha-256",
                "host replication all all scram-sha-256",
            ],
        },
    });
    if let Some(b) = &site.spec.backup {
        merge(&mut doc["postgresql"], backup::patroni_postgresql(b));
        if let Some(boot) = &site.spec.database.bootstrap {
            merge(
                &mut doc["bootstrap"],
                backup::patroni_bootstrap(site, &boot.recovery),
            );
        }
    }
    doc
}

/// Adds `extra`'s keys to `into`, objects merged key by key.
fn merge(into: &mut serde_json::Value, extra: serde_json::Value) {
    match (into, extra) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

pub fn build(site: &ArticleSite, claim_size: &str) -> ConfigMap {
    // serde_yaml cannot fail on a JSON value built here (string keys only); an empty file
    // would fail Patroni's start-up loudly, never silently.
    let yaml = serde_yaml::to_string(&document(site, claim_size)).unwrap_or_default();
    ConfigMap {
        metadata: object_meta(
            site,
            Names::patroni_config(&site.name_any()),
            Component::Database,
        ),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    #[test]
    fn patroni_yml_follows_the_contract() {
        let mut s = site("news");
        let cm = build(&s, "8Gi");
        assert_eq!(cm.metadata.name.as_deref(), Some("news-postgresql-patroni"));
        let yaml = &cm.data.as_ref().unwrap()[CONFIG_KEY];
        let doc: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(doc["restapi"]["listen"], "0.0.0.0:8008");
        assert_eq!(doc["postgresql"]["data_dir"], PGDATA);
        let dcs = &doc["bootstrap"]["dcs"];
        assert_eq!(
            (dcs["ttl"].as_i64(), dcs["loop_wait"].as_i64()),
            (Some(20), Some(3))
        );
        assert!(
            dcs["loop_wait"].as_i64().unwrap() + 2 * dcs["retry_timeout"].as_i64().unwrap() <= 20
        );
        assert_eq!(dcs["synchronous_mode"], "quorum");
        assert!(dcs.get("synchronous_mode_strict").is_none());
        assert_eq!(dcs["failsafe_mode"], true);
        assert_eq!(
            dcs["postgresql"]["parameters"]["max_slot_wal_keep_size"],
            "2048MB"
        );
        assert_eq!(doc["bootstrap"]["post_bootstrap"], POST_BOOTSTRAP);
        s.spec.database.synchronous_mode = SynchronousMode::Strict;
        assert_eq!(
            document(&s, "8Gi")["bootstrap"]["dcs"]["synchronous_mode_strict"],
            true
        );
        s.spec.database.synchronous_mode = SynchronousMode::Asynchronous;
        assert_eq!(
            document(&s, "8Gi")["bootstrap"]["dcs"]["synchronous_mode"],
            false
        );
        assert_eq!(max_slot_wal_keep_size("100Mi"), "64MB");
    }
}
