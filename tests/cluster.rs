//! Proof that the local control plane behaves like a real cluster: the scheduler spreads
//! pods over zones, the controller-manager garbage-collects and runs StatefulSets and
//! PodDisruptionBudgets, kwok's volume stages bind claims, and eviction honours budgets.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestNamespace, client, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn pod_template(app: &str) -> serde_json::Value {
    json!({
        "metadata": { "labels": { "app": app } },
        "spec": {
            "containers": [{
                "name": "main",
                "image": "pause:3.10",
                "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } }
            }]
        }
    })
}

async fn running_pods(client: &Client, ns: &str, app: &str) -> Result<Vec<Pod>, String> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map_err(|e| e.to_string())?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect())
}

#[tokio::test]
async fn deployment_spreads_over_zones_and_is_garbage_collected() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "cluster-spread").await;
    let mut template = pod_template("spread");
    template["spec"]["topologySpreadConstraints"] = json!([{
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": { "matchLabels": { "app": "spread" } }
    }]);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "spread" },
        "spec": {
            "replicas": 6,
            "selector": { "matchLabels": { "app": "spread" } },
            "template": template
        }
    }))
    .unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods = wait_for("6 running pods", TIMEOUT, || async {
        let pods = running_pods(&client, &ns.name, "spread").await?;
        if pods.len() == 6 {
            Ok(pods)
        } else {
            Err(format!("{} running", pods.len()))
        }
    })
    .await;

    // The zone of a pod is the zone label of the node the scheduler bound it to.
    let nodes = Api::<Node>::all(client.clone());
    let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
    for pod in &pods {
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
        let node = nodes.get(&node_name).await.unwrap();
        let zone = node.metadata.labels.unwrap()["topology.kubernetes.io/zone"].clone();
        *per_zone.entry(zone).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [("zone-a", 2), ("zone-b", 2), ("zone-c", 2)]
        .into_iter()
        .map(|(z, n)| (z.to_string(), n))
        .collect();
    assert_eq!(per_zone, expected, "pods per zone");

    // Deleting the Deployment lets the garbage collector remove its ReplicaSet and Pods.
    deployments
        .delete("spread", &DeleteParams::background())
        .await
        .unwrap();
    let replicasets = Api::<ReplicaSet>::namespaced(client.clone(), &ns.name);
    let all_pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    wait_for("ReplicaSet and Pods garbage-collected", TIMEOUT, || async {
        let rs = replicasets
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let pods = all_pods
            .list(&ListParams::default().labels("app=spread"))
            .await
            .map_err(|e| e.to_string())?;
        if rs.items.is_empty() && pods.items.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} ReplicaSets, {} Pods left",
                rs.items.len(),
                pods.items.len()
            ))
        }
    })
    .await;
}

#[tokio::test]
async fn statefulset_claims_are_provisioned_and_bound() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "cluster-sts").await;
    let statefulset: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": "db" },
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": { "matchLabels": { "app": "db" } },
            "template": pod_template("db"),
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": "1Gi" } }
                }
            }]
        }
    }))
    .unwrap();
    Api::<StatefulSet>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &statefulset)
        .await
        .unwrap();

    wait_for("2 running StatefulSet pods", TIMEOUT, || async {
        let n = running_pods(&client, &ns.name, "db").await?.len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} running"))
        }
    })
    .await;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut bound: Vec<(String, String)> = claims
        .items
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap(),
                c.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    bound.sort();
    assert_eq!(
        bound,
        vec![
            ("data-db-0".to_string(), "Bound".to_string()),
            ("data-db-1".to_string(), "Bound".to_string())
        ]
    );
}

#[tokio::test]
async fn disruption_budget_counts_and_refuses_eviction() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "cluster-pdb").await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "guarded" },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "guarded" } },
            "template": pod_template("guarded")
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": { "name": "guarded" },
        "spec": {
            "minAvailable": 2,
            "selector": { "matchLabels": { "app": "guarded" } }
        }
    }))
    .unwrap();
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name);
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();

    // Three ready pods and minAvailable 2 leave exactly one disruption.
    wait_for("disruptionsAllowed = 1", TIMEOUT, || async {
        let pdb = pdbs.get("guarded").await.map_err(|e| e.to_string())?;
        let status = pdb.status.unwrap_or_default();
        if status.current_healthy == Some(3) && status.disruptions_allowed == Some(1) {
            Ok(())
        } else {
            Err(format!(
                "healthy {:?}, allowed {:?}",
                status.current_healthy, status.disruptions_allowed
            ))
        }
    })
    .await;

    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let pods = running_pods(&client, &ns.name, "guarded").await.unwrap();
    let first = pods[0].metadata.name.clone().unwrap();
    pods_api
        .evict(&first, &EvictParams::default())
        .await
        .expect("an eviction within the budget is accepted");

    // Raise the budget to all three pods: once the evicted pod's replacement is healthy,
    // no disruption is allowed and the API server refuses an eviction with 429.
    pdbs.patch(
        "guarded",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "minAvailable": 3 } })),
    )
    .await
    .unwrap();
    wait_for("3 healthy, disruptionsAllowed = 0", TIMEOUT, || async {
        let pdb = pdbs.get("guarded").await.map_err(|e| e.to_string())?;
        let generation = pdb.metadata.generation;
        let status = pdb.status.unwrap_or_default();
        if status.observed_generation == generation
            && status.current_healthy == Some(3)
            && status.disruptions_allowed == Some(0)
        {
            Ok(())
        } else {
            Err(format!(
                "healthy {:?}, allowed {:?}",
                status.current_healthy, status.disruptions_allowed
            ))
        }
    })
    .await;
    let pods = running_pods(&client, &ns.name, "guarded").await.unwrap();
    let second = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .find(|n| *n != first)
        .unwrap();
    let err = pods_api
        .evict(&second, &EvictParams::default())
        .await
        .expect_err("an eviction that breaks the budget is refused");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 429, "refusal status: {status:?}");
            assert!(
                status.message.contains("disruption budget"),
                "refusal message: {}",
                status.message
            );
        }
        other => panic!("unexpected error: {other}"),
    }
}
