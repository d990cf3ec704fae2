//! Autoscaling on the local cluster (docs/autoscaling.md): the HorizontalPodAutoscaler the
//! operator creates, the handover of the Deployment's `replicas` to it and back, and a
//! scale-up and scale-down driven by simulated load, during which the operator writes nothing
//! to the Deployment (proven from the API server's audit log).
//!
//! The load is simulated: kwok reports each pod's CPU use from its `kwok.x-k8s.io/usage-cpu`
//! annotation (1m without one) at the kubelet resource-metrics path, metrics-server scrapes it
//! and serves `metrics.k8s.io`, the controller-manager's autoscaler reads that. Nothing is
//! mocked; only the CPU numbers are made up.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use common::audit::{audit_events, audit_log, by_operator, file_len, in_namespace, is_write};
use common::crd::install_crd;
use common::pods::{is_ready, live_pods, node_of};
use common::site::{IMAGE, condition, site, site_ready};
use common::{TestNamespace, client, namespace_with_operator, wait_for};

const TIMEOUT: Duration = Duration::from_secs(180);
/// The operator's field manager, and the one it hands `replicas` over with.
const MANAGER: &str = "articlesite-operator";
const HANDOVER_MANAGER: &str = "articlesite-operator-handover";
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// kwok's simulated CPU use of a pod (hack/cluster/build.sh, kwok's usage-from-annotation).
const USAGE_CPU: &str = "kwok.x-k8s.io/usage-cpu";

/// The replica count of the Deployment, as its spec says.
fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

/// Managers whose entries own `spec.replicas` of the Deployment.
fn replicas_owners(d: &Deployment) -> BTreeSet<String> {
    d.managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
        })
        .filter_map(|m| {
            Some(format!(
                "{}/{}",
                m.manager.clone()?,
                m.operation.clone().unwrap_or_default()
            ))
        })
        .collect()
}

/// Zone of each node, for counting the zones of pods.
async fn zones(client: &Client) -> BTreeMap<String, String> {
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
        .into_iter()
        .map(|n| {
            let zone = n
                .labels()
                .get("topology.kubernetes.io/zone")
                .cloned()
                .unwrap_or_default();
            (n.name_any(), zone)
        })
        .collect()
}

fn pods_per_zone(pods: &[Pod], zones: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut per_zone = BTreeMap::new();
    for p in pods {
        let zone = zones.get(node_of(p)).cloned().unwrap_or_default();
        *per_zone.entry(zone).or_insert(0) += 1;
    }
    per_zone
}

/// Operator write requests on Deployments in `ns` after byte `offset` of the audit log.
fn operator_deployment_writes(offset: u64, ns: &str) -> Vec<String> {
    audit_events(&audit_log(), offset, |e| {
        by_operator(e)
            && in_namespace(e, ns)
            && is_write(e)
            && e["objectRef"]["resource"].as_str() == Some("deployments")
    })
    .iter()
    .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
    .collect()
}

