//! The replicated database on the simulated nodes (docs/high-availability.md, "Replicated
//! database"). Patroni does not run on kwok nodes: these tests play it, writing the pod
//! annotations and labels and the Endpoints annotations Patroni would write, and check what the
//! operator creates, reports and asks of Patroni. Each test has its own namespace and operator.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use common::operator::OperatorProcess;
use common::pods::{is_ready, live_pods, node_of};
use common::site::{IMAGE, condition, site};
use common::{FIELD_MANAGER, TestNamespace, namespace_with_operator, wait_for};

const TIMEOUT: Duration = Duration::from_secs(180);

/// The test that cordons a node and those a cordon would disturb run one at a time (a tokio
/// Mutex works across the tests' runtimes).
static NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fixture {
    client: Client,
    ns: TestNamespace,
    sites: Api<ArticleSite>,
    pods: Api<Pod>,
    endpoints: Api<Endpoints>,
    _operator: OperatorProcess,
}

async fn fixture(prefix: &str) -> Fixture {
    let (client, ns, operator, sites) =
        namespace_with_operator(prefix, &[], &["--resync-seconds", "2"]).await;
    Fixture {
        pods: Api::namespaced(client.clone(), &ns.name),
        endpoints: Api::namespaced(client.clone(), &ns.name),
        client,
        ns,
        sites,
        _operator: operator,
    }
}

fn spec(instances: Option<i32>) -> Value {
    let mut db = json!({"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}});
    if let Some(n) = instances {
        db["instances"] = json!(n);
    }
    json!({"app": {"image": IMAGE, "replicas": 1}, "database": db})
}

impl Fixture {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn get<K>(&self, name: &str) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        wait_for(&format!("{name} exists"), TIMEOUT, || async {
            self.api::<K>()
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not yet".to_string())
        })
        .await
    }

    /// Waits for `n` ready database pods of `site`, sorted by name.
    async fn database_pods(&self, site: &str, n: usize) -> Vec<Pod> {
        wait_for(&format!("{n} ready database pods"), TIMEOUT, || async {
            let mut pods = live_pods(&self.pods, site, "database").await?;
            pods.sort_by_key(|p| p.name_any());
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            (pods.len() == n && ready == n)
                .then_some(pods)
                .ok_or_else(|| format!("{ready} ready"))
        })
        .await
    }

    /// Makes `pod` crash-loop (kwok's simulation stage, `hack/cluster/kwok-stages/`).
    async fn crash_loop(&self, pod: &str) {
        self.pods
            .patch(
                pod,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {
                    "articlesite.io/simulate": "crashloop"}}})),
            )
            .await
            .expect("make the pod crash-loop");
    }

    /// Plays Patroni's member update: its pod's `status` annotation and `role` label. As in
    /// Patroni 4, a streaming replica is `state: running` with `replication_state: streaming`.
    async fn member(&self, pod: &str, role: &str, state: &str, xlog: i64) {
        let mut status = json!({"role": role, "state": state, "xlog_location": xlog,
            "replay_lsn": xlog, "timeline": 1});
        if state == "streaming" {
            status["state"] = json!("running");
            status["replication_state"] = json!("streaming");
        }
        let patch = json!({"metadata": {"labels": {"role": role},
            "annotations": {"status": status.to_string()}}});
        self.pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate pod as Patroni");
    }

    /// Plays Patroni's write of one of its Endpoints objects (annotations only, created with
    /// Patroni's labels when missing).
    async fn patroni_object(&self, site: &str, name: &str, annotations: Value) {
        let body = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "annotations": annotations, "labels": {
                "app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": site,
                "app.kubernetes.io/component": "database",
                "cluster-name": format!("{site}-postgresql")}}});
        self.endpoints
            .patch(
                name,
                &PatchParams::apply("patroni").force(),
                &Patch::Apply(&body),
            )
            .await
            .expect("write Patroni's object");
    }

    async fn database_status(&self, site: &str) -> articlesite_operator::crd::DatabaseStatus {
        self.sites
            .get(site)
            .await
            .expect("site")
            .status
            .and_then(|s| s.database)
            .unwrap_or_default()
    }

    async fn wait_status<T>(
        &self,
        site: &str,
        what: &str,
        check: impl Fn(&ArticleSite) -> Option<T>,
    ) -> T {
        wait_for(what, TIMEOUT, || async {
            let s = self.sites.get(site).await.map_err(|e| e.to_string())?;
            check(&s).ok_or_else(|| {
                format!(
                    "database {:?}, DatabaseHighlyAvailable {:?}",
                    s.status.as_ref().and_then(|s| s.database.clone()),
                    condition(&s, "DatabaseHighlyAvailable")
                )
            })
        })
        .await
    }

    /// How many times an Event of `reason` happened (kube's recorder counts repeats of the
    /// same reason as a series of one Event).
    async fn event_count(&self, reason: &str) -> i32 {
        self.events(reason)
            .await
            .iter()
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum()
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        self.api::<Event>()
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// Plays a running three-instance Patroni cluster: `leader` leads, `sync` is its
    /// synchronous standby, the others stream.
    async fn patroni_cluster(&self, site: &str, pods: &[Pod], leader: &str, sync: &str) {
        for p in pods {
            let name = p.name_any();
            if name == leader {
                self.member(&name, "primary", "running", 5000).await;
            } else {
                self.member(&name, "replica", "streaming", 5000).await;
            }
        }
        self.patroni_object(
            site,
            &format!("{site}-postgresql"),
            json!({"leader": leader, "optime": "5000", "ttl": "20"}),
        )
        .await;
        self.patroni_object(
            site,
            &format!("{site}-postgresql-sync"),
            json!({"leader": leader, "sync_standby": sync}),
        )
        .await;
    }
}

