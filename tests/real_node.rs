//! End-to-end on the real node (`make e2e`, feature `e2e`): the article server and PostgreSQL
//! images run in real containers, with the pod specs the operator builds, and serve articles
//! through the site's Service from this machine. Needs `make cluster-up REAL_NODE=1` and
//! `make images`; `hack/e2e.sh` does both and passes the network settings in the environment.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use articlesite_operator::resources::{Names, deployment, secret, service, statefulset};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::core::v1::{HostAlias, PersistentVolume, Pod, PodSpec, Service, Toleration};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use common::{TestNamespace, client, wait_for};

const MANAGER: &str = "articlesite-e2e";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

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

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ArticleSite::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    wait_for("CRD established", Duration::from_secs(30), || {
        let crds = crds.clone();
        let name = name.clone();
        async move {
            let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
            let ok = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if ok {
                Ok(())
            } else {
                Err("not established".into())
            }
        }
    })
    .await;
}

/// Pins a pod template to the real node: its label and a toleration of its taint.
fn pin_to_real_node(pod: &mut PodSpec) {
    pod.node_selector = Some(BTreeMap::from([("type".to_string(), "real".to_string())]));
    pod.tolerations = Some(vec![Toleration {
        key: Some("articlesite.io/real-node".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }]);
}

/// One HTTP/1.1 request with `Connection: close`; returns status, headers (lower-cased names)
/// and body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, BTreeMap<String, String>, String), String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect {addr}: timed out"))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| "read timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, headers, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
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

#[tokio::test]
async fn article_server_and_postgresql_serve_from_the_real_node() {
    let started = Instant::now();
    let net = Net::from_env();
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "e2e-real").await;
    let pp = PostParams::default();

    // A local volume on the real node for PostgreSQL, bound through a StorageClass name of
    // this test's own (no provisioner: the claim binds to this PersistentVolume).
    let class = format!("real-node-{}", ns.name);
    let volume_dir = std::path::Path::new(&net.node_dir)
        .join("volumes")
        .join(&ns.name);
    std::fs::create_dir_all(&volume_dir).expect("create the volume directory");
    std::os::unix::fs::chown(&volume_dir, Some(POSTGRES_UID), Some(POSTGRES_UID))
        .expect("chown the volume directory");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": class, "labels": {"articlesite.io/test": "true"}},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": class,
            "local": {"path": volume_dir.to_string_lossy()},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["real-node"]}
            ]}]}},
        },
    }))
    .expect("PersistentVolume");
    pvs.create(&pp, &pv).await.expect("create PersistentVolume");
    let _pv_guard = PvGuard(class.clone());

    // The site object itself, so that the children's owner references resolve (and the
    // garbage collector leaves them alone). No operator runs here: the test applies what
    // the operator's builders produce, pinned to the real node.
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let spec = serde_json::from_value(json!({
        "title": "Real node news",
        "app": {
            "image": env_or("ARTICLE_SERVER_IMAGE", "localhost/articlesite/article-server:dev"),
            "imagePullPolicy": "Never",
            "replicas": 2,
        },
        "database": {
            "image": env_or("POSTGRESQL_IMAGE", "localhost/articlesite/postgresql:dev"),
            "imagePullPolicy": "Never",
            "storage": {"size": "1Gi", "storageClass": class},
        },
    }))
    .expect("site spec");
    let site = sites
        .create(&pp, &ArticleSite::new("news", spec))
        .await
        .expect("create site");
    let name = site.name_any();

    let token = format!("e2e-{:032x}", rand_u128());
    let password = format!("{:032x}", rand_u128());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(&pp, &secret::database_credentials(&site, password))
        .await
        .expect("create credentials");
    secrets
        .create(&pp, &secret::write_token(&site, token.clone()))
        .await
        .expect("create write token");

    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    for svc in [
        service::app(&site),
        service::database_client(&site),
        service::database_headless(&site),
    ] {
        services.create(&pp, &svc).await.expect("create service");
    }
    let db_ip = services
        .get(&Names::database(&name))
        .await
        .expect("database service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("database ClusterIP");

    // PostgreSQL as the operator builds it (claim template included), on the real node.
    let mut sts = statefulset::build(&site, "1Gi");
    if let Some(pod) = sts.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pin_to_real_node(pod);
    }
    Api::<StatefulSet>::namespaced(client.clone(), &ns.name)
        .create(&pp, &sts)
        .await
        .expect("create statefulset");

    // The article server as the operator builds it. The local cluster has no DNS: the
    // database's Service name resolves through the pod's /etc/hosts instead.
    let mut deploy = deployment::build(&site, "cluster.local");
    let db_host = format!("{}.{}.svc.cluster.local", Names::database(&name), ns.name);
    if let Some(pod) = deploy.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pin_to_real_node(pod);
        pod.host_aliases = Some(vec![HostAlias {
            ip: db_ip.clone(),
            hostnames: Some(vec![db_host]),
        }]);
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(&pp, &deploy)
        .await
        .expect("create deployment");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let t_ready = Instant::now();
    wait_for(
        "2 ready article server pods and a ready database on the real node",
        Duration::from_secs(240),
        || {
            let deployments = deployments.clone();
            let pods = pods.clone();
            let name = name.clone();
            async move {
                let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
                let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                if ready == 2 {
                    Ok(())
                } else {
                    Err(format!(
                        "{ready}/2 ready; pods: {}",
                        pod_summary(&pods).await
                    ))
                }
            }
        },
    )
    .await;
    let ready_after = t_ready.elapsed();

    // Every pod runs on the real node with an address of its bridge's subnet.
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    assert_eq!(list.items.len(), 3, "2 app pods + 1 database pod");
    let mut pod_ips = Vec::new();
    for p in &list.items {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        assert_eq!(
            node.as_deref(),
            Some("real-node"),
            "{} placement",
            p.name_any()
        );
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("pod IP");
        assert!(
            in_cidr(&ip, &net.pod_cidr),
            "pod {} has {ip}, outside the real node's {}",
            p.name_any(),
            net.pod_cidr
        );
        pod_ips.push(ip);
    }

    // The Service is dialled only once its endpoints are all real pods.
    let app_ip = services
        .get(&name)
        .await
        .expect("app service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("app ClusterIP");
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
    assert_routed_locally(&net, &pod_ips, &app_ip);

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
                let r = http(
                    &addr,
                    "POST",
                    "/api/v1/articles",
                    Some(&token),
                    Some(&article),
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
    let (status, _, body) = http(
        &addr,
        "POST",
        &format!("/api/v1/articles/{slug}/publish"),
        Some(&token),
        None,
    )
    .await
    .expect("publish");
    let publish_latency = t.elapsed();
    assert_eq!(status, 200, "publish: {body}");

    let t = Instant::now();
    let (status, headers, body) = http(
        &addr,
        "GET",
        &format!("/api/v1/articles/{slug}"),
        None,
        None,
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
    let (status, headers, page) = http(&addr, "GET", &format!("/articles/{slug}"), None, None)
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
    let (status, _, index) = http(&addr, "GET", "/", None, None).await.expect("index");
    assert_eq!(status, 200);
    assert!(index.contains(title), "the index lists the article");

    // Without the token, writes are refused: the Secret reached the pods through the env.
    let (status, _, _) = http(
        &addr,
        "POST",
        "/api/v1/articles",
        None,
        Some(&json!({"slug": "x", "title": "x", "body": "x"})),
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
        let (status, _, body) = http(
            &addr,
            "POST",
            "/api/v1/articles",
            Some(&token),
            Some(&json!({"slug": s, "title": format!("Article {i}"), "body": "kept"})),
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
        match http(
            &addr,
            "POST",
            "/api/v1/articles",
            Some(&token),
            Some(&article),
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
        let (status, _, body) = http(
            &addr,
            "GET",
            &format!("/api/v1/articles/{s}"),
            Some(&token),
            None,
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

    println!(
        "real node e2e: pods ready {:.1}s after creation; create {:?}, publish {:?}, get JSON {:?}, get HTML {:?}; total {:.1}s",
        ready_after.as_secs_f64(),
        create_latency,
        publish_latency,
        json_latency,
        html_latency,
        started.elapsed().as_secs_f64()
    );
}

const POSTGRES_UID: u32 = 999;

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
                    http(&addr, "POST", "/api/v1/articles", Some(&token), Some(&body))
                        .await
                        .and_then(|r| {
                            if r.0 == 201 {
                                Ok(())
                            } else {
                                Err(format!("{} {}", r.0, r.2))
                            }
                        })
                } else {
                    http(
                        &addr,
                        "GET",
                        &format!("/api/v1/articles/{published}"),
                        None,
                        None,
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

/// Deletes the test's PersistentVolume (cluster-scoped, so the namespace does not take it);
/// it goes once the namespace's claim is gone.
struct PvGuard(String);

impl Drop for PvGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = Api::<PersistentVolume>::all(client().await)
                    .delete(&name, &Default::default())
                    .await;
            });
        })
        .join();
    }
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("random bytes");
    u128::from_le_bytes(b)
}

/// Deletes cluster-scoped RBAC objects of a test when it ends.
struct ClusterRbacGuard(String);

impl Drop for ClusterRbacGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let client = client().await;
                let _ = Api::<ClusterRoleBinding>::all(client.clone())
                    .delete(&name, &Default::default())
                    .await;
                let _ = Api::<ClusterRole>::all(client)
                    .delete(&name, &Default::default())
                    .await;
            });
        })
        .join();
    }
}

