//! The Helm chart `charts/articlesite-operator` and its releases in the local cluster.

use std::path::{Path, PathBuf};
use std::process::Output;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};

use super::kubeconfig_path;
use super::tools::{run_ok, run_tool};

/// The chart's directory.
pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/articlesite-operator")
}

/// `helm <args>` on the local cluster.
pub fn helm(args: &[&str]) -> Output {
    run_tool("helm", &kubeconfig_path(), args)
}

/// Like `helm`, and panics with stderr when the command fails.
pub fn helm_ok(args: &[&str]) -> String {
    run_ok("helm", &kubeconfig_path(), args)
}

/// The rules of the chart's ClusterRole (all-namespaces install), rendered by `helm template`:
/// tests that run the operator under a ServiceAccount grant exactly what the chart grants.
pub fn chart_cluster_role_rules() -> Value {
    let chart = chart();
    let rendered = helm_ok(&[
        "template",
        "aso",
        &chart.to_string_lossy(),
        "--show-only",
        "templates/rbac.yaml",
    ]);
    serde_yaml::Deserializer::from_str(&rendered)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .find(|doc: &Value| doc["kind"] == "ClusterRole")
        .map(|role| role["rules"].clone())
        .expect("the chart renders a ClusterRole")
}

/// A Helm release that is uninstalled (cluster-scoped RBAC included) when the test ends, also
/// when it fails.
pub struct Release {
    pub name: String,
    pub namespace: String,
    /// How long `helm uninstall --wait` may take (a Helm duration).
    pub uninstall_timeout: &'static str,
}

impl Release {
    pub fn uninstall(&self) -> Output {
        helm(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            self.uninstall_timeout,
        ])
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        // A second uninstall after the test's own only reports "not found".
        let _ = self.uninstall();
    }
}

/// The Helm CRD is shared by the whole cluster: one that exists already (applied by other
/// tests, a run before, or `kubectl apply -f crds/`) is adopted into the release, as
/// docs/install.md describes.
pub async fn adopt_crd(client: &Client, release: &str, ns: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = ArticleSite::crd_name();
    if crds.get_opt(name).await.expect("get CRD").is_some() {
        crds.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": ns},
            }})),
        )
        .await
        .expect("adopt CRD");
    }
}
