//! The operator binary as a child process of the test: started with a kubeconfig (the admin
//! one, or one holding a ServiceAccount token) and its own metrics port, probed on its
//! endpoints, signalled, and killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use super::http::{http_get, metric_in};
use super::{kubeconfig_path, wait_for};

/// How many lines of the log a failing test prints.
const LOG_TAIL: usize = 40;

/// A running operator; SIGKILLed when dropped, its log's tail printed then if the test panics.
pub struct OperatorProcess {
    child: Child,
    pub port: u16,
    /// Its stdout and stderr, of every run (`restart` appends).
    pub log: PathBuf,
    kubeconfig: PathBuf,
    args: Vec<String>,
}

impl OperatorProcess {
    /// `articlesite-operator run --metrics-addr=127.0.0.1:0 <args>` (the bound port is read from its log) with
    /// `KUBECONFIG=kubeconfig`, logging to `operator-<name>.log` (the name keeps parallel
    /// tests' logs apart).
    pub fn start(name: &str, kubeconfig: &Path, args: &[&str]) -> Self {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{name}.log"));
        File::create(&log).expect("operator log file");
        let kubeconfig = kubeconfig.to_path_buf();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, port) = spawn(&log, &kubeconfig, &args);
        Self {
            child,
            port,
            log,
            kubeconfig,
            args,
        }
    }

    /// Limited to namespace `ns`, with the admin kubeconfig: what most tests run.
    pub fn in_namespace(ns: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--namespace", ns];
        args.extend(extra);
        Self::start(ns, &kubeconfig_path(), &args)
    }

    /// SIGKILLs the current run and starts the same command again, on a new port, appending
    /// to the same log.
    pub fn restart(&mut self) {
        self.kill();
        (self.child, self.port) = spawn(&self.log, &self.kubeconfig, &self.args);
    }

    /// `GET path` on its metrics port: status code and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.port, path).await
    }

    /// Waits until /readyz answers 200 (30 s at most) and returns its body.
    pub async fn wait_ready(&self) -> String {
        self.wait_readyz(200, Duration::from_secs(30)).await
    }

    /// Waits until /readyz answers `want` and returns its body.
    pub async fn wait_readyz(&self, want: u16, timeout: Duration) -> String {
        wait_for(&format!("operator /readyz {want}"), timeout, || async {
            match self.get("/readyz").await {
                Ok((code, body)) if code == want => Ok(body),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// A counter or gauge from /metrics, summed over its label sets (0 while it has none).
    pub async fn metric(&self, name: &str) -> Result<f64, String> {
        self.metric_with(name, "").await
    }

    /// Like `metric`, over the series whose labels contain `label` (`reason="410"`, say).
    pub async fn metric_with(&self, name: &str, label: &str) -> Result<f64, String> {
        let (_, body) = self.get("/metrics").await?;
        Ok(metric_in(&body, name, label).unwrap_or(0.0))
    }

    /// The pid of the current run (to pause it with SIGSTOP, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running (not exited, not killed).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no graceful shutdown, whatever request is in flight is cut off.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal_and_wait("TERM", timeout)
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

    /// Waits for the process to exit on its own.
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
}

/// Starts the binary, its stdout and stderr appended to `log`, and returns it with the port it
/// bound. It binds port 0 and the port is read from its start-up log line: a port picked here
/// and passed in could be taken by another process before the operator binds it.
fn spawn(log: &Path, kubeconfig: &Path, args: &[String]) -> (Child, u16) {
    let file = File::options()
        .append(true)
        .open(log)
        .expect("operator log file");
    let offset = file.metadata().map(|m| m.len()).unwrap_or(0);
    let child = Command::new(env!("CARGO_BIN_EXE_articlesite-operator"))
        .arg("run")
        .arg("--metrics-addr=127.0.0.1:0")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        // Not a pod: no downward-API identity leaks in from the test's environment.
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .spawn()
        .expect("start operator binary");
    let mut child = child;
    let port = bound_port(log, offset, &mut child);
    (child, port)
}

/// The port of the operator's "serving /healthz, /readyz and /metrics" log line written after
/// `offset`; panics with the log when the process exits first or 30 s pass.
fn bound_port(log: &Path, offset: u64, child: &mut Child) -> u16 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        let new = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]).into_owned();
        let port = new
            .lines()
            .find(|l| l.contains("serving /healthz"))
            .and_then(|l| l.split("127.0.0.1:").nth(1))
            .and_then(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            });
        if let Some(port) = port {
            return port;
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        assert!(
            !exited && std::time::Instant::now() < deadline,
            "the operator did not start serving (exited: {exited}); its log:\n{new}"
        );
        // Poll interval inside the deadline above.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<_> = text.lines().collect();
            eprintln!(
                "--- operator log ({}) ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
            );
        }
    }
}

/// The holder of Lease `name`, if it exists and has one.
pub async fn lease_holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}