impl Fixture {
    /// Creates site `db` of `body` with three instances, plays Patroni's cluster (`-0` leads,
    /// `-1` is the synchronous standby) and waits for the primary in the status; its pods.
    async fn replicated_site(&self, body: Value) -> Vec<Pod> {
        self.sites
            .create(&PostParams::default(), &site("db", body))
            .await
            .expect("create site");
        let pods = self.database_pods("db", 3).await;
        self.patroni_cluster("db", &pods, "db-postgresql-0", "db-postgresql-1")
            .await;
        self.wait_status("db", "primary reported", |s| {
            (s.status.as_ref()?.database.as_ref()?.primary.as_deref() == Some("db-postgresql-0"))
                .then_some(())
        })
        .await;
        pods
    }
}

fn match_labels(
    selector: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> BTreeMap<String, String> {
    selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_land_one_per_zone_with_the_designed_objects() {
    let f = fixture("pg-objects").await;
    let started = Instant::now();
    f.sites
        .create(&PostParams::default(), &site("db", spec(None)))
        .await
        .expect("create site");
    let pods = f.database_pods("db", 3).await;
    println!(
        "kwok: 3 database pods ready {:.1}s after the site was created",
        started.elapsed().as_secs_f64()
    );
    let sts: StatefulSet = f.get("db-postgresql").await;
    assert_eq!(
        sts.spec.as_ref().unwrap().replicas,
        Some(3),
        "a new site gets 3"
    );
    let nodes: Api<Node> = Api::all(f.client.clone());
    let mut zones = BTreeMap::new();
    for p in &pods {
        let node = nodes.get(node_of(p)).await.expect("node");
        *zones
            .entry(node.labels()["topology.kubernetes.io/zone"].clone())
            .or_insert(0) += 1;
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(true));
        assert_eq!(spec.service_account_name.as_deref(), Some("db-postgresql"));
        assert_eq!(p.labels()["cluster-name"], "db-postgresql");
    }
    assert_eq!(
        zones.values().copied().collect::<Vec<_>>(),
        [1, 1, 1],
        "{zones:?}"
    );

    // Services: the client one has no selector (Patroni writes its Endpoints), the replicas'
    // selects role=replica, the config one is headless without selector.
    let client: Service = f.get("db-postgresql").await;
    assert!(client.spec.as_ref().unwrap().selector.is_none());
    let replicas: Service = f.get("db-postgresql-replicas").await;
    assert_eq!(
        replicas.spec.as_ref().unwrap().selector.as_ref().unwrap()["role"],
        "replica"
    );
    let config: Service = f.get("db-postgresql-config").await;
    let cs = config.spec.as_ref().unwrap();
    assert_eq!(
        (cs.cluster_ip.as_deref(), cs.selector.is_none()),
        (Some("None"), true)
    );
    let hl: Service = f.get("db-postgresql-hl").await;
    assert!(hl.spec.as_ref().unwrap().selector.is_some());
    // The operator never writes the leader's Endpoints, and no controller makes them.
    assert!(
        f.endpoints
            .get_opt("db-postgresql")
            .await
            .unwrap()
            .is_none(),
        "Endpoints db-postgresql are Patroni's"
    );

    // Budgets that never overlap: replicas one at a time, the primary never directly.
    let all: PodDisruptionBudget = f.get("db-postgresql").await;
    let spec = all.spec.as_ref().unwrap();
    assert_eq!(
        spec.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)),
        "one of the two replicas at a time"
    );
    assert_eq!(
        spec.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    let expr = &spec
        .selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        (expr.key.as_str(), expr.operator.as_str()),
        ("role", "NotIn")
    );
    let primary: PodDisruptionBudget = f.get("db-postgresql-primary").await;
    let ps = primary.spec.as_ref().unwrap();
    assert_eq!(
        ps.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    assert_eq!(match_labels(&ps.selector)["role"], "primary");

    // Patroni's RBAC: endpoints and pods, nothing else.
    let role: Role = f.get("db-postgresql").await;
    let rules: Vec<String> = role
        .rules
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r.resources.clone().unwrap().join(","),
                r.verbs.join(" ")
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            "endpoints: get list watch create patch update",
            "pods: get list watch patch update"
        ]
    );
    let cm: ConfigMap = f.get("db-postgresql-patroni").await;
    let yml = &cm.data.unwrap()["patroni.yml"];
    assert!(
        yml.contains("synchronous_mode: quorum") && yml.contains("failsafe_mode: true"),
        "{yml}"
    );

    let np: NetworkPolicy = f.get("db-postgresql").await;
    let ports: Vec<String> = np
        .spec
        .unwrap()
        .ingress
        .unwrap()
        .iter()
        .map(|r| format!("{:?}", r.ports.as_ref().unwrap()[0].port))
        .collect();
    assert_eq!(
        ports.len(),
        2,
        "5432 from app and database, 8008 from database: {ports:?}"
    );

    let app: Deployment = f.get("db").await;
    let env = &app.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let read = env
        .iter()
        .find(|e| e.name == "ARTICLES_DATABASE_READ_HOST")
        .expect("read host");
    assert!(
        read.value
            .as_deref()
            .unwrap()
            .starts_with("db-postgresql-replicas.")
    );
    let st = f.sites.get("db").await.unwrap();
    assert_eq!(
        condition(&st, "DatabaseHighlyAvailable").map(|c| c.1),
        Some("NoLeader".into()),
        "no Patroni yet: no leader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_events_follow_patroni_through_lag_failover_and_switchover() {
    // A cordoned primary node (another test's) would add a switchover of its own.
    let _nodes = NODES.lock().await;
    let f = fixture("pg-status").await;
    f.sites
        .create(&PostParams::default(), &site("db", spec(Some(3))))
        .await
        .expect("create site");
    let pods = f.database_pods("db", 3).await;
    let [p0, p1, p2] = ["db-postgresql-0", "db-postgresql-1", "db-postgresql-2"];
    f.patroni_cluster("db", &pods, p0, p1).await;
    let started = Instant::now();
    f.wait_status("db", "primary reported and highly available", |s| {
        let db = s.status.as_ref()?.database.as_ref()?;
        let ha = condition(s, "DatabaseHighlyAvailable")?;
        (db.primary.as_deref() == Some(p0)
            && db.synchronous_standby.as_deref() == Some(p1)
            && db.instances.len() == 3
            && ha.0 == "True"
            && condition(s, "Ready")?.0 == "True")
            .then_some(())
    })
    .await;
    println!(
        "kwok: Patroni's state reported {:.1}s after it was written",
        started.elapsed().as_secs_f64()
    );
    let db = f.database_status("db").await;
    assert_eq!(db.timeline, Some(1));
    assert!(
        db.instances
            .iter()
            .all(|i| i.node.is_some() && i.lag_bytes == Some(0))
    );

    // A replica 100 MiB behind.
    f.member(p2, "replica", "streaming", 5000 - (100 << 20))
        .await;
    f.patroni_object(
        "db",
        "db-postgresql",
        json!({"leader": p0, "optime": (200i64 << 20).to_string()}),
    )
    .await;
    f.member(p0, "primary", "running", 200 << 20).await;
    f.member(p1, "replica", "streaming", 200 << 20).await;
    f.member(p2, "replica", "streaming", 100 << 20).await;
    f.wait_status("db", "ReplicaLagging", |s| {
        let ha = condition(s, "DatabaseHighlyAvailable")?;
        (ha.1 == "ReplicaLagging" && ha.2.contains(p2)).then_some(())
    })
    .await;
    let lag = f
        .database_status("db")
        .await
        .instances
        .iter()
        .find(|i| i.name == p2)
        .and_then(|i| i.lag_bytes);
    assert_eq!(lag, Some(100 << 20));
    f.member(p2, "replica", "streaming", 200 << 20).await;

    // A failover: the leader moves without a request.
    let started = Instant::now();
    f.member(p0, "replica", "stopped", 200 << 20).await;
    f.member(p1, "primary", "running", 200 << 20).await;
    f.patroni_object(
        "db",
        "db-postgresql",
        json!({"leader": p1, "optime": (200i64 << 20).to_string()}),
    )
    .await;
    f.patroni_object(
        "db",
        "db-postgresql-sync",
        json!({"leader": p1, "sync_standby": p2}),
    )
    .await;
    let change = f
        .wait_status("db", "a failover recorded", |s| {
            let db = s.status.as_ref()?.database.as_ref()?;
            (db.failovers == 1 && db.primary.as_deref() == Some(p1))
                .then(|| db.last_leader_change.clone())
                .flatten()
        })
        .await;
    println!(
        "kwok: failover reported {:.1}s after Patroni's leader changed",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (
            change.from.as_str(),
            change.to.as_str(),
            change.kind.as_str()
        ),
        (p0, p1, "Failover")
    );
    wait_for("a DatabaseFailover Warning", TIMEOUT, || async {
        let e = f.events("DatabaseFailover").await;
        e.iter()
            .any(|e| e.type_.as_deref() == Some("Warning"))
            .then_some(())
            .ok_or("none".to_string())
    })
    .await;
    f.member(p0, "replica", "streaming", 200 << 20).await;

    // A requested switchover: the operator writes Patroni's failover object and clears the
    // annotation; Patroni (the test) carries it out.
    f.sites
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"articlesite.io/switchover": p2}}})),
        )
        .await
        .expect("ask for a switchover");
    let failover = wait_for("the failover object", TIMEOUT, || async {
        let e = f
            .endpoints
            .get_opt("db-postgresql-failover")
            .await
            .map_err(|e| e.to_string())?;
        e.filter(|e| e.annotations().contains_key("leader"))
            .ok_or("not yet".to_string())
    })
    .await;
    assert_eq!(failover.annotations()["leader"], p1);
    assert_eq!(failover.annotations()["member"], p2);
    assert_eq!(
        failover.labels()["cluster-name"],
        "db-postgresql",
        "Patroni lists it by its labels"
    );
    wait_for("the annotation cleared", TIMEOUT, || async {
        let s = f.sites.get("db").await.map_err(|e| e.to_string())?;
        (!s.annotations().contains_key("articlesite.io/switchover"))
            .then_some(())
            .ok_or("still set".to_string())
    })
    .await;
    let pending = f
        .database_status("db")
        .await
        .pending_switchover
        .expect("pending recorded");
    assert_eq!(
        (
            pending.from.as_str(),
            pending.to.as_deref(),
            pending.reason.as_str()
        ),
        (p1, Some(p2), "Requested")
    );
    f.member(p1, "replica", "streaming", 200 << 20).await;
    f.member(p2, "primary", "running", 200 << 20).await;
    f.patroni_object("db", "db-postgresql", json!({"leader": p2}))
        .await;
    f.patroni_object(
        "db",
        "db-postgresql-failover",
        json!({"leader": null, "member": null}),
    )
    .await;
    let change = f
        .wait_status("db", "a switchover recorded", |s| {
            let db = s.status.as_ref()?.database.as_ref()?;
            (db.switchovers == 1 && db.pending_switchover.is_none())
                .then(|| db.last_leader_change.clone())
                .flatten()
        })
        .await;
    assert_eq!(
        (
            change.from.as_str(),
            change.to.as_str(),
            change.kind.as_str()
        ),
        (p1, p2, "Switchover")
    );
    assert_eq!(
        f.database_status("db").await.failovers,
        1,
        "not counted as a failover"
    );
    wait_for("a DatabaseSwitchover Event", TIMEOUT, || async {
        (!f.events("DatabaseSwitchover").await.is_empty())
            .then_some(())
            .ok_or("none".to_string())
    })
    .await;

    // An unknown target is refused with a Warning, and the annotation is cleared.
    f.sites
        .patch("db", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"articlesite.io/switchover": "db-postgresql-9"}}})))
        .await
        .expect("ask for a bad switchover");
    wait_for("a SwitchoverRefused Warning", TIMEOUT, || async {
        let e = f.events("SwitchoverRefused").await;
        e.iter()
            .any(|e| {
                e.note
                    .as_deref()
                    .unwrap_or_default()
                    .contains("db-postgresql-9")
            })
            .then_some(())
            .ok_or("none".to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_primary_node_triggers_exactly_one_switchover_request() {
    let _nodes = NODES.lock().await;
    let f = fixture("pg-drain").await;
    let pods = f.replicated_site(spec(Some(3))).await;
    let [p0, p1] = ["db-postgresql-0", "db-postgresql-1"];
    let node = node_of(&pods[0]).to_string();
    let nodes: Api<Node> = Api::all(f.client.clone());
    let _uncordon = Uncordon(nodes.clone(), node.clone());
    let started = Instant::now();
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .expect("cordon");
    let failover = wait_for("the switchover request", TIMEOUT, || async {
        let e = f
            .endpoints
            .get_opt("db-postgresql-failover")
            .await
            .map_err(|e| e.to_string())?;
        e.filter(|e| e.annotations().contains_key("leader"))
            .ok_or("not yet".to_string())
    })
    .await;
    println!(
        "kwok: switchover asked for {:.1}s after the primary's node was cordoned",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (
            failover.annotations()["leader"].as_str(),
            failover.annotations()["member"].as_str()
        ),
        (p0, p1)
    );
    // While it is pending, more reconciles (resync 2 s) ask for nothing more.
    let version = failover.resource_version();
    // The status is written after the failover object, in the same reconcile.
    let reason = f
        .wait_status("db", "the pending switchover recorded", |s| {
            s.status
                .as_ref()?
                .database
                .as_ref()?
                .pending_switchover
                .clone()
        })
        .await
        .reason;
    assert_eq!(reason, "NodeDrain");
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let now = f.endpoints.get("db-postgresql-failover").await.unwrap();
        assert_eq!(
            now.resource_version(),
            version,
            "the failover object was written again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(f.event_count("SwitchoverRequested").await, 1);
    match f.pods.evict(p0, &Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 429, "the primary is never evicted: {s:?}"),
        other => panic!("the primary was evicted before the switchover: {other:?}"),
    }
    // Patroni switches over; the old primary, now a replica on the cordoned node, causes none.
    f.member(p0, "replica", "streaming", 5000).await;
    f.member(p1, "primary", "running", 5000).await;
    f.patroni_object("db", "db-postgresql", json!({"leader": p1}))
        .await;
    f.patroni_object(
        "db",
        "db-postgresql-failover",
        json!({"leader": null, "member": null}),
    )
    .await;
    f.wait_status("db", "the switchover recorded", |s| {
        (s.status.as_ref()?.database.as_ref()?.switchovers == 1).then_some(())
    })
    .await;
    // While it is the primary, the Eviction API refuses it (429, which a drain retries).
    // After the switchover the budgets let it go, once the disruption controller has counted
    // the relabelled pod (a drain retries the same way).
    wait_for("the old primary evicted", TIMEOUT, || async {
        match f.pods.evict(p0, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 429 => Err(s.message),
            Err(e) => panic!("eviction failed with something else than a budget: {e}"),
        }
    })
    .await;
    assert_eq!(
        f.event_count("SwitchoverRequested").await,
        1,
        "exactly one request"
    );
}

/// Uncordons the node even when the test fails.
struct Uncordon(Api<Node>, String);
impl Drop for Uncordon {
    fn drop(&mut self) {
        let (nodes, name) = (self.0.clone(), self.1.clone());
        common::block_on_own_runtime(move || async move {
            let _ = nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"unschedulable": false}})),
                )
                .await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_single_instance_site_keeps_its_names_and_its_service_loses_the_selector() {
    let client = common::client().await;
    common::crd::install_crd(&client).await;
    let ns = TestNamespace::create(&client, "pg-upgrade").await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    // The site as the operator before Patroni left it: one instance, a client Service with a
    // selector (so the endpointslice controller made its slice), the same field manager.
    let created = sites
        .create(&PostParams::default(), &site("old", spec(None)))
        .await
        .expect("create site");
    let mut old_service = articlesite_operator::resources::service::database_client(&created);
    old_service.spec.as_mut().unwrap().selector =
        Some(articlesite_operator::resources::selector_labels(
            &created,
            articlesite_operator::resources::Component::Database,
        ));
    let old_sts = articlesite_operator::resources::statefulset::build(&created, "1Gi", 1);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let ssa = PatchParams::apply(articlesite_operator::MANAGER).force();
    services
        .patch("old-postgresql", &ssa, &Patch::Apply(&old_service))
        .await
        .expect("old Service");
    statefulsets
        .patch("old-postgresql", &ssa, &Patch::Apply(&old_sts))
        .await
        .expect("old StatefulSet");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    let controller_slices = || async {
        slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=old-postgresql,endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"))
            .await
            .map_err(|e| e.to_string())
            .map(|l| l.items.len())
    };
    wait_for("the endpointslice controller's slice", TIMEOUT, || async {
        (controller_slices().await? > 0)
            .then_some(())
            .ok_or("none yet".to_string())
    })
    .await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let claim = wait_for("the old claim", TIMEOUT, || async {
        claims
            .get_opt("data-old-postgresql-0")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("none".to_string())
    })
    .await;
    let sts_uid = statefulsets.get("old-postgresql").await.unwrap().uid();

    // The new operator takes over.
    let op = OperatorProcess::in_namespace(&ns.name, &["--resync-seconds", "2"]);
    op.wait_ready().await;
    let started = Instant::now();
    wait_for(
        "the Service without selector and no stale slice",
        TIMEOUT,
        || async {
            let svc = services
                .get("old-postgresql")
                .await
                .map_err(|e| e.to_string())?;
            let selector = svc.spec.and_then(|s| s.selector);
            let stale = controller_slices().await?;
            (selector.is_none() && stale == 0)
                .then_some(())
                .ok_or(format!("selector {selector:?}, {stale} stale slices"))
        },
    )
    .await;
    println!(
        "kwok: upgraded Service selector-less and its stale slice gone {:.1}s after the operator started",
        started.elapsed().as_secs_f64()
    );
    let sts = statefulsets.get("old-postgresql").await.unwrap();
    assert_eq!(sts.uid(), sts_uid, "the same StatefulSet, updated in place");
    assert_eq!(
        sts.spec.as_ref().unwrap().replicas,
        Some(1),
        "still one instance"
    );
    let template = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(
        template.containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "PATRONI_SCOPE"),
        "rolled to Patroni"
    );
    assert_eq!(
        claims.get("data-old-postgresql-0").await.unwrap().uid(),
        claim.uid(),
        "the same claim"
    );
    let site = sites.get("old").await.unwrap();
    assert_eq!(
        site.spec.database.instances, None,
        "no default written into the spec"
    );
    assert!(
        Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
            .get_opt("old-postgresql-primary")
            .await
            .unwrap()
            .is_none(),
        "one instance: no primary budget"
    );
    // The endpoints controller's leftover (no Patroni label) goes, or Patroni could never
    // create its leader object of that name.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the leftover Endpoints gone", TIMEOUT, || async {
        match endpoints
            .get_opt("old-postgresql")
            .await
            .map_err(|e| e.to_string())?
        {
            Some(e) if !e.labels().contains_key("cluster-name") => Err("still there".into()),
            _ => Ok(()),
        }
    })
    .await;
    // Raising instances adds replicas to the same StatefulSet, but only once Patroni on pod 0
    // has taken the data directory over (`initialize` recorded): until then it stays at one.
    sites
        .patch(
            "old",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(json!({"spec": {"database": {"instances": 2}}})),
        )
        .await
        .expect("raise instances");
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(3) {
        let sts = statefulsets.get("old-postgresql").await.unwrap();
        assert_eq!(
            sts.spec.and_then(|s| s.replicas),
            Some(1),
            "no second instance before Patroni recorded the cluster"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Patroni, having taken pod 0's data over, records the cluster's system id.
    let config = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "old-postgresql-config",
            "annotations": {"initialize": "7300000000000000001", "config": "{}"},
            "labels": {"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": "old",
                "app.kubernetes.io/component": "database", "cluster-name": "old-postgresql"}}});
    endpoints
        .patch(
            "old-postgresql-config",
            &PatchParams::apply("patroni").force(),
            &Patch::Apply(&config),
        )
        .await
        .expect("write Patroni's config object");
    wait_for("two instances", TIMEOUT, || async {
        let sts = statefulsets
            .get("old-postgresql")
            .await
            .map_err(|e| e.to_string())?;
        (sts.spec.and_then(|s| s.replicas) == Some(2))
            .then_some(())
            .ok_or("not yet".to_string())
    })
    .await;
    drop(op);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_database_specs_are_refused_with_a_reason() {
    let client = common::client().await;
    common::crd::install_crd(&client).await;
    let ns = TestNamespace::create(&client, "pg-invalid").await;
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<ArticleSite>(&()),
    );
    for (db, expected) in [
        (
            json!({"instances": 0}),
            "should be greater than or equal to 1",
        ),
        (
            json!({"instances": 10}),
            "should be less than or equal to 9",
        ),
        (json!({"synchronousMode": "on"}), "Unsupported value"),
        (
            json!({"synchronousMode": "Strict", "instances": 1}),
            "with one instance every write would wait forever",
        ),
        (
            json!({"synchronousMode": "Strict"}),
            "needs spec.database.instances set to at least 2",
        ),
    ] {
        let obj: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "articlesite.io/v1alpha1", "kind": "ArticleSite",
            "metadata": {"name": "bad"},
            "spec": {"app": {"image": IMAGE}, "database": db}}))
        .unwrap();
        let err = raw
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("{db} refused"));
        assert!(err.to_string().contains(expected), "{db}: {err}");
    }
    // Lowering a Strict site to one instance is refused too.
    sites
        .create(
            &PostParams::default(),
            &site(
                "strict",
                json!({"app": {"image": IMAGE},
            "database": {"synchronousMode": "Strict", "instances": 3}}),
            ),
        )
        .await
        .expect("a valid Strict site");
    let err = sites
        .patch(
            "strict",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"database": {"instances": 1}}})),
        )
        .await
        .expect_err("lowering below 2 refused");
    assert!(err.to_string().contains("wait forever"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_change_restarts_the_replicas_before_the_primary() {
    // A node cordoned by another test would make this primary switch over for the drain.
    let _nodes = NODES.lock().await;
    let f = fixture("pg-restart").await;
    let pods = f.replicated_site(spec(Some(3))).await;
    let [p0, p1, p2] = ["db-postgresql-0", "db-postgresql-1", "db-postgresql-2"];
    let sts: StatefulSet = f.get("db-postgresql").await;
    let strategy = sts.spec.unwrap().update_strategy.unwrap().type_;
    assert_eq!(
        strategy.as_deref(),
        Some("OnDelete"),
        "the operator orders the restarts"
    );
    let mut uids: BTreeMap<String, String> = pods
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap()))
        .collect();

    // A new pod template.
    let started = Instant::now();
    f.sites
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"database": {"resources": {"requests": {"cpu": "20m"}}}}}),
            ),
        )
        .await
        .expect("change the template");
    let mut order: Vec<String> = Vec::new();
    let mut switched = false;
    let deadline = Instant::now() + TIMEOUT;
    while order.len() < 3 {
        assert!(Instant::now() < deadline, "restarts so far: {order:?}");
        for p in live_pods(&f.pods, "db", "database").await.unwrap() {
            let name = p.name_any();
            if uids.get(&name) != p.uid().as_ref() && is_ready(&p) {
                // Recreated and ready: Patroni (the test) brings it back as a streaming replica.
                uids.insert(name.clone(), p.uid().unwrap());
                order.push(name.clone());
                f.member(&name, "replica", "streaming", 5000).await;
            }
        }
        let failover = f.endpoints.get_opt("db-postgresql-failover").await.unwrap();
        if !switched && let Some(fo) = failover.filter(|e| e.annotations().contains_key("leader")) {
            assert_eq!(
                order,
                [p2, p1],
                "both replicas restarted before the switchover"
            );
            assert_eq!(fo.annotations()["leader"], p0);
            assert_eq!(fo.annotations()["member"], p1, "to the synchronous standby");
            let pending = f
                .wait_status("db", "the pending switchover recorded", |s| {
                    s.status
                        .as_ref()?
                        .database
                        .as_ref()?
                        .pending_switchover
                        .clone()
                })
                .await;
            assert_eq!(pending.reason, "Restart");
            // Patroni switches over.
            f.member(p1, "primary", "running", 5000).await;
            f.member(p0, "replica", "streaming", 5000).await;
            f.patroni_object("db", "db-postgresql", json!({"leader": p1}))
                .await;
            f.patroni_object(
                "db",
                "db-postgresql-sync",
                json!({"leader": p1, "sync_standby": p2}),
            )
            .await;
            f.patroni_object(
                "db",
                "db-postgresql-failover",
                json!({"leader": null, "member": null}),
            )
            .await;
            switched = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "kwok: three instances restarted in order {order:?} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(switched, "the primary was switched over before its restart");
    assert_eq!(order, [p2, p1, p0], "replicas first, the old primary last");
    wait_for(
        "three DatabaseInstanceRestarted Events",
        TIMEOUT,
        || async {
            let n = f.event_count("DatabaseInstanceRestarted").await;
            (n == 3).then_some(()).ok_or(format!("{n}"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_keeps_failing_is_rebuilt_on_a_new_volume() {
    // A drain switchover from another test's cordon would change who is primary here.
    let _nodes = NODES.lock().await;
    let f = fixture("pg-rebuild").await;
    let mut body = spec(Some(3));
    body["database"]["rebuildFailingStandbySeconds"] = json!(10);
    let pods = f.replicated_site(body).await;
    let [p0, p1, p2] = ["db-postgresql-0", "db-postgresql-1", "db-postgresql-2"];
    let claims: Api<PersistentVolumeClaim> = f.api();
    let claim_uid = |name: String| {
        let claims = claims.clone();
        async move {
            claims
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .filter(|c| c.metadata.deletion_timestamp.is_none())
                .and_then(|c| c.uid())
        }
    };
    let before: Vec<Option<String>> =
        futures::future::join_all([p0, p1, p2].map(|p| claim_uid(format!("data-{p}")))).await;
    assert!(before.iter().all(Option::is_some), "claims {before:?}");
    let old_pod = pods[2].uid();

    // p2 crash-loops (kwok's simulation stage), as a standby whose data is broken would.
    let started = Instant::now();
    f.crash_loop(p2).await;
    let rebuild = f
        .wait_status("db", "the rebuild recorded", |s| {
            s.status.as_ref()?.database.as_ref()?.last_rebuild.clone()
        })
        .await;
    let took = started.elapsed();
    assert_eq!(rebuild.instance, p2);
    assert!(rebuild.reason.contains("crash-looping"), "{rebuild:?}");
    // Not before the 10 s it may fail (less the second that the Ready condition's whole-second
    // lastTransitionTime can take off).
    assert!(
        took >= Duration::from_secs(9),
        "not before the 10 s it may fail: {took:?}"
    );
    // A new claim (an empty volume) and a new pod, which comes up (kwok: ready).
    let new_claim = wait_for("a new claim for p2", TIMEOUT, || async {
        match claim_uid(format!("data-{p2}")).await {
            Some(uid) if Some(&uid) != before[2].as_ref() => Ok(uid),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_for("a new, ready p2", TIMEOUT, || async {
        let p = f.pods.get_opt(p2).await.map_err(|e| e.to_string())?;
        match p {
            Some(p) if p.uid() != old_pod && is_ready(&p) => Ok(()),
            other => Err(format!("{:?}", other.map(|p| p.uid()))),
        }
    })
    .await;
    println!(
        "kwok: failing standby rebuilt {:.1}s after it began to crash-loop (threshold 10 s); new claim {new_claim}",
        took.as_secs_f64()
    );
    // The primary's and the other standby's volumes are untouched.
    for (i, p) in [p0, p1].iter().enumerate() {
        assert_eq!(
            claim_uid(format!("data-{p}")).await,
            before[i],
            "{p}'s claim"
        );
    }
    assert_eq!(f.event_count("DatabaseStandbyRebuilt").await, 1);
    // Failing again right away: no second rebuild within 30 minutes.
    let f2 = f.pods.get(p2).await.expect("p2").uid();
    f.member(p2, "replica", "start failed", 0).await;
    f.crash_loop(p2).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let p = f.pods.get(p2).await.expect("p2");
        assert_eq!(p.uid(), f2, "no second rebuild within the interval");
        tokio::time::sleep(Duration::from_millis(500)).await; // poll interval of a window that asserts nothing happens
    }
}

/// Removes a test's label from nodes at the end, also when the test panics.
struct Unlabel(Api<Node>, Vec<String>, String);
impl Drop for Unlabel {
    fn drop(&mut self) {
        let (nodes, names, key) = (self.0.clone(), self.1.clone(), self.2.clone());
        common::block_on_own_runtime(move || async move {
            for name in names {
                let _ = nodes
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"labels": {key.as_str(): null}}})),
                    )
                    .await;
            }
        });
    }
}

/// A replica that shares a node with the primary (here: the site's node selector matched two
/// nodes only when it was created) moves to a third node once that one is eligible and every
/// instance serves: exactly one eviction, never the primary, recorded in `status.database.lastMove`
/// and a `DatabaseInstanceMoved` Event (`src/plan/database.rs`, `respread`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_beside_the_primary_moves_to_a_free_node() {
    let f = fixture("pg-respread").await;
    let nodes: Api<Node> = Api::all(f.client.clone());
    // One untainted, schedulable simulated node in each of three zones.
    let mut by_zone: BTreeMap<String, String> = BTreeMap::new();
    for n in nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .expect("nodes")
        .items
    {
        let spec = n.spec.clone().unwrap_or_default();
        if spec.unschedulable.unwrap_or(false) || !spec.taints.unwrap_or_default().is_empty() {
            continue;
        }
        if let Some(zone) = n.labels().get("topology.kubernetes.io/zone") {
            by_zone.entry(zone.clone()).or_insert(n.name_any());
        }
    }
    let picked: Vec<String> = by_zone.into_values().take(3).collect();
    assert_eq!(
        picked.len(),
        3,
        "three zones of simulated nodes: {picked:?}"
    );
    let key = format!("articlesite.io/pool-{}", f.ns.name);
    let _unlabel = Unlabel(nodes.clone(), picked.clone(), key.clone());
    let label = |node: String| {
        let (nodes, key) = (nodes.clone(), key.clone());
        async move {
            nodes
                .patch(
                    &node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {key.as_str(): "db"}}})),
                )
                .await
                .expect("label node");
        }
    };
    label(picked[0].clone()).await;
    label(picked[1].clone()).await;

    // Required spreading: the scheduler must put a replacement in the emptiest zone.
    let mut body = spec(Some(3));
    body["highAvailability"] = json!({"spread": "Required"});
    body["placement"] = json!({"nodeSelector": {key.as_str(): "db"}});
    let pods = f.replicated_site(body).await;
    let p0 = "db-postgresql-0";
    let per_node = |pods: &[Pod]| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in pods {
            m.entry(node_of(p).to_string())
                .or_default()
                .push(p.name_any());
        }
        m
    };
    let before = per_node(&pods);
    assert_eq!(before.len(), 2, "three instances on two nodes: {before:?}");
    let crowded = before
        .iter()
        .find(|(_, on)| on.len() == 2)
        .map(|(n, _)| n.clone())
        .expect("a node with two instances");
    let primary_uid = pods
        .iter()
        .find(|p| p.name_any() == p0)
        .and_then(|p| p.uid());

    // The third node becomes eligible; every new pod is played as a streaming replica.
    label(picked[2].clone()).await;
    let started = Instant::now();
    let after = wait_for("one instance per node", TIMEOUT, || async {
        let pods = live_pods(&f.pods, "db", "database").await?;
        for p in &pods {
            if is_ready(p) && !p.annotations().contains_key("status") {
                f.member(&p.name_any(), "replica", "streaming", 5000).await;
            }
        }
        let counts = per_node(&pods);
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        if ready == 3 && counts.len() == 3 {
            Ok(counts)
        } else {
            Err(format!("{ready} ready, {counts:?}"))
        }
    })
    .await;
    let moved = f
        .wait_status("db", "the move recorded", |s| {
            s.status.as_ref()?.database.as_ref()?.last_move.clone()
        })
        .await;
    println!(
        "kwok: instances {before:?} -> {after:?} {:.1}s after a third node became eligible; moved {} off {}",
        started.elapsed().as_secs_f64(),
        moved.instance,
        moved.from
    );
    assert_ne!(moved.instance, p0, "never the primary");
    assert_eq!(moved.from, crowded);
    assert!(after.contains_key(&picked[2]), "{after:?}");
    let primary = f.pods.get(p0).await.expect("primary");
    assert_eq!(primary.uid(), primary_uid, "the primary was not touched");
    // Exactly one move, and none once the instances are spread.
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        assert_eq!(f.event_count("DatabaseInstanceMoved").await, 1, "one move");
        tokio::time::sleep(Duration::from_secs(1)).await; // poll interval of a window that asserts nothing happens
    }
}
