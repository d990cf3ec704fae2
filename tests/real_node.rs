//! End-to-end on the real node (`make e2e`, feature `e2e`): the operator's chart is installed
//! with Helm, its pods run from the locally built image on the real node and elect a leader,
//! and that leader runs an `ArticleSite` placed on the real node (`spec.placement`): the
//! article server and PostgreSQL in real containers, finding each other through the node's
//! cluster DNS, serving articles through the site's Service to this machine. Needs `make
//! cluster-up REAL_NODE=1` and `make images`; `hack/e2e.sh` does both and passes the network
//! settings in the environment.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use articlesite_operator::resources::{Names, WRITE_TOKEN_KEY};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use common::audit::{
    Block, Term, audit_events, audit_log, by_operator, check_one_writer, file_len, in_namespace,
    is_write, lease_terms,
};
use common::chart::{Release, adopt_crd, chart, helm};
use common::control_plane::DescribeOnPanic;
use common::e2e::{env_or, local_volumes, real_node_placement, real_node_site};
use common::http::{metric_in, request};

/// The longest any one request of this test may take.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);
use common::operator::lease_holder;
use common::pods::{is_live, is_ready, node_of};
use common::site::wait_site_ready;
use common::{TestNamespace, client, wait_for};

/// The network of the real node, as `hack/cluster/realnode.sh` set it up.
struct Net {
    bridge: String,
    pod_cidr: String,
    kwok_pod_cidr: String,
    service_cidr: String,
    /// `.cluster/real-node/`: the test's local volume goes below it, so cluster-down removes it.
    node_dir: String,
}

impl Net {
    fn from_env() -> Self {
        Self {
            bridge: env_or("REAL_NODE_BRIDGE", "asnode0"),
            pod_cidr: env_or("REAL_NODE_POD_CIDR", "10.88.0.0/24"),
            kwok_pod_cidr: env_or("POD_CIDR", "10.244.0.0/16"),
            service_cidr: env_or("SERVICE_CIDR", "10.96.0.0/16"),
            node_dir: std::env::var("REAL_NODE_DIR").unwrap_or_else(|_| {
                common::cluster_dir()
                    .join("real-node")
                    .to_string_lossy()
                    .into_owned()
            }),
        }
    }
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (Some((net, len)), Ok(ip)) = (cidr.split_once('/'), ip.parse::<Ipv4Addr>()) else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// `ip route get ADDR`: how this machine would send a packet to ADDR (stderr on failure).
fn route_get(addr: &str) -> String {
    let out = Command::new("ip")
        .args(["route", "get", addr])
        .output()
        .expect("run ip route get");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The pod and Service ranges stay on this machine: the real pods and the ClusterIP go to the
/// bridge, the simulated pod range to the blackhole, and nothing to the default route.
fn assert_routed_locally(net: &Net, pod_ips: &[String], cluster_ip: &str) {
    let default_dev = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["route", "show", "default"])
            .output()
            .expect("ip route show default")
            .stdout,
    )
    .split_whitespace()
    .skip_while(|w| *w != "dev")
    .nth(1)
    .map(str::to_string);
    for addr in pod_ips.iter().map(String::as_str).chain([cluster_ip]) {
        let route = route_get(addr);
        println!(
            "ip route get {addr}: {}",
            route.lines().next().unwrap_or("")
        );
        assert!(
            route.contains(&format!("dev {} ", net.bridge)),
            "{addr} must be routed to the bridge {}: {route}",
            net.bridge
        );
        assert!(
            !route.contains(" via "),
            "{addr} must not go via a gateway: {route}"
        );
        if let Some(dev) = &default_dev {
            assert!(
                !route.contains(&format!("dev {dev} ")),
                "{addr} would leave through the default route's {dev}: {route}"
            );
        }
    }
    let blackholes = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["route", "show", "type", "blackhole"])
            .output()
            .expect("ip route show type blackhole")
            .stdout,
    )
    .to_string();
    assert!(
        blackholes
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(net.kwok_pod_cidr.as_str())),
        "the simulated pod range {} must be blackholed: {blackholes}",
        net.kwok_pod_cidr
    );
    // An address of a simulated pod cannot be reached at all.
    let base = net.kwok_pod_cidr.split('/').next().unwrap_or_default();
    let route = route_get(base);
    assert!(
        !route.contains(" dev "),
        "simulated pod range {} must have no route: {route}",
        net.kwok_pod_cidr
    );
    assert!(
        in_cidr(cluster_ip, &net.service_cidr),
        "{cluster_ip} outside {}",
        net.service_cidr
    );
}
async fn pod_summary(pods: &Api<Pod>) -> String {
    match pods.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .map(|p| {
                let st = p.status.clone().unwrap_or_default();
                let waiting: Vec<String> = st
                    .container_statuses
                    .iter()
                    .flatten()
                    .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                    .map(|w| format!("{:?}: {:?}", w.reason, w.message))
                    .collect();
                format!(
                    "{} on {:?}: {:?} {:?} {waiting:?}",
                    p.name_any(),
                    p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    st.phase,
                    st.pod_ip
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => e.to_string(),
    }
}

const REAL_NODE: &str = "real-node";
const LEASE: &str = "articlesite-operator";

/// The sum of a metric's samples (all label sets) in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    metric_in(page, name, "")
}

/// `/metrics` of an operator pod, dialled at its real-node address.
async fn operator_metrics(ip: &str) -> Result<String, String> {
    let (status, _, body) = request(
        &format!("{ip}:8080"),
        "GET",
        "/metrics",
        None,
        None,
        REQUEST_LIMIT,
    )
    .await?;
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("/metrics of {ip}: {status}"))
    }
}