/// The operator's image runs as a pod on the real node, reaches the API server through the
/// `kubernetes` Service (kube-proxy → the bridge address → the forwarder to 127.0.0.1), and
/// reconciles an ArticleSite of its namespace. Its RBAC is the test's, not yet the chart's.
#[tokio::test]
async fn the_operator_runs_as_a_pod_on_the_real_node() {
    let net = Net::from_env();
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "e2e-operator").await;
    let pp = PostParams::default();
    let sa = "articlesite-operator";
    let cluster_name = format!("e2e-operator-{}", ns.name);
    let _rbac_guard = ClusterRbacGuard(cluster_name.clone());

    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": sa}})).expect("sa"),
        )
        .await
        .expect("create ServiceAccount");
    // Everything inside its namespace; StorageClasses (read) outside it.
    Api::<Role>::namespaced(client.clone(), &ns.name)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": sa},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
            }))
            .expect("role"),
        )
        .await
        .expect("create Role");
    Api::<RoleBinding>::namespaced(client.clone(), &ns.name)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": sa},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns.name}],
            }))
            .expect("rolebinding"),
        )
        .await
        .expect("create RoleBinding");
    Api::<ClusterRole>::all(client.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": cluster_name, "labels": {"articlesite.io/test": "true"}},
                "rules": [{"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"],
                           "verbs": ["get", "list", "watch"]}],
            }))
            .expect("clusterrole"),
        )
        .await
        .expect("create ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": cluster_name, "labels": {"articlesite.io/test": "true"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": cluster_name},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns.name}],
            }))
            .expect("clusterrolebinding"),
        )
        .await
        .expect("create ClusterRoleBinding");

    let image = env_or(
        "OPERATOR_IMAGE",
        "localhost/articlesite/articlesite-operator:dev",
    );
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "articlesite-operator"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "articlesite-operator"}},
            "template": {
                "metadata": {"labels": {"app": "articlesite-operator"}},
                "spec": {
                    "serviceAccountName": sa,
                    "nodeSelector": {"type": "real"},
                    "tolerations": [{"key": "articlesite.io/real-node", "operator": "Exists",
                                     "effect": "NoSchedule"}],
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                        "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "operator",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "args": ["run", "--namespace", ns.name, "--metrics-addr", "0.0.0.0:8080",
                                 "--log-format", "json"],
                        "ports": [{"name": "metrics", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"},
                                           "periodSeconds": 2},
                        "securityContext": {"allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    }))
    .expect("operator deployment");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(&pp, &deploy)
        .await
        .expect("create the operator's Deployment");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let t = Instant::now();
    let pod = wait_for(
        "the operator pod Ready on the real node",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=articlesite-operator"))
                    .await
                    .map_err(|e| e.to_string())?;
                let ready = list.items.into_iter().find(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                });
                ready.ok_or_else(|| "not ready yet".to_string())
            }
        },
    )
    .await;
    let operator_ready = t.elapsed();
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("real-node")
    );
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("operator pod IP");
    assert!(in_cidr(&ip, &net.pod_cidr), "{ip} outside {}", net.pod_cidr);

    // A site for it to reconcile. Its own pods go to the simulated nodes: here only the
    // operator's API traffic from inside the pod matters.
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
    let spec = serde_json::from_value(
        json!({"app": {"image": "localhost/articlesite/article-server:dev"}}),
    )
    .expect("site spec");
    let t = Instant::now();
    sites
        .create(&pp, &ArticleSite::new("blog", spec))
        .await
        .expect("create site");
    wait_for(
        "the in-pod operator to create the site's Deployment and StatefulSet and report status",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            let ns = ns.name.clone();
            let sites = sites.clone();
            async move {
                let d = Api::<Deployment>::namespaced(client.clone(), &ns)
                    .get_opt("blog")
                    .await
                    .map_err(|e| e.to_string())?;
                let s = Api::<StatefulSet>::namespaced(client, &ns)
                    .get_opt("blog-postgresql")
                    .await
                    .map_err(|e| e.to_string())?;
                let site = sites.get("blog").await.map_err(|e| e.to_string())?;
                let observed = site.status.as_ref().and_then(|s| s.observed_generation);
                let by_operator = d.as_ref().is_some_and(|d| {
                    d.managed_fields()
                        .iter()
                        .any(|m| m.manager.as_deref() == Some("articlesite-operator"))
                });
                if by_operator && s.is_some() && observed == site.metadata.generation {
                    Ok(())
                } else {
                    Err(format!(
                        "deployment by operator: {by_operator}, statefulset: {}, observed generation: {observed:?}",
                        s.is_some()
                    ))
                }
            }
        },
    )
    .await;
    println!(
        "operator as a pod on the real node: Ready {:.1}s after creation, site reconciled {:.1}s after creation",
        operator_ready.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