/// Every operator write in `ns` after `offset`, counted by verb and resource.
fn operator_writes_by_resource(offset: u64, ns: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in audit_events(&audit_log(), offset, |e| {
        by_operator(e) && in_namespace(e, ns) && is_write(e)
    }) {
        let resource = match e["objectRef"]["subresource"].as_str() {
            Some(sub) => format!(
                "{}/{sub}",
                e["objectRef"]["resource"].as_str().unwrap_or("")
            ),
            None => e["objectRef"]["resource"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        };
        *counts
            .entry(format!("{} {resource}", e["verb"].as_str().unwrap_or("")))
            .or_insert(0) += 1;
    }
    counts
}

/// Waits until the Deployment has `n` replicas and the site `n` live, ready app pods.
async fn wait_pods(
    deployments: &Api<Deployment>,
    pods: &Api<Pod>,
    site: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Pod> {
    wait_for(&format!("{site}: {n} ready app pods"), timeout, || async {
        let d = deployments.get(site).await.map_err(|e| e.to_string())?;
        let live = live_pods(pods, site, "app").await?;
        let ready = live.iter().filter(|p| is_ready(p)).count();
        if replicas(&d) == Some(i32::try_from(n).unwrap_or(0)) && live.len() == n && ready == n {
            Ok(live)
        } else {
            Err(format!(
                "deployment replicas {:?}, {} live pods, {ready} ready",
                replicas(&d),
                live.len()
            ))
        }
    })
    .await
}

/// Sets the simulated CPU use of every live app pod of the site.
async fn set_cpu_usage(pods: &Api<Pod>, site: &str, usage: &str) {
    for p in live_pods(pods, site, "app").await.expect("app pods") {
        let patch = json!({"metadata": {"annotations": {USAGE_CPU: usage}}});
        match pods
            .patch(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("annotate pod {}: {e}", p.name_any()),
        }
    }
}

/// Waits until the autoscaler reads CPU metrics of the pods: the metrics pipeline works.
async fn wait_metrics(hpas: &Api<HorizontalPodAutoscaler>, name: &str) -> i32 {
    wait_for(
        "the autoscaler to read pod CPU metrics (kwok -> metrics-server -> metrics.k8s.io)",
        TIMEOUT,
        || async {
            let h = hpas.get(name).await.map_err(|e| e.to_string())?;
            let status = h.status.unwrap_or_default();
            let cpu = status.current_metrics.iter().flatten().find_map(|m| {
                m.resource
                    .as_ref()
                    .and_then(|r| r.current.average_utilization)
            });
            cpu.ok_or_else(|| format!("conditions {:?}", status.conditions))
        },
    )
    .await
}

/// The API server refuses invalid autoscaling, each case with a message naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_autoscaling_is_refused() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "as-invalid").await;
    let ar = ApiResource::erase::<ArticleSite>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let app = |extra: Value| {
        let mut a = json!({"image": IMAGE});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"app": a})
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "min-above-max",
            app(json!({"autoscaling": {"minReplicas": 6, "maxReplicas": 4}})),
            "minReplicas (spec.app.replicas when minReplicas is unset) must not be above maxReplicas",
        ),
        (
            "replicas-above-max",
            app(json!({"replicas": 5, "autoscaling": {"maxReplicas": 4}})),
            "must not be above maxReplicas",
        ),
        (
            "max-above-ceiling",
            app(json!({"autoscaling": {"maxReplicas": 51}})),
            "spec.app.autoscaling.maxReplicas must be between 1 and 50",
        ),
        (
            "min-zero",
            app(json!({"autoscaling": {"minReplicas": 0, "maxReplicas": 4}})),
            "spec.app.autoscaling.minReplicas must be at least 1",
        ),
        (
            "cpu-target-zero",
            app(json!({"autoscaling": {"maxReplicas": 4, "targetCPUUtilizationPercentage": 0}})),
            "targetCPUUtilizationPercentage must be between 1 and 100",
        ),
        (
            "cpu-target-above-100",
            app(json!({"autoscaling": {"maxReplicas": 4, "targetCPUUtilizationPercentage": 101}})),
            "targetCPUUtilizationPercentage must be between 1 and 100",
        ),
        (
            "memory-target-zero",
            app(json!({"autoscaling": {"maxReplicas": 4, "targetMemoryUtilizationPercentage": 0}})),
            "targetMemoryUtilizationPercentage must be between 1 and 100",
        ),
        (
            "stabilization-below-a-minute",
            app(json!({"autoscaling": {"maxReplicas": 4, "scaleDownStabilizationSeconds": 30}})),
            "greater than or equal to 60",
        ),
        (
            "scaled-to-zero",
            app(json!({"replicas": 0, "autoscaling": {"maxReplicas": 4}})),
            "spec.app.autoscaling cannot be combined with spec.app.replicas: 0",
        ),
        (
            "no-cpu-request",
            app(json!({"resources": {"requests": {"memory": "128Mi"}},
                "autoscaling": {"maxReplicas": 4}})),
            "spec.app.autoscaling needs spec.app.resources.requests.cpu",
        ),
        (
            "memory-target-without-request",
            app(json!({"resources": {"requests": {"cpu": "100m"}},
                "autoscaling": {"maxReplicas": 4, "targetMemoryUtilizationPercentage": 80}})),
            "needs spec.app.resources.requests.memory",
        ),
    ];
    let mut failures = Vec::new();
    for (name, spec, expected) in &cases {
        let obj = DynamicObject::new(name, &ar).data(json!({"spec": spec}));
        match api.create(&PostParams::default(), &obj).await {
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(expected) => {}
            Err(kube::Error::Api(s)) => failures.push(format!(
                "{name}: {} {:?}, expected {expected:?}",
                s.code, s.message
            )),
            other => failures.push(format!("{name}: {other:?}, expected a refusal")),
        }
    }
    // `kubectl scale asite` moves the floor while minReplicas is unset: above the maximum,
    // and to 0, it is refused too.
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    sites
        .create(
            &PostParams::default(),
            &site(
                "valid",
                app(json!({"replicas": 2, "autoscaling": {"maxReplicas": 4}})),
            ),
        )
        .await
        .expect("a valid autoscaled site is accepted");
    for (to, expected) in [
        (5, "must not be above maxReplicas"),
        (0, "cannot be combined with spec.app.replicas: 0"),
    ] {
        match sites
            .patch_scale(
                "valid",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"replicas": to}})),
            )
            .await
        {
            Err(kube::Error::Api(s)) if s.message.contains(expected) => {}
            other => failures.push(format!("scale to {to}: {other:?}, expected {expected:?}")),
        }
    }
    sites
        .patch_scale(
            "valid",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scaling within the bounds moves the floor");
    assert!(
        failures.is_empty(),
        "not refused as expected:\n{}",
        failures.join("\n")
    );
}