/// The operator's writes in the site's namespace since `offset`, checked against the terms of
/// its Lease in `lease_ns`: exactly one replica wrote at any time, whichever led.
fn one_writer(audit: &Path, offset: u64, lease_ns: &str, site_ns: &str) -> (Vec<Term>, Vec<Block>) {
    let events = audit_events(audit, offset, |e| {
        is_write(e) && by_operator(e) && (in_namespace(e, lease_ns) || in_namespace(e, site_ns))
    });
    let terms = lease_terms(&events, lease_ns, LEASE);
    let writes: Vec<Value> = events
        .into_iter()
        .filter(|e| in_namespace(e, site_ns))
        .collect();
    let blocks = check_one_writer(&writes, &terms).unwrap_or_else(|e| panic!("{e}"));
    (terms, blocks)
}

/// The replica that leads now, by the Lease and by its own metrics (exactly one pod says 1),
/// and the other: a stall may have moved the Lease since the install.
async fn current_leader(
    leases: &Api<Lease>,
    operator_ips: &BTreeMap<String, String>,
) -> (String, String) {
    wait_for(
        "exactly one operator pod leading, by the Lease and by its metrics",
        Duration::from_secs(30),
        || async {
            let holder = lease_holder(leases, LEASE).await.unwrap_or_default();
            let mut leading = Vec::new();
            for (pod, ip) in operator_ips {
                let page = operator_metrics(ip).await?;
                if metric(&page, "articlesite_operator_leader") == Some(1.0) {
                    leading.push(pod.clone());
                }
            }
            match leading.as_slice() {
                [one] if *one == holder => {
                    let other = operator_ips.keys().find(|p| **p != holder).cloned();
                    Ok((holder, other.unwrap_or_default()))
                }
                _ => Err(format!(
                    "Lease holder {holder:?}, pods whose metrics say they lead: {leading:?}"
                )),
            }
        },
    )
    .await
}

fn ip_of(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.pod_ip.clone())
}

/// One DNS question (class IN, type A) over UDP; returns the response code and the A records.
async fn dns_a(server: &str, name: &str) -> Result<(u8, Vec<Ipv4Addr>), String> {
    let id: u16 = 0x5e2e;
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| e.to_string())?;
    sock.send_to(&q, server).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer from {server} for {name}"))?
        .map_err(|e| e.to_string())?;
    let r = &buf[..n];
    if n < 12 || r[0..2] != id.to_be_bytes() {
        return Err(format!("bad DNS response {r:?}"));
    }
    let rcode = r[3] & 0x0f;
    let answers = u16::from_be_bytes([r[6], r[7]]);
    // Skip the question (its name, type and class), then read each answer's A record.
    let mut i = 12;
    while i < n && r[i] != 0 {
        i += usize::from(r[i]) + 1;
    }
    i += 5;
    let mut ips = Vec::new();
    for _ in 0..answers {
        // The answer's name: a compression pointer (2 bytes) or labels.
        if i < n && r[i] & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while i < n && r[i] != 0 {
                i += usize::from(r[i]) + 1;
            }
            i += 1;
        }
        if i + 10 > n {
            break;
        }
        let rtype = u16::from_be_bytes([r[i], r[i + 1]]);
        let len = usize::from(u16::from_be_bytes([r[i + 8], r[i + 9]]));
        i += 10;
        if rtype == 1 && len == 4 && i + 4 <= n {
            ips.push(Ipv4Addr::new(r[i], r[i + 1], r[i + 2], r[i + 3]));
        }
        i += len;
    }
    Ok((rcode, ips))
}

