//! The operator as a process limited to one test namespace, the CRD, and site helpers.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{kubeconfig_path, wait_for};

/// Installs (server-side apply, idempotent) the CRD generated from the types and waits until the
/// API server serves it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ArticleSite::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("articlesite-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    wait_for("CRD established", Duration::from_secs(30), || {
        let crds = crds.clone();
        let name = name.clone();
        async move {
            let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(())
            } else {
                Err("not established".into())
            }
        }
    })
    .await;
}

/// The operator binary, limited to one namespace, killed when dropped.
pub struct Operator {
    child: Child,
    pub port: u16,
    /// Its stdout and stderr (JSON log lines).
    pub log: PathBuf,
}

impl Operator {
    pub fn start(ns: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{ns}.log"));
        let file = File::create(&log).expect("operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_articlesite-operator"))
            .args(["run", "--namespace", ns, "--metrics-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("KUBECONFIG", kubeconfig_path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .expect("start operator binary");
        Self { child, port, log }
    }

    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.port, path).await
    }

    pub async fn wait_ready(&self) {
        wait_for("operator /readyz", Duration::from_secs(30), || async {
            match self.get("/readyz").await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }

    /// A counter or histogram-count value from /metrics, summed over label sets.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await.expect("GET /metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "could not signal operator");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait operator") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "operator did not exit within {timeout:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- operator log ({}) ---\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Minimal HTTP/1.0 GET on loopback (the operator's own endpoints).
async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response: {buf}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

pub fn site(name: &str, spec: Value) -> ArticleSite {
    ArticleSite::new(name, serde_json::from_value(spec).expect("valid spec"))
}

/// (status, reason, message) of a condition of the site.
pub fn condition(site: &ArticleSite, type_: &str) -> Option<(String, String, String)> {
    site.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until Ready=True for the current generation.
pub async fn wait_site_ready(api: &Api<ArticleSite>, name: &str, timeout: Duration) -> ArticleSite {
    wait_for(&format!("ArticleSite {name} Ready"), timeout, || async {
        let s = api.get(name).await.map_err(|e| e.to_string())?;
        let generation = s.metadata.generation;
        let observed = s.status.as_ref().and_then(|st| st.observed_generation);
        match condition(&s, "Ready") {
            Some((status, _, _)) if status == "True" && observed == generation => Ok(s),
            other => Err(format!(
                "Ready={other:?}, observedGeneration={observed:?}, generation={generation:?}"
            )),
        }
    })
    .await
}