/// Turning autoscaling on creates the autoscaler exactly as designed and hands the
/// Deployment's `replicas` over without a jump; `kubectl scale asite` then moves the floor;
/// turning it off deletes the autoscaler and the operator owns `replicas` again, at the same
/// count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_handed_over_and_back_without_a_jump() {
    let (client, ns, _op, sites) =
        namespace_with_operator("as-handover", &[], &["--resync-seconds", "3"]).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    sites
        .create(
            &PostParams::default(),
            &site("news", json!({"app": {"image": IMAGE, "replicas": 3}})),
        )
        .await
        .expect("create site");
    wait_pods(&deployments, &pods, "news", 3, TIMEOUT).await;
    let before = deployments.get("news").await.expect("deployment");
    assert!(
        replicas_owners(&before).contains(&format!("{MANAGER}/Apply")),
        "{:?}",
        replicas_owners(&before)
    );

    // On: watch the Deployment's count from before the change until the autoscaler reads
    // metrics, so that any jump in between is seen.
    let offset = file_len(&audit_log());
    let started = Instant::now();
    sites
        .patch(
            "news",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"app": {"autoscaling": {"maxReplicas": 5}}}})),
        )
        .await
        .expect("turn autoscaling on");
    let seen = Mutex::new(BTreeSet::new());
    let hpa = wait_for("the autoscaler, reading metrics", TIMEOUT, || async {
        let d = deployments.get("news").await.map_err(|e| e.to_string())?;
        seen.lock().map_err(|e| e.to_string())?.insert(replicas(&d));
        let h = hpas.get("news").await.map_err(|e| e.to_string())?;
        let reading = h
            .status
            .as_ref()
            .and_then(|s| s.current_metrics.as_ref())
            .is_some_and(|m| !m.is_empty());
        let handed = !replicas_owners(&d).contains(&format!("{MANAGER}/Apply"));
        if reading && handed {
            Ok(h)
        } else {
            Err(format!(
                "reading metrics {reading}, handed over {handed}, replicas {:?}",
                replicas(&d)
            ))
        }
    })
    .await;
    let seen = seen.into_inner().expect("seen");
    println!(
        "autoscaling on: the autoscaler read metrics after {:.1}s; replica counts seen {seen:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(seen, BTreeSet::from([Some(3)]), "no replica jump");
    let spec = &hpa.spec;
    assert_eq!(
        (
            spec.scale_target_ref.kind.as_str(),
            spec.scale_target_ref.name.as_str()
        ),
        ("Deployment", "news")
    );
    assert_eq!(
        (spec.min_replicas, spec.max_replicas),
        (Some(3), 5),
        "the floor is spec.app.replicas"
    );
    let cpu = spec
        .metrics
        .iter()
        .flatten()
        .find_map(|m| m.resource.as_ref());
    assert_eq!(
        cpu.map(|r| (r.name.as_str(), r.target.average_utilization)),
        Some(("cpu", Some(70)))
    );
    let behavior = spec.behavior.as_ref().expect("behavior");
    let up = behavior.scale_up.as_ref().expect("scale up");
    let down = behavior.scale_down.as_ref().expect("scale down");
    assert_eq!(up.stabilization_window_seconds, Some(0));
    assert_eq!(down.stabilization_window_seconds, Some(300));
    assert_eq!(
        down.policies
            .iter()
            .flatten()
            .map(|p| (p.type_.as_str(), p.value, p.period_seconds))
            .collect::<Vec<_>>(),
        [("Pods", 1, 60)]
    );
    assert!(
        hpa.owner_references()
            .iter()
            .any(|o| o.kind == "ArticleSite" && o.name == "news")
    );
    let d = deployments.get("news").await.expect("deployment");
    let owners = replicas_owners(&d);
    assert!(
        !owners.contains(&format!("{MANAGER}/Apply"))
            && owners.contains(&format!("{HANDOVER_MANAGER}/Apply")),
        "the operator's apply no longer owns replicas, the handover manager does: {owners:?}"
    );
    let writes = operator_deployment_writes(offset, &ns.name);
    println!("autoscaling on: operator writes to the Deployment: {writes:?}");
    assert_eq!(writes.len(), 2, "the handover and the apply: {writes:?}");

    // `kubectl scale asite --replicas=4` raises the floor; the autoscaler scales to it.
    sites
        .patch_scale(
            "news",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 4}})),
        )
        .await
        .expect("scale the site");
    let offset = file_len(&audit_log());
    wait_pods(&deployments, &pods, "news", 4, TIMEOUT).await;
    let h = hpas.get("news").await.expect("hpa");
    assert_eq!(h.spec.min_replicas, Some(4));
    assert_eq!(
        operator_deployment_writes(offset, &ns.name),
        Vec::<String>::new(),
        "the autoscaler, not the operator, scaled the Deployment"
    );

    // Off: the autoscaler goes, the operator owns replicas again at spec.app.replicas (4, as
    // scaled), which is the count running: no jump either.
    sites
        .patch(
            "news",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"app": {"autoscaling": null}}})),
        )
        .await
        .expect("turn autoscaling off");
    let seen = Mutex::new(BTreeSet::new());
    wait_for(
        "the autoscaler deleted and replicas owned again",
        TIMEOUT,
        || async {
            let d = deployments.get("news").await.map_err(|e| e.to_string())?;
            seen.lock().map_err(|e| e.to_string())?.insert(replicas(&d));
            let gone = hpas
                .get_opt("news")
                .await
                .map_err(|e| e.to_string())?
                .is_none();
            let owned = replicas_owners(&d).contains(&format!("{MANAGER}/Apply"));
            (gone && owned)
                .then_some(())
                .ok_or_else(|| format!("autoscaler gone {gone}, replicas owned {owned}"))
        },
    )
    .await;
    let seen = seen.into_inner().expect("seen");
    println!("autoscaling off: replica counts seen {seen:?}");
    assert_eq!(seen, BTreeSet::from([Some(4)]), "no replica jump");
    let s = sites.get("news").await.expect("site");
    assert!(
        s.status
            .as_ref()
            .and_then(|st| st.app.as_ref())
            .is_some_and(|a| a.autoscaling.is_none())
    );
    wait_for("the site Ready at 4 pods", TIMEOUT, || async {
        let s = sites.get("news").await.map_err(|e| e.to_string())?;
        site_ready(&s)
            .then_some(())
            .ok_or_else(|| format!("{:?}", condition(&s, "Ready")))
    })
    .await;
}