/// The first address of a range: 10.88.0.0/24 -> 10.88.0.1 (the bridge, where CoreDNS listens).
fn gateway(cidr: &str) -> String {
    let base: Ipv4Addr = cidr
        .split('/')
        .next()
        .and_then(|b| b.parse().ok())
        .expect("a CIDR");
    Ipv4Addr::from(u32::from(base) + 1).to_string()
}

#[tokio::test]
async fn the_operator_installed_with_helm_runs_a_site_on_the_real_node() {
    let started = Instant::now();
    let net = Net::from_env();
    let client = client().await;
    let op_ns = TestNamespace::create(&client, "e2e-operator").await;
    let ns = TestNamespace::create(&client, "e2e-site").await;
    // A failing step says what the control plane was doing and who led when.
    let _report = DescribeOnPanic::new(&op_ns.name, LEASE);
    let audit = audit_log();
    let offset = file_len(&audit);
    let pp = PostParams::default();

    // A local volume on the real node for PostgreSQL, bound through a StorageClass of this
    // test's own (no provisioner: the claim binds to this PersistentVolume).
    let class = format!("real-node-{}", ns.name);
    // Cluster-scoped (the namespaces do not take them); the volume goes once the namespace's
    // claim is gone.
    let _volumes = local_volumes(&client, &class, Path::new(&net.node_dir), &[REAL_NODE], 1).await;

    // helm install: the chart as users get it, with the image built here (never pulled), its
    // two replicas on the real node, leader election on (the chart's default).
    let image = env_or(
        "OPERATOR_IMAGE",
        "localhost/articlesite/articlesite-operator:dev",
    );
    let (repository, tag) = image.rsplit_once(':').expect("OPERATOR_IMAGE has a tag");
    let mut values = real_node_placement();
    values["image"] = json!({"repository": repository, "tag": tag, "pullPolicy": "Never"});
    values["replicaCount"] = json!(2);
    values["leaderElection"] = json!({"enabled": true});
    let values_file =
        std::env::temp_dir().join(format!("articlesite-e2e-values-{}.json", op_ns.name));
    std::fs::write(&values_file, values.to_string()).expect("write the values file");
    let release = Release {
        name: "articlesite-operator".into(),
        namespace: op_ns.name.clone(),
        uninstall_timeout: "120s",
    };
    adopt_crd(&client, &release.name, &op_ns.name).await;
    let chart = chart();
    let t = Instant::now();
    let out = helm(&[
        "install",
        &release.name,
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        &op_ns.name,
        "--values",
        values_file.to_str().expect("utf-8 path"),
        "--wait",
        "--timeout",
        "180s",
    ]);
    let _ = std::fs::remove_file(&values_file);
    let op_pods: Api<Pod> = Api::namespaced(client.clone(), &op_ns.name);
    assert!(
        out.status.success(),
        "helm install failed: {}\noperator pods: {}",
        String::from_utf8_lossy(&out.stderr),
        pod_summary(&op_pods).await
    );
    let installed = t.elapsed();

    // Both operator pods run and are Ready on the real node; one holds the Lease.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &op_ns.name);
    let selector = "app.kubernetes.io/name=articlesite-operator";
    let (operators, leader) = wait_for(
        "2 Ready operator pods on the real node, one of them holding the Lease",
        Duration::from_secs(120),
        || {
            let op_pods = op_pods.clone();
            let leases = leases.clone();
            async move {
                let pods: Vec<Pod> = op_pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .filter(|p| is_ready(p) && is_live(p))
                    .collect();
                let holder = lease_holder(&leases, LEASE).await;
                let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
                match holder {
                    Some(h) if pods.len() == 2 && names.contains(&h) => Ok((pods, h)),
                    h => Err(format!("ready: {names:?}, Lease holder: {h:?}")),
                }
            }
        },
    )
    .await;
    let leader_elected = t.elapsed();
    let mut operator_ips = BTreeMap::new();
    for p in &operators {
        assert_eq!(node_of(p), REAL_NODE, "{} placement", p.name_any());
        let ip = ip_of(p).expect("operator pod IP");
        assert!(in_cidr(&ip, &net.pod_cidr), "{ip} outside {}", net.pod_cidr);
        let c = &p.spec.as_ref().expect("spec").containers[0];
        assert_eq!(c.image.as_deref(), Some(image.as_str()));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
        operator_ips.insert(p.name_any(), ip);
    }
    // Each pod's own view, from its metrics: exactly one says 1, the Lease's holder (the
    // Lease may have moved since: whoever leads now).
    let (now_leading, _) = current_leader(&leases, &operator_ips).await;
    println!(
        "helm install: 2 operator pods Ready on {REAL_NODE} {:.1}s after the install started, {leader} took the Lease {:.1}s after, {now_leading} leads now",
        installed.as_secs_f64(),
        leader_elected.as_secs_f64()
    );

    // The site, placed on the real node through its spec. Nothing else is applied by hand:
    // the operator in its pod creates every object (credentials included).
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    // One database instance: these tests are about the app tier and the nodes; the
    // replicated database has its own (tests/replicated_database.rs).
    let mut spec = real_node_site(2, 1, &class);
    spec["title"] = json!("Real node news");
    let spec = serde_json::from_value(spec).expect("site spec");
    let t_ready = Instant::now();
    let site = sites
        .create(&pp, &ArticleSite::new("news", spec))
        .await
        .expect("create site");
    let name = site.name_any();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let ready_site = tokio::select! {
        s = wait_site_ready(&sites, &name, Duration::from_secs(300)) => s,
        // Every 30 s, say where the pods are, so that a slow start can be told from a stuck one.
        _ = async {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                println!("  waiting for Ready: {}", pod_summary(&pods).await);
            }
        } => unreachable!(),
    };
    let ready_after = t_ready.elapsed();
    println!(
        "site Ready {:.1}s after creation: {:?}",
        ready_after.as_secs_f64(),
        ready_site.status.as_ref().and_then(|s| s.url.clone())
    );

    // Reconciled by whichever replica led, one at a time (the audit log): it applied the
    // site's Deployment and counted the work; a replica that never held the Lease did nothing.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = deployments.get(&name).await.expect("the site's Deployment");
    assert!(
        d.managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("articlesite-operator")),
        "the Deployment is applied by the operator"
    );
    let (terms, _) = one_writer(&audit, offset, &op_ns.name, &ns.name);
    let mut children = 0.0;
    for (pod, ip) in &operator_ips {
        let page = operator_metrics(ip).await.expect("operator metrics");
        children += metric(&page, "articlesite_operator_children_total").unwrap_or(0.0);
        if !terms.iter().any(|t| t.identity == *pod) {
            assert_eq!(
                metric(&page, "articlesite_operator_reconciles_total").unwrap_or(0.0),
                0.0,
                "{pod} never held the Lease ({terms:?}) but reconciled"
            );
        }
    }
    assert!(children > 0.0, "the leader applied the site's children");

    // Every pod of the site runs on the real node, Ready, with an address of its bridge's subnet;
    // the app finds PostgreSQL by its Service name (no hostAliases: the node's cluster DNS).
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    assert_eq!(
        list.items.len(),
        3,
        "2 app pods + 1 database pod: {}",
        pod_summary(&pods).await
    );
    let mut pod_ips = Vec::new();
    for p in &list.items {
        assert_eq!(node_of(p), REAL_NODE, "{} placement", p.name_any());
        assert!(is_ready(p) && is_live(p), "{} Ready", p.name_any());
        let spec = p.spec.as_ref().expect("pod spec");
        assert!(spec.host_aliases.is_none(), "no hostAliases");
        let ip = ip_of(p).expect("pod IP");
        assert!(
            in_cidr(&ip, &net.pod_cidr),
            "pod {} has {ip}, outside the real node's {}",
            p.name_any(),
            net.pod_cidr
        );
        pod_ips.push(ip);
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let cluster_ip = |svc: Service| svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    let db_ip = cluster_ip(
        services
            .get(&Names::database(&name))
            .await
            .expect("database service"),
    );
    let dns = format!("{}:53", gateway(&net.pod_cidr));
    let db_host = format!("{}.{}.svc.cluster.local", Names::database(&name), ns.name);
    let (rcode, ips) = dns_a(&dns, &db_host).await.expect("DNS query");
    assert_eq!(
        (rcode, ips.iter().map(|i| i.to_string()).collect::<Vec<_>>()),
        (0, vec![db_ip.clone()]),
        "{db_host} must resolve to the database Service's ClusterIP"
    );
    let (rcode, _) = dns_a(&dns, &format!("nothing.{}.svc.cluster.local", ns.name))
        .await
        .expect("DNS query");
    assert_eq!(rcode, 3, "an unknown cluster name is NXDOMAIN");
    let (rcode, ips) = dns_a(&dns, "example.com").await.expect("DNS query");
    assert!(
        rcode == 5 && ips.is_empty(),
        "names outside cluster.local are REFUSED (nothing is forwarded): rcode {rcode}"
    );
    println!("cluster DNS at {dns}: {db_host} -> {db_ip}; unknown names NXDOMAIN, others REFUSED");

    // The Service is dialled only once its endpoints are all real pods.
    let app_ip = cluster_ip(services.get(&name).await.expect("app service"));
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "the app Service's endpoints: 2 ready real pods",
        Duration::from_secs(30),
        || {
            let slices = slices.clone();
            let name = name.clone();
            let pod_cidr = net.pod_cidr.clone();
            async move {
                let lp =
                    ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
                let list = slices.list(&lp).await.map_err(|e| e.to_string())?;
                let addrs: Vec<(String, bool)> = list
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter().flatten())
                    .flat_map(|e| {
                        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
                        e.addresses.iter().map(move |a| (a.clone(), ready))
                    })
                    .collect();
                if let Some((a, _)) = addrs.iter().find(|(a, _)| !in_cidr(a, &pod_cidr)) {
                    panic!("endpoint {a} is not a real pod ({pod_cidr}): never dial it");
                }
                if addrs.len() == 2 && addrs.iter().all(|(_, r)| *r) {
                    Ok(())
                } else {
                    Err(format!("{addrs:?}"))
                }
            }
        },
    )
    .await;
    let mut all_ips = pod_ips.clone();
    all_ips.extend(operator_ips.values().cloned());
    assert_routed_locally(&net, &all_ips, &app_ip);

    // The write token the operator generated.
    let token_secret = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .get(&Names::write_token(&name))
        .await
        .expect("the generated write token Secret");
    let token = token_secret
        .data
        .as_ref()
        .and_then(|d| d.get(WRITE_TOKEN_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .expect("a write token");
    assert!(token.len() >= 32, "a generated token of some length");
    // Through kube-proxy's ClusterIP: create, publish, read back as JSON and as HTML.
    let addr = format!("{app_ip}:80");
    let slug = "hello-real-node";
    let title = "Hello from a real node";
    let t = Instant::now();
    let (status, _, body) = wait_for(
        "the first write through the Service",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            let token = token.clone();
            async move {
                let article = json!({"slug": slug, "title": title, "summary": "e2e",
                    "body": "Served by **real containers**.", "tags": ["e2e"]});
                let r = request(
                    &addr,
                    "POST",
                    "/api/v1/articles",
                    Some(&token),
                    Some(&article),
                    REQUEST_LIMIT,
                )
                .await?;
                if r.0 >= 500 {
                    Err(format!("{} {}", r.0, r.2))
                } else {
                    Ok(r)
                }
            }
        },
    )
    .await;
    let create_latency = t.elapsed();
    assert_eq!(status, 201, "create: {body}");

    let t = Instant::now();
    let (status, _, body) = request(
        &addr,
        "POST",
        &format!("/api/v1/articles/{slug}/publish"),
        Some(&token),
        None,
        REQUEST_LIMIT,
    )
    .await
    .expect("publish");
    let publish_latency = t.elapsed();
    assert_eq!(status, 200, "publish: {body}");

    let t = Instant::now();
    let (status, headers, body) = request(
        &addr,
        "GET",
        &format!("/api/v1/articles/{slug}"),
        None,
        None,
        REQUEST_LIMIT,
    )
    .await
    .expect("get JSON");
    let json_latency = t.elapsed();
    assert_eq!(status, 200, "get: {body}");
    assert!(
        headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{headers:?}"
    );
    let article: Value = serde_json::from_str(&body).expect("article JSON");
    assert_eq!(article["slug"], slug);
    assert_eq!(article["title"], title);
    assert_eq!(article["status"], "published", "{article}");

    let t = Instant::now();
    let (status, headers, page) = request(
        &addr,
        "GET",
        &format!("/articles/{slug}"),
        None,
        None,
        REQUEST_LIMIT,
    )
    .await
    .expect("get HTML");
    let html_latency = t.elapsed();
    assert_eq!(status, 200, "page: {page}");
    assert!(
        headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{headers:?}"
    );
    assert!(page.contains(title), "the page shows the title: {page}");
    assert!(
        page.contains("<strong>real containers</strong>"),
        "the page renders the Markdown body: {page}"
    );
    let (status, _, index) = request(&addr, "GET", "/", None, None, REQUEST_LIMIT)
        .await
        .expect("index");
    assert_eq!(status, 200);
    assert!(index.contains(title), "the index lists the article");

    // Without the token, writes are refused: the Secret reached the pods through the env.
    let (status, _, _) = request(
        &addr,
        "POST",
        "/api/v1/articles",
        None,
        Some(&json!({"slug": "x", "title": "x", "body": "x"})),
        REQUEST_LIMIT,
    )
    .await
    .expect("unauthenticated write");
    assert_eq!(status, 401);

    // Under a steady, bounded load of reads and writes: a rollout restart of the app, then
    // the deletion of one app pod. Every request counts.
    let load = Load::start(addr.clone(), token.clone(), slug.to_string());
    let deployments_w = deployments.clone();
    let window = load.mark();
    let restarted_at = jiff::Timestamp::now().to_string();
    deployments
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": restarted_at}}}}})),
        )
        .await
        .expect("rollout restart");
    let old_pods: Vec<String> = list
        .items
        .iter()
        .map(|p| p.name_any())
        .filter(|n| n.starts_with(&format!("{name}-")) && !n.contains("postgresql"))
        .collect();
    wait_for(
        "the rollout restart to complete (2 new pods available, old pods gone)",
        Duration::from_secs(240),
        || {
            let deployments = deployments_w.clone();
            let pods = pods.clone();
            let name = name.clone();
            let old_pods = old_pods.clone();
            async move {
                let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
                let gen_ok =
                    d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation;
                let st = d.status.unwrap_or_default();
                let mut left = Vec::new();
                for p in &old_pods {
                    if pods.get_opt(p).await.map_err(|e| e.to_string())?.is_some() {
                        left.push(p.clone());
                    }
                }
                if gen_ok
                    && st.updated_replicas == Some(2)
                    && st.available_replicas == Some(2)
                    && st.replicas == Some(2)
                    && left.is_empty()
                {
                    Ok(())
                } else {
                    Err(format!("{st:?}; old pods left: {left:?}"))
                }
            }
        },
    )
    .await;
    let restart = load.report("rollout restart of the app", window);
    // The operator let the restart be: one new ReplicaSet, no rollout of its own on top.
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={name},app.kubernetes.io/component=app"
        )))
        .await
        .expect("list ReplicaSets");
    assert_eq!(
        replica_sets.items.len(),
        2,
        "the first ReplicaSet and the restart's: {:?}",
        replica_sets
            .items
            .iter()
            .map(|r| r.name_any())
            .collect::<Vec<_>>()
    );

    let window = load.mark();
    let victim = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=app"))
        .await
        .expect("app pods")
        .items
        .first()
        .map(|p| p.name_any())
        .expect("an app pod");
    pods.delete(&victim, &Default::default())
        .await
        .expect("delete an app pod");
    wait_for(
        "the deleted app pod to be gone and 2 pods available again",
        Duration::from_secs(120),
        || {
            let deployments = deployments.clone();
            let pods = pods.clone();
            let name = name.clone();
            let victim = victim.clone();
            async move {
                let gone = pods
                    .get_opt(&victim)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_none();
                let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
                let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
                if gone && available == 2 {
                    Ok(())
                } else {
                    Err(format!("gone: {gone}, available: {available}"))
                }
            }
        },
    )
    .await;
    let deletion = load.report("deletion of one app pod", window);
    let total = load.stop().await;
    assert_eq!(
        restart.failed, 0,
        "no request may fail during a rollout restart: {restart:?}"
    );
    assert_eq!(
        deletion.failed, 0,
        "no request may fail when an app pod is deleted: {deletion:?}"
    );
    assert!(
        restart.requests > 0 && deletion.requests > 0 && total > 0,
        "the load ran during both events"
    );

    // More articles, then the database pod goes: it must come back with all of them.
    let mut slugs = vec![slug.to_string()];
    for i in 1..=5 {
        let s = format!("before-restart-{i}");
        let (status, _, body) = request(
            &addr,
            "POST",
            "/api/v1/articles",
            Some(&token),
            Some(&json!({"slug": s, "title": format!("Article {i}"), "body": "kept"})),
            REQUEST_LIMIT,
        )
        .await
        .expect("write before the database restart");
        assert_eq!(status, 201, "{body}");
        slugs.push(s);
    }
    let db_pod = format!("{}-0", Names::database(&name));
    let old_uid = pods.get(&db_pod).await.expect("database pod").uid();
    pods.delete(&db_pod, &Default::default())
        .await
        .expect("delete the database pod");
    let deleted_at = Instant::now();
    let (mut failures, mut first_failure, mut recovered) = (0u32, None, None);
    let mut n = 0;
    while deleted_at.elapsed() < Duration::from_secs(180) {
        n += 1;
        let t = Instant::now();
        let article = json!({"slug": format!("during-restart-{n}"), "title": "probe", "body": "x"});
        match request(
            &addr,
            "POST",
            "/api/v1/articles",
            Some(&token),
            Some(&article),
            REQUEST_LIMIT,
        )
        .await
        {
            Ok((201, _, _)) => {
                slugs.push(format!("during-restart-{n}"));
                if first_failure.is_some() {
                    recovered = Some(t);
                    break;
                }
            }
            _ => {
                failures += 1;
                first_failure.get_or_insert(t);
            }
        }
        // Bounded load: at most five writes a second.
        tokio::time::sleep(Duration::from_millis(200).saturating_sub(t.elapsed())).await;
    }
    let first_failure = first_failure.expect("writes must fail while the only database is gone");
    let recovered = recovered
        .unwrap_or_else(|| panic!("writes did not come back within 180 s of deleting {db_pod}"));
    let new_uid = pods.get(&db_pod).await.expect("new database pod").uid();
    assert_ne!(old_uid, new_uid, "{db_pod} was recreated");
    for s in &slugs {
        let (status, _, body) = request(
            &addr,
            "GET",
            &format!("/api/v1/articles/{s}"),
            Some(&token),
            None,
            REQUEST_LIMIT,
        )
        .await
        .expect("read after the database restart");
        assert_eq!(
            status, 200,
            "{s} must survive the database pod's deletion: {body}"
        );
    }
    println!(
        "database pod deleted: writes unavailable for {:.1}s ({failures} failed writes, first failure {:.1}s after the deletion); all {} articles still there",
        (recovered - first_failure).as_secs_f64(),
        (first_failure - deleted_at).as_secs_f64(),
        slugs.len()
    );

    // The leader's pod goes (as `kubectl delete pod` does: SIGTERM, the operator hands the
    // Lease back); another replica takes over and reconciles: the site's deleted budgets
    // return. Usually the standby wins; the Deployment's replacement pod may start in time
    // and win the race instead, which is as good.
    let (leader, standby) = current_leader(&leases, &operator_ips).await;
    let t = Instant::now();
    op_pods
        .delete(&leader, &Default::default())
        .await
        .expect("delete the leader pod");
    let new_leader = wait_for(
        &format!("another replica ({standby} or a replacement) to take the Lease from {leader}"),
        Duration::from_secs(90),
        || {
            let leases = leases.clone();
            let leader = leader.clone();
            async move {
                match lease_holder(&leases, LEASE).await {
                    // A released Lease has an empty holder.
                    Some(h) if h != leader && !h.is_empty() => Ok(h),
                    h => Err(format!("holder {h:?}")),
                }
            }
        },
    )
    .await;
    let takeover = t.elapsed();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    let before: Vec<String> = pdbs
        .list(&ListParams::default())
        .await
        .expect("list budgets")
        .items
        .iter()
        .map(|p| p.uid().unwrap_or_default())
        .collect();
    assert_eq!(before.len(), 2, "the site's app and database budgets");
    let t_heal = Instant::now();
    pdbs.delete_collection(&Default::default(), &ListParams::default())
        .await
        .expect("delete the site's budgets");
    wait_for(
        "the new leader to recreate the site's budgets",
        Duration::from_secs(90),
        || {
            let pdbs = pdbs.clone();
            let before = before.clone();
            async move {
                let now: Vec<String> = pdbs
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .iter()
                    .map(|p| p.uid().unwrap_or_default())
                    .collect();
                if now.len() == 2 && now.iter().all(|u| !before.contains(u)) {
                    Ok(())
                } else {
                    Err(format!("{} budgets", now.len()))
                }
            }
        },
    )
    .await;
    let healed = t_heal.elapsed();
    let new_leader_ip = op_pods
        .get(&new_leader)
        .await
        .expect("the new leader's pod")
        .status
        .and_then(|s| s.pod_ip)
        .expect("the new leader's pod IP");
    let page = operator_metrics(&new_leader_ip)
        .await
        .expect("new leader metrics");
    assert_eq!(metric(&page, "articlesite_operator_leader"), Some(1.0));
    let which = if new_leader == standby {
        "the standby"
    } else {
        "the replacement pod"
    };
    println!(
        "leader pod {leader} deleted: {which} {new_leader} held the Lease {:.1}s later and recreated the deleted budgets in {:.1}s",
        takeover.as_secs_f64(),
        healed.as_secs_f64()
    );

    // Over the whole test, exactly one replica wrote at any time, whoever it was.
    let (terms, blocks) = one_writer(&audit, offset, &op_ns.name, &ns.name);
    println!(
        "audit log: {} Lease terms ({:?}), the site's writes in {} blocks, none overlapping",
        terms.len(),
        terms
            .iter()
            .map(|t| t.identity.as_str())
            .collect::<Vec<_>>(),
        blocks.len()
    );

    // helm uninstall: the operator goes, the CRD and the site stay (crd.keep).
    let out = release.uninstall();
    assert!(
        out.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the operator pods to be gone",
        Duration::from_secs(90),
        || {
            let op_pods = op_pods.clone();
            async move {
                let n = op_pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
                if n == 0 {
                    Ok(())
                } else {
                    Err(format!("{n} left"))
                }
            }
        },
    )
    .await;
    assert!(
        sites.get_opt(&name).await.expect("get site").is_some(),
        "the site survives helm uninstall"
    );

    println!(
        "real node e2e: helm install {:.1}s, site Ready {:.1}s after creation; create {:?}, publish {:?}, get JSON {:?}, get HTML {:?}; total {:.1}s",
        installed.as_secs_f64(),
        ready_after.as_secs_f64(),
        create_latency,
        publish_latency,
        json_latency,
        html_latency,
        started.elapsed().as_secs_f64()
    );
}

