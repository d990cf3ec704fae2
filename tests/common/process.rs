//! Helpers for tests that run the operator binary as its own process, with a given kubeconfig
//! (the admin one, or one holding a ServiceAccount token), and the cluster's CLI tools.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::wait_for;

/// A pinned tool of the local cluster (`kubectl`, `helm`): from `$PATH` (hack/test.sh and
/// hack/cluster/env.sh put the cached binaries there), else from the cache that
/// hack/cluster/build.sh fills, at the version pinned in hack/cluster/versions.sh.
pub fn tool(name: &str) -> PathBuf {
    let (var, dir) = match name {
        "helm" => ("HELM_VERSION", "helm"),
        _ => ("KUBERNETES_VERSION", "kubernetes"),
    };
    if let Some(paths) = std::env::var_os("PATH") {
        for p in std::env::split_paths(&paths) {
            let candidate = p.join(name);
            if candidate.is_file() && p.to_string_lossy().contains("articlesite") {
                return candidate;
            }
        }
    }
    let versions = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster/versions.sh"),
    )
    .expect("hack/cluster/versions.sh");
    let version = versions
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("{var} missing from hack/cluster/versions.sh"))
        .trim()
        .to_string();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let path = cache
        .join("articlesite/bin")
        .join(format!("{dir}-{version}"))
        .join(name);
    assert!(
        path.is_file(),
        "{name} not found on PATH nor at {}: run `make cluster-up` (it builds the pinned tools)",
        path.display()
    );
    path
}

/// Runs a tool and returns its output; `KUBECONFIG` is the one given.
pub fn run_tool(name: &str, kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(tool(name))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"))
}

/// Like `run_tool`, and panics with stderr when the command fails.
pub fn run_ok(name: &str, kubeconfig: &Path, args: &[&str]) -> String {
    let out = run_tool(name, kubeconfig, args);
    assert!(
        out.status.success(),
        "{name} {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rules of the chart's ClusterRole (all-namespaces install), rendered by `helm template`:
/// tests that run the operator under a ServiceAccount grant exactly what the chart grants.
pub fn chart_cluster_role_rules() -> Value {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/articlesite-operator");
    let chart = chart.to_string_lossy();
    let rendered = run_ok(
        "helm",
        &super::kubeconfig_path(),
        &[
            "template",
            "aso",
            &chart,
            "--show-only",
            "templates/rbac.yaml",
        ],
    );
    serde_yaml::Deserializer::from_str(&rendered)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .find(|doc: &Value| doc["kind"] == "ClusterRole")
        .map(|role| role["rules"].clone())
        .expect("the chart renders a ClusterRole")
}

/// Installs (server-side apply, idempotent) the CRD generated from the types and waits until
/// the API server serves it.
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
    wait_crd_established(client).await;
}

pub async fn wait_crd_established(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = ArticleSite::crd().name_any();
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

/// The operator binary as a child process, killed when dropped (its log is printed then if the
/// test panics).
pub struct OperatorProcess {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl OperatorProcess {
    pub fn start(name: &str, kubeconfig: &Path, args: &[&str]) -> Self {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{name}.log"));
        let file = File::create(&log).expect("operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_articlesite-operator"))
            .arg("run")
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
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

    /// Waits until /readyz answers 200 and returns its body.
    pub async fn wait_ready(&self) -> String {
        wait_for("operator /readyz", Duration::from_secs(30), || async {
            match self.get("/readyz").await {
                Ok((200, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// A counter or gauge value from /metrics, summed over label sets.
    pub async fn metric(&self, name: &str) -> Result<f64, String> {
        let (_, body) = self.get("/metrics").await?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Sends a signal (`KILL`, `TERM`) and waits for the exit.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "could not signal operator");
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait operator") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "operator did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for OperatorProcess {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Minimal HTTP/1.0 GET on loopback (the operator's own endpoints).
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
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

/// The audit log of the local cluster (every write request, metadata only).
pub fn audit_log() -> PathBuf {
    let path = super::cluster_dir().join("logs/audit.log");
    assert!(
        path.exists(),
        "audit log {} missing: the local cluster records writes there",
        path.display()
    );
    path
}

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

pub fn is_write(e: &Value) -> bool {
    matches!(
        e["verb"].as_str(),
        Some("create" | "update" | "patch" | "delete" | "deletecollection")
    )
}