/// Simulated load scales the site up to maxReplicas (the status says it is limited) and,
/// once it ends, down again one pod at a time, each time removing the pod the operator marked
/// so that the zone spread holds; the operator sends no write to the Deployment throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_scales_up_and_down_without_operator_writes_to_the_deployment() {
    let (client, ns, _op, sites) =
        namespace_with_operator("as-load", &[], &["--resync-seconds", "3"]).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let zones = zones(&client).await;
    sites
        .create(
            &PostParams::default(),
            &site(
                "news",
                json!({"app": {"image": IMAGE, "replicas": 3, "autoscaling": {
                    "maxReplicas": 5, "scaleDownStabilizationSeconds": 60}}}),
            ),
        )
        .await
        .expect("create site");
    let three = wait_pods(&deployments, &pods, "news", 3, TIMEOUT).await;
    assert_eq!(pods_per_zone(&three, &zones).len(), 3, "3 pods in 3 zones");
    // Created at its minimum, not at the API server's default of one pod.
    let scaled: Vec<String> =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns.name)
            .list(
                &ListParams::default()
                    .fields("involvedObject.kind=Deployment,reason=ScalingReplicaSet"),
            )
            .await
            .expect("events")
            .items
            .into_iter()
            .filter_map(|e| e.message)
            .collect();
    assert!(
        scaled.iter().all(|m| !m.contains(" to 1")) && scaled.iter().any(|m| m.ends_with("to 3")),
        "{scaled:?}"
    );
    let idle = wait_metrics(&hpas, "news").await;
    println!("idle: CPU {idle}% of the request");

    let offset = file_len(&audit_log());
    let started = Instant::now();
    // 300m against a 100m request: 300 %, above the 70 % target.
    set_cpu_usage(&pods, "news", "300m").await;
    let five = wait_pods(&deployments, &pods, "news", 5, TIMEOUT).await;
    let up = started.elapsed();
    let limited = wait_for(
        "status: scaling limited at maxReplicas",
        TIMEOUT,
        || async {
            let s = sites.get("news").await.map_err(|e| e.to_string())?;
            let a = s
                .status
                .and_then(|st| st.app)
                .and_then(|a| a.autoscaling)
                .ok_or("no autoscaling status")?;
            if a.scaling_limited && a.reason.as_deref() == Some("TooManyReplicas") {
                Ok(a)
            } else {
                Err(format!("{a:?}"))
            }
        },
    )
    .await;
    println!(
        "scale-up 3 -> 5 pods ready: {:.1}s after the load started; status {limited:?}",
        up.as_secs_f64()
    );
    let per_zone = pods_per_zone(&five, &zones);
    assert_eq!(per_zone.len(), 3, "{per_zone:?}");

    // The operator keeps the next pod to go marked: one in a zone that has two.
    let marked = wait_for("one marked app pod", TIMEOUT, || async {
        let live = live_pods(&pods, "news", "app").await?;
        let marked: Vec<&Pod> = live
            .iter()
            .filter(|p| p.annotations().get(DELETION_COST).map(String::as_str) == Some("-1000"))
            .collect();
        match marked.as_slice() {
            [one] => Ok((
                one.name_any(),
                zones.get(node_of(one)).cloned().unwrap_or_default(),
            )),
            other => Err(format!("{} marked", other.len())),
        }
    })
    .await;
    assert_eq!(
        per_zone.get(&marked.1),
        Some(&2),
        "the marked pod {} is in a zone with two pods: {per_zone:?}",
        marked.0
    );

    // The load ends: down one pod a minute, the marked one first.
    let ended = Instant::now();
    set_cpu_usage(&pods, "news", "1m").await;
    let four = wait_pods(&deployments, &pods, "news", 4, TIMEOUT).await;
    let first_down = ended.elapsed();
    assert!(
        four.iter().all(|p| p.name_any() != marked.0),
        "the marked pod {} went first",
        marked.0
    );
    assert_eq!(pods_per_zone(&four, &zones).len(), 3, "4 pods in 3 zones");
    let three = wait_pods(&deployments, &pods, "news", 3, TIMEOUT).await;
    let second_down = ended.elapsed();
    let per_zone = pods_per_zone(&three, &zones);
    assert_eq!(per_zone.len(), 3, "3 pods in 3 zones: {per_zone:?}");
    println!(
        "scale-down after the load ended: 5 -> 4 in {:.1}s, 4 -> 3 in {:.1}s",
        first_down.as_secs_f64(),
        second_down.as_secs_f64()
    );

    let deployment_writes = operator_deployment_writes(offset, &ns.name);
    let all = operator_writes_by_resource(offset, &ns.name);
    println!(
        "while the autoscaler scaled 3 -> 5 -> 3: operator writes to the Deployment {}, all operator writes {all:?}",
        deployment_writes.len()
    );
    assert_eq!(deployment_writes, Vec::<String>::new());
    let s = sites.get("news").await.expect("site");
    let ha = condition(&s, "HighlyAvailable").expect("HighlyAvailable");
    assert_eq!(ha.0, "True", "{ha:?}");
}
