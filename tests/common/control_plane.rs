//! The local control plane as a test disturbs and describes it: its API server paused
//! (SIGSTOP/SIGCONT, as a stalled machine or a long GC pause would), and a one-line account
//! of what it is doing for the message of a step that timed out.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

/// The pid of the local cluster's kube-apiserver, from the pid file that hack/cluster wrote;
/// panics unless it names a running kube-apiserver (a cluster not started from this repository
/// is never touched).
pub fn apiserver_pid() -> u32 {
    let file = super::cluster_dir().join("pids/kube-apiserver.pid");
    let pid: u32 = std::fs::read_to_string(&file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{} missing: this test pauses the API server of a cluster started by hack/cluster/up.sh",
                file.display()
            )
        });
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("kube-apiserver"),
        "pid {pid} of {} is not a running kube-apiserver",
        file.display()
    );
    pid
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// A stopped (SIGSTOP) process, continued when dropped, also when the test panics.
pub struct Paused(u32);

impl Paused {
    pub fn stop(pid: u32) -> Self {
        assert!(signal(pid, "STOP"), "SIGSTOP {pid}");
        Self(pid)
    }

    /// The local API server, paused: every process of the cluster stalls with it.
    pub fn apiserver() -> Self {
        Self::stop(apiserver_pid())
    }

    /// Continues the process now.
    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !signal(self.0, "CONT") {
            eprintln!("could not SIGCONT {}", self.0);
        }
    }
}

/// What the control plane was doing, for a timeout's message: whether the API server answers
/// `/readyz` (within 3 s), and Lease `ns/name`'s holder and last renewal, by the API server's
/// clock and how long ago by this machine's.
pub async fn describe(client: &Client, lease_ns: &str, lease: &str) -> String {
    let readyz = async {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        client.request_text(req).await.map_err(|e| e.to_string())
    };
    let api = match tokio::time::timeout(Duration::from_secs(3), readyz).await {
        Ok(Ok(body)) if body.trim() == "ok" => "API server ready".to_string(),
        Ok(Ok(body)) => format!("API server not ready: {}", body.trim()),
        Ok(Err(e)) => format!("API server unreachable: {e}"),
        Err(_) => "API server unreachable: no answer to /readyz within 3s".to_string(),
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease_ns);
    let lease_text = match tokio::time::timeout(Duration::from_secs(3), leases.get_opt(lease)).await
    {
        Ok(Ok(Some(l))) => {
            let spec = l.spec.unwrap_or_default();
            let renewed = spec.renew_time.map(|t| t.0);
            let ago = renewed
                .map(|t| {
                    format!(
                        "{:.1}s ago",
                        jiff::Timestamp::now().duration_since(t).as_secs_f64()
                    )
                })
                .unwrap_or_else(|| "never".into());
            format!(
                "Lease {lease_ns}/{lease}: holder {:?}, last renewal {} ({ago}), duration {:?}s, transitions {:?}",
                spec.holder_identity.unwrap_or_default(),
                renewed.map(|t| t.to_string()).unwrap_or_default(),
                spec.lease_duration_seconds,
                spec.lease_transitions,
            )
        }
        Ok(Ok(None)) => format!("Lease {lease_ns}/{lease} does not exist"),
        Ok(Err(e)) => format!("Lease {lease_ns}/{lease} unreadable: {e}"),
        Err(_) => format!("Lease {lease_ns}/{lease}: no answer within 3s"),
    };
    format!("{api}; {lease_text}")
}

/// Prints, when the test panics (a step timed out, an assertion failed), what the control plane
/// was doing (`describe`) and who held Lease `ns/name` when, by the audit log since the guard
/// was made: so that a failure after a stall or a change of leader says what happened.
pub struct DescribeOnPanic {
    lease_ns: String,
    lease: String,
    audit_offset: u64,
}

impl DescribeOnPanic {
    pub fn new(lease_ns: &str, lease: &str) -> Self {
        let audit = super::cluster_dir().join("logs/audit.log");
        Self {
            lease_ns: lease_ns.into(),
            lease: lease.into(),
            audit_offset: super::audit::file_len(&audit),
        }
    }
}

/// A client of the local cluster that does not check the API server first (it may be down).
async fn unchecked_client() -> Option<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(super::kubeconfig_path()).ok()?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .ok()?;
    config.default_retry = false;
    Client::try_from(config).ok()
}

impl Drop for DescribeOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (ns, lease, offset) = (self.lease_ns.clone(), self.lease.clone(), self.audit_offset);
        super::block_on_own_runtime(move || async move {
            let now = match unchecked_client().await {
                Some(c) => describe(&c, &ns, &lease).await,
                None => "no client for the local cluster".into(),
            };
            let audit = super::cluster_dir().join("logs/audit.log");
            let events = if audit.exists() {
                super::audit::audit_events(&audit, offset, super::audit::is_write)
            } else {
                Vec::new()
            };
            let terms: Vec<String> = super::audit::lease_terms(&events, &ns, &lease)
                .iter()
                .map(|t| {
                    format!(
                        "{} from {} (last renewal received {})",
                        t.identity, t.from, t.last_write
                    )
                })
                .collect();
            let failed_renewals = events
                .iter()
                .filter(|e| super::audit::on_object(e, "leases", &lease))
                .filter(|e| !super::audit::succeeded(e))
                .count();
            eprintln!(
                "--- control plane at the failure ---\n{now}\nLease holders by the audit log: {terms:?}; {failed_renewals} Lease writes refused or failed"
            );
        });
    }
}
