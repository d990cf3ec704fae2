//! The cluster's pinned command-line tools (`kubectl`, `helm`), run as processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