/// One request of the background load.
struct Sample {
    at: Instant,
    ok: bool,
    latency: Duration,
    error: String,
}

#[derive(Debug)]
struct Window {
    requests: usize,
    failed: usize,
}

/// A steady, bounded load through the Service: ten requests a second, alternating a read of
/// a published article and a write of a new draft, each on a fresh connection (so every
/// request goes through kube-proxy's choice of endpoint).
struct Load {
    samples: std::sync::Arc<std::sync::Mutex<Vec<Sample>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(addr: String, token: String, published: String) -> Self {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded in time as well: ten minutes at most, whatever the test does.
            let until = Instant::now() + Duration::from_secs(600);
            while !st.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                n += 1;
                let t = Instant::now();
                let result = if n.is_multiple_of(2) {
                    let body = json!({"slug": format!("load-{n}"), "title": "load", "body": "x"});
                    request(
                        &addr,
                        "POST",
                        "/api/v1/articles",
                        Some(&token),
                        Some(&body),
                        REQUEST_LIMIT,
                    )
                    .await
                    .and_then(|r| {
                        if r.0 == 201 {
                            Ok(())
                        } else {
                            Err(format!("{} {}", r.0, r.2))
                        }
                    })
                } else {
                    request(
                        &addr,
                        "GET",
                        &format!("/api/v1/articles/{published}"),
                        None,
                        None,
                        REQUEST_LIMIT,
                    )
                    .await
                    .and_then(|r| {
                        if r.0 == 200 {
                            Ok(())
                        } else {
                            Err(format!("{} {}", r.0, r.2))
                        }
                    })
                };
                let sample = Sample {
                    at: t,
                    ok: result.is_ok(),
                    latency: t.elapsed(),
                    error: result.err().unwrap_or_default(),
                };
                if let Ok(mut v) = s.lock() {
                    v.push(sample);
                }
                tokio::time::sleep(Duration::from_millis(100).saturating_sub(t.elapsed())).await;
            }
        });
        Self {
            samples,
            stop,
            task,
        }
    }

    fn mark(&self) -> Instant {
        Instant::now()
    }

    /// Prints and returns the failures and latencies of the requests sent since `from`.
    fn report(&self, what: &str, from: Instant) -> Window {
        let samples = self.samples.lock().expect("samples");
        let window: Vec<&Sample> = samples.iter().filter(|s| s.at >= from).collect();
        let mut lat: Vec<Duration> = window.iter().map(|s| s.latency).collect();
        lat.sort();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let failed: Vec<&&Sample> = window.iter().filter(|s| !s.ok).collect();
        println!(
            "{what}: {} requests in {:.1}s, {} failed; latency p50 {:?}, p99 {:?}, max {:?}",
            window.len(),
            from.elapsed().as_secs_f64(),
            failed.len(),
            pct(0.5),
            pct(0.99),
            lat.last().copied().unwrap_or_default()
        );
        for f in failed.iter().take(5) {
            println!("  failed: {}", f.error);
        }
        Window {
            requests: window.len(),
            failed: failed.len(),
        }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.task.await;
        self.samples.lock().map(|v| v.len()).unwrap_or(0)
    }
}
