//! The Helm chart `charts/articlesite-operator`: lint, refusal of bad values, install and
//! upgrade into the local cluster, and proof that the chart's RBAC is sufficient and minimal:
//! the operator binary runs with a token of the chart's ServiceAccount and reconciles a site.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use common::chart::{Release, adopt_crd, chart, helm, helm_ok};
use common::crd::wait_crd_established;
use common::operator::OperatorProcess;
use common::site::site_ready;
use common::tools::run_ok;
use common::{TestNamespace, client, kubeconfig_path, service_account_kubeconfig, wait_for};

/// The chart carries a copy of the generated CRD (Helm reads only files inside the chart).
#[test]
fn chart_crd_is_the_generated_one() {
    let copy = std::fs::read_to_string(chart().join("files/articlesite.crd.yaml"))
        .expect("chart CRD file");
    let generated = articlesite_operator::crd::crd_yaml().expect("CRD YAML");
    assert!(
        copy == generated,
        "charts/articlesite-operator/files/articlesite.crd.yaml is stale: run `make crds`"
    );
}

/// `helm lint`, the rendering of each mode, and wrong values refused with a message naming them
/// (by the schema or by the templates' cross-field checks), before anything reaches the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_and_refuses_wrong_values() {
    let c = chart();
    let c = c.to_str().expect("utf-8 path");
    for extra in [
        &[][..],
        &["--set", "watchNamespaces={a,b}"][..],
        &["--set", "leaderElection.enabled=false,replicaCount=1"][..],
    ] {
        let mut args = vec!["lint", "--strict", c];
        args.extend_from_slice(extra);
        let out = helm_ok(&args);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
    let monitor = helm_ok(&[
        "template",
        "r",
        c,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ]);
    assert!(
        monitor.contains("kind: ServiceMonitor"),
        "ServiceMonitor rendered"
    );

    let client = client().await;
    let ns = TestNamespace::create(&client, "helm-bad").await;
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicaCount=0"], "/replicaCount"),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (
            &["--set", "imageTag=1.0"],
            "additional properties 'imageTag' not allowed",
        ),
        (&["--set", "watchNamespaces={Bad_NS}"], "/watchNamespaces/0"),
        (
            &["--set", "leaderElection.leaseDurationSeconds=abc"],
            "/leaderElection/leaseDurationSeconds",
        ),
        (
            &[
                "--set",
                "leaderElection.leaseDurationSeconds=5,leaderElection.renewDeadlineSeconds=5",
            ],
            "renewDeadlineSeconds must be smaller than leaderElection.leaseDurationSeconds",
        ),
        (
            &["--set", "leaderElection.enabled=false"],
            "replicaCount > 1 needs leaderElection.enabled=true",
        ),
        (
            &["--set", "metrics.serviceMonitor.enabled=true"],
            "needs the ServiceMonitor CRD",
        ),
    ];
    let mut failures = Vec::new();
    for (values, expected) in cases {
        let mut args = vec!["install", "bad", c, "--namespace", &ns.name];
        args.extend_from_slice(values);
        let out = helm(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains(expected) {
            failures.push(format!("{values:?}: expected {expected:?}, got {stderr}"));
        }
    }
    let status = helm(&["status", "bad", "--namespace", &ns.name]);
    assert!(!status.status.success(), "no release was created");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The resource rows of `kubectl auth can-i --list` (resource, resource names, verbs), run with
/// the ServiceAccount's own kubeconfig.
fn permissions(kubeconfig: &Path, ns: &str) -> BTreeSet<String> {
    let out = run_ok(
        "kubectl",
        kubeconfig,
        &["auth", "can-i", "--list", "--namespace", ns],
    );
    let mut rows = BTreeSet::new();
    for line in out.lines().skip(1) {
        if line.starts_with(' ') {
            // Non-resource URLs: discovery and health, read-only, granted to every user.
            assert!(
                line.trim_end().ends_with("[get]"),
                "unexpected non-resource rule: {line}"
            );
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Columns: resource, non-resource URLs ([]), resource names ([...]), verbs ([...]).
        let resource = cols[0];
        let rest = line[resource.len()..].trim();
        let groups: Vec<&str> = rest
            .split(']')
            .map(|g| g.trim().trim_start_matches('['))
            .collect();
        rows.insert(format!("{resource} [{}] [{}]", groups[1], groups[2]));
    }
    rows
}

fn expected(rows: &[&str]) -> BTreeSet<String> {
    rows.iter().map(|r| r.to_string()).collect()
}

/// What every authenticated user may do (system:basic-user), not granted by the chart.
const DEFAULTS: &[&str] = &[
    "selfsubjectreviews.authentication.k8s.io [] [create]",
    "selfsubjectaccessreviews.authorization.k8s.io [] [create]",
    "selfsubjectrulesreviews.authorization.k8s.io [] [create]",
];

/// Exactly the operator's calls (docs/install.md, RBAC).
const SITE_RULES: &[&str] = &[
    "articlesites.articlesite.io [] [list watch patch]",
    "articlesites.articlesite.io/status [] [patch]",
    "articlesites.articlesite.io/finalizers [] [update]",
    "deployments.apps [] [get list watch create patch]",
    "statefulsets.apps [] [get list watch create patch]",
    "services [] [get list watch create patch]",
    "configmaps [] [get list watch create patch]",
    "roles.rbac.authorization.k8s.io [] [get list watch create patch delete]",
    "rolebindings.rbac.authorization.k8s.io [] [get list watch create patch delete]",
    "cronjobs.batch [] [get list watch create patch delete]",
    "jobs.batch [] [list watch create]",
    "pods/exec [] [create get]",
    "endpoints [] [get list watch create patch update delete]",
    "endpointslices.discovery.k8s.io [] [list delete]",
    "serviceaccounts [] [get list watch create patch]",
    "secrets [] [get list watch create update]",
    "events [] [list]",
    "persistentvolumeclaims [] [list watch patch delete]",
    "poddisruptionbudgets.policy [] [get list watch create patch delete]",
    "networkpolicies.networking.k8s.io [] [get list watch create patch]",
    "ingresses.networking.k8s.io [] [get list watch create patch delete]",
    "horizontalpodautoscalers.autoscaling [] [get list watch create patch delete]",
    "events.events.k8s.io [] [create patch]",
    "pods [] [get list watch patch update delete]",
    "pods/eviction [] [create]",
    "replicasets.apps [] [list]",
];

const CLUSTER_RULES: &[&str] = &[
    "storageclasses.storage.k8s.io [] [list watch]",
    "nodes [] [list watch]",
];

const LEASE_RULES: &[&str] = &[
    "leases.coordination.k8s.io [] [create]",
    "leases.coordination.k8s.io [articlesite-operator] [get patch]",
];

fn union(parts: &[&[&str]]) -> BTreeSet<String> {
    parts.iter().flat_map(|p| expected(p)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_upgrades_and_its_rbac_is_exactly_enough() {
    let client = client().await;
    let started = std::time::Instant::now();
    // The operator's namespace enforces the restricted pod security profile.
    let rel_ns = TestNamespace::create_with_labels(
        &client,
        "helm-op",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let sites_ns = TestNamespace::create(&client, "helm-sites").await;
    let release = Release {
        name: format!("aso-{}", &rel_ns.name[rel_ns.name.len() - 8..]),
        namespace: rel_ns.name.clone(),
        // Helm's default.
        uninstall_timeout: "5m0s",
    };
    let fullname = format!("{}-articlesite-operator", release.name);
    let c = chart();
    let c = c.to_str().expect("utf-8 path");
    adopt_crd(&client, &release.name, &rel_ns.name).await;

    // Install: every rendered object is accepted, and the Deployment's pods pass the
    // restricted profile (the API server refuses them otherwise) and become Ready.
    helm_ok(&[
        "install",
        &release.name,
        c,
        "--namespace",
        &rel_ns.name,
        "--wait",
        "--timeout",
        "90s",
    ]);
    let listed = release_objects(&release);
    let kinds: BTreeSet<&str> = listed.lines().filter_map(|l| l.split('/').next()).collect();
    println!(
        "installed: {}",
        listed.lines().collect::<Vec<_>>().join(", ")
    );
    for k in [
        "customresourcedefinition.apiextensions.k8s.io",
        "serviceaccount",
        "clusterrole.rbac.authorization.k8s.io",
        "clusterrolebinding.rbac.authorization.k8s.io",
        "role.rbac.authorization.k8s.io",
        "rolebinding.rbac.authorization.k8s.io",
        "deployment.apps",
        "poddisruptionbudget.policy",
        "service",
    ] {
        assert!(kinds.contains(k), "{k} missing from the release: {listed}");
    }
    wait_crd_established(&client).await;
    let d: Deployment = Api::namespaced(client.clone(), &rel_ns.name)
        .get(&fullname)
        .await
        .expect("operator Deployment");
    assert_eq!(
        d.status.as_ref().and_then(|s| s.ready_replicas),
        Some(2),
        "two operator replicas"
    );

    // The ServiceAccount's permissions, seen with its own token: exactly what the operator uses.
    let sa_config =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.kubeconfig", release.name));
    service_account_kubeconfig(&client, &rel_ns.name, &fullname, &sa_config).await;
    assert_eq!(
        permissions(&sa_config, &sites_ns.name),
        union(&[DEFAULTS, SITE_RULES, CLUSTER_RULES]),
        "cluster-wide mode, in a site namespace"
    );
    assert_eq!(
        permissions(&sa_config, &rel_ns.name),
        union(&[DEFAULTS, SITE_RULES, CLUSTER_RULES, LEASE_RULES]),
        "cluster-wide mode, in the release namespace (the Lease)"
    );

    // The operator, run locally with that token and the command line of the chart's Deployment
    // (leader election on), takes the Lease and reconciles a site to Ready without a refusal.
    let args = chart_args(&client, &rel_ns.name, &fullname, &sites_ns.name).await;
    assert!(args.iter().any(|a| a == "--leader-elect"), "{args:?}");
    let op_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = OperatorProcess::start(&format!("{}-1", release.name), &sa_config, &op_args);
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &sites_ns.name);
    sites
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "articlesite.io/v1alpha1", "kind": "ArticleSite",
                "metadata": {"name": "news"},
                "spec": {"app": {"image": "articlesite/article-server:0.1.0"},
                         "ingress": {"host": "news.example.com"}},
            }))
            .expect("site"),
        )
        .await
        .expect("create site");
    wait_for(
        "site Ready under the chart's RBAC",
        Duration::from_secs(90),
        || async {
            let s = sites.get("news").await.map_err(|e| e.to_string())?;
            if site_ready(&s) {
                Ok(())
            } else {
                Err(format!("{:?}", s.status))
            }
        },
    )
    .await;
    // The Argo CD health check calls the live, reconciled site Healthy.
    let live = serde_json::to_value(sites.get("news").await.expect("site")).expect("json");
    let health = common::gitops::argocd_health(&live);
    assert_eq!(
        health.0, "Healthy",
        "Argo CD health of the live site: {health:?}"
    );
    // Removing the ingress exercises the one delete the operator sends.
    sites
        .patch(
            "news",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/spec/ingress"}]))
                    .expect("patch"),
            ),
        )
        .await
        .expect("drop ingress");
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> =
        Api::namespaced(client.clone(), &sites_ns.name);
    wait_for(
        "Ingress deleted by the operator",
        Duration::from_secs(30),
        || async {
            match ingresses.get_opt("news").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|i| i.is_some()))),
            }
        },
    )
    .await;
    assert_eq!(
        op.metric("articlesite_operator_reconcile_errors_total")
            .await,
        Ok(0.0),
        "no reconcile failed"
    );
    assert_eq!(op.metric("articlesite_operator_leader").await, Ok(1.0));
    let log = op.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "a request was refused:\n{log}"
    );
    drop(op);

    // Upgrade to a new chart version whose CRD changed (an extra printer column): Helm applies
    // the new CRD (it would not from crds/), and switches RBAC to the listed namespace.
    let v2 = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chart-{}", release.name));
    copy_dir(&chart(), &v2);
    let crd_file = v2.join("files/articlesite.crd.yaml");
    let crd_text = std::fs::read_to_string(&crd_file).expect("crd");
    let marker = "  - additionalPrinterColumns:\n";
    assert!(crd_text.contains(marker));
    std::fs::write(
        &crd_file,
        crd_text.replacen(marker, &format!("{marker}    - jsonPath: .metadata.generation\n      name: Generation\n      priority: 1\n      type: integer\n"), 1),
    )
    .expect("write crd");
    let chart_yaml = std::fs::read_to_string(v2.join("Chart.yaml")).expect("Chart.yaml");
    std::fs::write(
        v2.join("Chart.yaml"),
        chart_yaml.replace("version: 0.1.0", "version: 0.1.1-test"),
    )
    .expect("Chart.yaml");
    let watch = format!("watchNamespaces={{{}}}", sites_ns.name);
    helm_ok(&[
        "upgrade",
        &release.name,
        v2.to_str().unwrap(),
        "--namespace",
        &rel_ns.name,
        "--set",
        &watch,
        "--wait",
        "--timeout",
        "90s",
    ]);
    let listed = release_objects(&release);
    assert!(
        listed.contains(&format!("role.rbac.authorization.k8s.io/{fullname}\n"))
            && listed.contains(&format!(
                "clusterrole.rbac.authorization.k8s.io/{fullname}-storageclasses"
            )),
        "namespaced RBAC after the upgrade: {listed}"
    );
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get(ArticleSite::crd_name())
        .await
        .expect("CRD");
    let columns: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert!(
        columns.contains(&"Generation".to_string()),
        "helm upgrade updated the CRD: {columns:?}"
    );
    assert_eq!(
        permissions(&sa_config, &sites_ns.name),
        union(&[DEFAULTS, SITE_RULES, CLUSTER_RULES]),
        "namespaced mode, in the watched namespace"
    );
    assert_eq!(
        permissions(&sa_config, &rel_ns.name),
        union(&[DEFAULTS, CLUSTER_RULES, LEASE_RULES]),
        "namespaced mode: nothing on sites outside the watched namespaces"
    );
    // Still enough: a spec change is reconciled under the namespaced Role.
    let args = chart_args(&client, &rel_ns.name, &fullname, &sites_ns.name).await;
    assert!(
        args.contains(&format!("--namespace={}", sites_ns.name)),
        "the chart limits the operator to watchNamespaces: {args:?}"
    );
    let op_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = OperatorProcess::start(&format!("{}-2", release.name), &sa_config, &op_args);
    sites
        .patch(
            "news",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"app": {"replicas": 3}}})),
        )
        .await
        .expect("scale");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &sites_ns.name);
    wait_for(
        "Deployment scaled under the namespaced Role",
        Duration::from_secs(60),
        || async {
            let d = deployments.get("news").await.map_err(|e| e.to_string())?;
            let s = sites.get("news").await.map_err(|e| e.to_string())?;
            match d.spec.and_then(|s| s.replicas) {
                Some(3) if site_ready(&s) => Ok(()),
                other => Err(format!("replicas {other:?}, status {:?}", s.status)),
            }
        },
    )
    .await;
    assert_eq!(
        op.metric("articlesite_operator_reconcile_errors_total")
            .await,
        Ok(0.0)
    );
    drop(op);

    // Back to this chart (so the shared CRD is the generated one again); then uninstall keeps
    // the CRD, and with it every ArticleSite.
    helm_ok(&[
        "upgrade",
        &release.name,
        c,
        "--namespace",
        &rel_ns.name,
        "--wait",
        "--timeout",
        "90s",
    ]);
    helm_ok(&[
        "uninstall",
        &release.name,
        "--namespace",
        &rel_ns.name,
        "--wait",
    ]);
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(ArticleSite::crd_name())
        .await
        .expect("get CRD");
    assert!(crd.is_some(), "the CRD survives helm uninstall");
    assert!(
        sites.get_opt("news").await.expect("get site").is_some(),
        "sites survive helm uninstall"
    );
    println!(
        "helm install, 2 upgrades, RBAC checks, 2 operator runs and uninstall: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The arguments of the chart's operator container, for a local run: the metrics address is the
/// test's own, the pod's environment (POD_NAME, POD_NAMESPACE) becomes flags, and a cluster-wide
/// operator is kept to the test's namespace so that it leaves other tests' sites alone.
async fn chart_args(client: &kube::Client, ns: &str, name: &str, sites_ns: &str) -> Vec<String> {
    let d: Deployment = Api::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("operator Deployment");
    let container = d
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].clone())
        .expect("operator container");
    let mut args: Vec<String> = container
        .args
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.starts_with("--metrics-addr"))
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    args.remove(0);
    if !args.iter().any(|a| a.starts_with("--namespace")) {
        args.push(format!("--namespace={sites_ns}"));
    }
    args.extend([
        format!("--lease-namespace={ns}"),
        "--lease-identity=helm-test".into(),
    ]);
    args
}

/// Every object of the release's current manifest, as the API server has it (`kubectl get -f`
/// fails when one is missing).
fn release_objects(release: &Release) -> String {
    let manifest = helm_ok(&[
        "get",
        "manifest",
        &release.name,
        "--namespace",
        &release.namespace,
    ]);
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.yaml", release.name));
    std::fs::write(&file, &manifest).expect("write manifest");
    run_ok(
        "kubectl",
        &kubeconfig_path(),
        &[
            "get",
            "-f",
            file.to_str().expect("utf-8 path"),
            "-o",
            "name",
        ],
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read chart dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
