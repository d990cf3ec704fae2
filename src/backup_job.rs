//! `articlesite-operator backup`: what a site's backup Jobs run. It finds the primary (the pod
//! Patroni labels `role=primary`), runs pgBackRest there through the exec API (the data
//! directory is on the primary's volume; `resources::backup` says why not a TLS server), and
//! writes what the repository then holds as the container's termination message, which the
//! operator reads into `status.backup` (`JobReport`). Output of pgBackRest goes to the Job's
//! log; it never contains the repository's keys (they are in the database pod's environment).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::patroni::ROLE_LABEL;
use crate::resources::backup::{BackupType, STANZA};
use crate::resources::statefulset::CONTAINER_NAME;

/// The termination message's limit is 4096 bytes; errors are cut to leave room.
const MESSAGE_LIMIT: usize = 3000;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "no running primary among the database pods of {site} (role=primary): a failover in progress? The Job retries"
    )]
    NoPrimary { site: String },
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("exec into {pod}: {source}")]
    Stream {
        pod: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pgbackrest {command} failed in {pod}: {output}")]
    Command {
        command: String,
        pod: String,
        output: String,
    },
    #[error("pgbackrest info printed no backup of stanza {STANZA}: {0}")]
    Info(String),
}

/// What a finished backup Job reports (its termination message, JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobReport {
    /// Set when the backup failed; then nothing else is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupInfo>,
    /// Backups in the repository after this one (and retention).
    #[serde(default)]
    pub backups: i32,
    /// Seconds since the epoch: the end of the oldest backup kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recoverable: Option<i64>,
}

/// The newest backup of the repository.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupInfo {
    pub label: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub started: i64,
    pub finished: i64,
    pub database_bytes: i64,
    pub repository_bytes: i64,
}

impl JobReport {
    /// A termination message, or `None` when it is not one of ours.
    pub fn parse(message: &str) -> Option<JobReport> {
        serde_json::from_str(message.trim()).ok()
    }
}

/// The message for `result`.
pub fn termination_message(result: &Result<JobReport, BackupError>) -> String {
    let report = match result {
        Ok(r) => r.clone(),
        Err(e) => {
            let mut text = e.to_string();
            if text.len() > MESSAGE_LIMIT {
                let mut cut = text.len() - MESSAGE_LIMIT;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                // pgBackRest's error is at the end of its output.
                text = format!("...{}", &text[cut..]);
            }
            JobReport {
                error: Some(text),
                ..JobReport::default()
            }
        }
    };
    serde_json::to_string(&report).unwrap_or_default()
}

pub struct BackupJob {
    pub namespace: String,
    pub site: String,
    pub kind: BackupType,
}

impl BackupJob {
    pub async fn run(&self, client: &Client) -> Result<JobReport, BackupError> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let primary = self.primary(&pods).await?;
        tracing::info!(pod = %primary, kind = %self.kind, "backing up from the primary");
        let stanza = format!("--stanza={STANZA}");
        // Idempotent: the agent creates the stanza too, but a backup must not wait for it.
        exec(&pods, &primary, &["pgbackrest", &stanza, "stanza-create"]).await?;
        let kind = format!("--type={}", self.kind);
        exec(&pods, &primary, &["pgbackrest", &stanza, &kind, "backup"]).await?;
        let info = exec(
            &pods,
            &primary,
            &["pgbackrest", &stanza, "--output=json", "info"],
        )
        .await?;
        let report = report_from_info(&info)?;
        tracing::info!(report = ?report, "backup done");
        Ok(report)
    }

    async fn primary(&self, pods: &Api<Pod>) -> Result<String, BackupError> {
        let selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=database,{ROLE_LABEL}=primary",
            self.site
        );
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| BackupError::Kube {
                action: "list the database pods",
                source: Box::new(source),
            })?;
        let running: Vec<String> = list
            .items
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .map(|p| p.name_any())
            .collect();
        match running.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(BackupError::NoPrimary {
                site: self.site.clone(),
            }),
        }
    }
}

/// Runs `command` in the database container of `pod`; its stdout on success, its output
/// (stderr last) in the error otherwise.
async fn exec(pods: &Api<Pod>, pod: &str, command: &[&str]) -> Result<String, BackupError> {
    let params = AttachParams::default()
        .container(CONTAINER_NAME)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut attached = pods
        .exec(pod, command.iter().copied(), &params)
        .await
        .map_err(|source| BackupError::Kube {
            action: "exec into the primary",
            source: Box::new(source),
        })?;
    let stream_error = |source| BackupError::Stream {
        pod: pod.into(),
        source,
    };
    let (mut out, mut err) = (String::new(), String::new());
    let status = attached.take_status();
    let (stdout, stderr) = (attached.stdout(), attached.stderr());
    let read_out = async {
        match stdout {
            Some(mut s) => s.read_to_string(&mut out).await.map(|_| ()),
            None => Ok(()),
        }
    };
    let read_err = async {
        match stderr {
            Some(mut s) => s.read_to_string(&mut err).await.map(|_| ()),
            None => Ok(()),
        }
    };
    futures::try_join!(read_out, read_err).map_err(stream_error)?;
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    attached.join().await.map_err(|e| BackupError::Stream {
        pod: pod.into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    // Echo pgBackRest's progress into the Job's log.
    for line in out
        .lines()
        .chain(err.lines())
        .filter(|l| !l.starts_with('['))
    {
        tracing::info!(pod, line, "pgbackrest");
    }
    let ok = status
        .as_ref()
        .and_then(|s| s.status.as_deref())
        .is_some_and(|s| s == "Success");
    if ok {
        Ok(out)
    } else {
        let why = status.and_then(|s| s.message).unwrap_or_default();
        let output = format!("{why} {}", last_lines(&format!("{out}\n{err}"), 6));
        Err(BackupError::Command {
            command: command[1..].join(" "),
            pod: pod.into(),
            output: output.trim().to_string(),
        })
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// pgBackRest's `info --output=json` of one stanza, reduced to the report.
#[derive(Deserialize)]
struct InfoStanza {
    #[serde(default)]
    backup: Vec<InfoBackup>,
}

#[derive(Deserialize)]
struct InfoBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: InfoTimestamp,
    info: InfoSizes,
    #[serde(default)]
    error: bool,
}

#[derive(Deserialize)]
struct InfoTimestamp {
    start: i64,
    stop: i64,
}

#[derive(Deserialize)]
struct InfoSizes {
    size: i64,
    repository: InfoRepository,
}

#[derive(Deserialize)]
struct InfoRepository {
    size: i64,
}

pub fn report_from_info(json: &str) -> Result<JobReport, BackupError> {
    let stanzas: Vec<InfoStanza> =
        serde_json::from_str(json).map_err(|e| BackupError::Info(e.to_string()))?;
    let backups: Vec<&InfoBackup> = stanzas
        .iter()
        .flat_map(|s| s.backup.iter())
        .filter(|b| !b.error)
        .collect();
    let newest = backups
        .iter()
        .max_by_key(|b| b.timestamp.stop)
        .ok_or_else(|| BackupError::Info("the repository lists none".into()))?;
    Ok(JobReport {
        error: None,
        backup: Some(BackupInfo {
            label: newest.label.clone(),
            kind: newest.kind.clone(),
            started: newest.timestamp.start,
            finished: newest.timestamp.stop,
            database_bytes: newest.info.size,
            repository_bytes: newest.info.repository.size,
        }),
        backups: i32::try_from(backups.len()).unwrap_or(i32::MAX),
        first_recoverable: backups.iter().map(|b| b.timestamp.stop).min(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_newest_backup_and_the_oldest_point() {
        let info = r#"[{"name":"db","backup":[
          {"label":"20261201-010000F","type":"full","error":false,
           "timestamp":{"start":1764550800,"stop":1764550830},
           "info":{"size":31000000,"delta":31000000,"repository":{"size":4100000,"delta":4100000}}},
          {"label":"20261201-010000F_20261202-010000D","type":"diff","error":false,
           "timestamp":{"start":1764637200,"stop":1764637205},
           "info":{"size":32000000,"delta":900000,"repository":{"size":4200000,"delta":120000}}}
        ],"status":{"code":0,"message":"ok"}}]"#;
        let r = report_from_info(info).unwrap();
        let b = r.backup.as_ref().unwrap();
        assert_eq!(b.label, "20261201-010000F_20261202-010000D");
        assert_eq!((b.kind.as_str(), b.repository_bytes), ("diff", 4200000));
        assert_eq!((r.backups, r.first_recoverable), (2, Some(1764550830)));
        let text = termination_message(&Ok(r.clone()));
        assert!(text.len() < 4096);
        assert_eq!(JobReport::parse(&text), Some(r));
        assert!(report_from_info(r#"[{"name":"db","backup":[]}]"#).is_err());
    }

    #[test]
    fn a_long_error_keeps_its_end() {
        let e = BackupError::Command {
            command: "backup".into(),
            pod: "news-postgresql-0".into(),
            output: format!("{}ERROR: [039]: HTTP 403", "x".repeat(5000)),
        };
        let text = termination_message(&Err(e));
        assert!(text.len() < 4096);
        let r = JobReport::parse(&text).unwrap();
        assert!(r.error.unwrap().ends_with("ERROR: [039]: HTTP 403"));
    }
}
