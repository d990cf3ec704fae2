//! Leader election of the operator itself: of several processes exactly one reconciles; when the
//! leader dies, stops, stalls or loses its Lease, another takes over, and two never write at
//! once (proven from the API server's audit log, by user agent, and from the standbys' metrics).
//!
//! DISRUPTIVE: `three_candidates_race_through_a_paused_and_slowed_api_server` pauses the local
//! cluster's kube-apiserver (SIGSTOP); the tests of this binary run one at a time (`SERIAL`).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use articlesite_operator::crd::ArticleSite;
use articlesite_operator::fence::{Fence, FenceLayer};
use articlesite_operator::leader::{ElectionSettings, Elector, LeaderMetrics};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

use common::audit::{
    Term, agent_identity, audit_events, audit_log, by_operator, check_one_writer, file_len,
    in_namespace, is_write, lease_terms, on_object, received, shortest_takeover,
};
use common::control_plane::{Paused, describe};
use common::crd::install_crd;
use common::operator::{OperatorProcess, lease_holder};
use common::proxy::SlowProxy;
use common::{TestNamespace, client, kubeconfig_path, wait_for};

/// One test at a time: one pauses the API server, the others time takeovers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LEASE: &str = "aso-test";
const LEASE_SECONDS: u64 = 4;
const RETRY_SECONDS: u64 = 1;

fn candidate(ns: &str, identity: &str) -> OperatorProcess {
    OperatorProcess::start(
        &format!("{ns}-{identity}"),
        &kubeconfig_path(),
        &[
            "--namespace",
            ns,
            "--leader-elect",
            "--lease-namespace",
            ns,
            "--lease-name",
            LEASE,
            "--lease-identity",
            identity,
            "--lease-duration-seconds",
            &LEASE_SECONDS.to_string(),
            "--lease-renew-deadline-seconds",
            "3",
            "--lease-retry-period-seconds",
            &RETRY_SECONDS.to_string(),
            "--resync-seconds",
            "2",
        ],
    )
}

async fn holder(leases: &Api<Lease>) -> String {
    lease_holder(leases, LEASE).await.unwrap_or_default()
}

/// Polls every 50 ms until the Lease names `who`; returns the time it took. A timeout says
/// what the control plane was doing.
async fn wait_holder(leases: &Api<Lease>, who: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if holder(leases).await == who {
            return start.elapsed();
        }
        if start.elapsed() >= timeout {
            let client = leases.clone().into_client();
            let ns = leases.namespace().unwrap_or_default().to_string();
            panic!(
                "{who} did not take the lease within {timeout:?}; {}",
                describe(&client, &ns, LEASE).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scale_and_wait(client: &kube::Client, ns: &str, replicas: i32) -> Duration {
    let start = Instant::now();
    Api::<ArticleSite>::namespaced(client.clone(), ns)
        .patch(
            "news",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"app": {"replicas": replicas}}})),
        )
        .await
        .expect("scale site");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("Deployment scaled to {replicas}"),
        Duration::from_secs(20),
        || async {
            let d = deployments.get("news").await.map_err(|e| e.to_string())?;
            match d.spec.and_then(|s| s.replicas) {
                Some(r) if r == replicas => Ok(()),
                other => Err(format!("replicas {other:?}")),
            }
        },
    )
    .await;
    start.elapsed()
}

/// Waits until `who` takes the Lease after its holder went (expiry, then an attempt or two)
/// and reconciles a change to `replicas`: the two times.
async fn take_over_and_scale(
    client: &Client,
    leases: &Api<Lease>,
    who: &str,
    replicas: i32,
) -> (Duration, Duration) {
    let limit = Duration::from_secs(LEASE_SECONDS + 3 * RETRY_SECONDS + 4);
    let takeover = wait_holder(leases, who, limit).await;
    let ns = leases.namespace().unwrap_or_default().to_string();
    (takeover, scale_and_wait(client, &ns, replicas).await)
}

/// The standby reconciles nothing and is Ready (so that rollouts of the operator proceed).
async fn assert_standby(op: &OperatorProcess, who: &str) {
    let (code, body) = op.get("/readyz").await.expect("standby /readyz");
    assert_eq!(code, 200, "{who}: a standby is ready: {body}");
    assert!(body.contains("standby"), "{who}: /readyz says {body:?}");
    assert_eq!(
        op.metric("articlesite_operator_reconciles_total").await,
        Ok(0.0),
        "{who} reconciled while standing by"
    );
    assert_eq!(
        op.metric("articlesite_operator_leader").await,
        Ok(0.0),
        "{who}"
    );
}

/// Non-lease write requests in the namespace, per identity (from the user agent), with their
/// time: `(received, identity)`.
fn operator_writes(audit: &Path, offset: u64, ns: &str) -> Vec<(jiff::Timestamp, String)> {
    audit_events(audit, offset, |e| {
        is_write(e)
            && in_namespace(e, ns)
            && e["objectRef"]["resource"].as_str() != Some("leases")
            && by_operator(e)
    })
    .iter()
    .map(|e| (received(e), agent_identity(e).unwrap_or_else(|| "?".into())))
    .collect()
}

/// The CRD installed, a namespace `<prefix>-…`, the audit log with the offset from which this
/// test's writes follow, and the namespace's Leases.
async fn operator_namespace(prefix: &str) -> (Client, TestNamespace, PathBuf, u64, Api<Lease>) {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, prefix).await;
    let audit = audit_log();
    let offset = file_len(&audit);
    let leases = Api::namespaced(client.clone(), &ns.name);
    (client, ns, audit, offset, leases)
}

/// op-a and op-b started, one of them leading and Ready: (leader, standby, their identities).
async fn two_candidates(
    client: &Client,
    ns: &str,
) -> (OperatorProcess, OperatorProcess, String, &'static str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let a = candidate(ns, "op-a");
    a.wait_ready().await;
    let b = candidate(ns, "op-b");
    b.wait_ready().await;
    wait_for("a leader", Duration::from_secs(15), || async {
        match holder(&leases).await.as_str() {
            "op-a" | "op-b" => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let first = holder(&leases).await;
    let (leader, standby, second) = if first == "op-a" {
        (a, b, "op-b")
    } else {
        (b, a, "op-a")
    };
    wait_for("leader /readyz ok", Duration::from_secs(15), || async {
        match leader.get("/readyz").await {
            Ok((200, body)) if body == "ok" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    (leader, standby, first, second)
}

/// `two_candidates`, then site `news` created and Ready (reconciled by the leader).
async fn two_candidates_and_a_site(
    client: &Client,
    ns: &str,
) -> (OperatorProcess, OperatorProcess, String, &'static str) {
    let elected = two_candidates(client, ns).await;
    create_site_and_wait_ready(client, ns).await;
    elected
}

async fn create_site_and_wait_ready(client: &Client, ns: &str) {
    Api::<ArticleSite>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "articlesite.io/v1alpha1", "kind": "ArticleSite",
                "metadata": {"name": "news"},
                "spec": {"app": {"image": "articlesite/article-server:0.1.0"}},
            }))
            .expect("site"),
        )
        .await
        .expect("create site");
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), ns);
    wait_for("site Ready", Duration::from_secs(60), || async {
        let s = sites.get("news").await.map_err(|e| e.to_string())?;
        let ready = s.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            Ok(())
        } else {
            Err(format!("{:?}", s.status))
        }
    })
    .await;
}

/// The operator's writes and Lease terms in `ns` since `offset`, checked: exactly one replica
/// wrote at any time. Returns the terms and a summary of the write blocks.
fn assert_one_writer(audit: &Path, offset: u64, ns: &str) -> (Vec<Term>, Vec<String>) {
    let events = audit_events(audit, offset, |e| {
        is_write(e) && in_namespace(e, ns) && by_operator(e)
    });
    let terms = lease_terms(&events, ns, LEASE);
    let writes: Vec<Value> = events
        .into_iter()
        .filter(|e| e["objectRef"]["resource"].as_str() != Some("leases"))
        .collect();
    let blocks = check_one_writer(&writes, &terms).unwrap_or_else(|e| panic!("{e}"));
    let summary = blocks
        .iter()
        .map(|b| {
            format!(
                "{}: {} writes {} .. {}",
                b.identity, b.writes, b.first_received, b.last_completed
            )
        })
        .collect();
    (terms, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_reconciles_and_a_standby_takes_over() {
    let _serial = SERIAL.lock().await;
    let (client, ns, audit, offset, leases) = operator_namespace("leader").await;
    let (mut leader, standby, first, second) = two_candidates_and_a_site(&client, &ns.name).await;

    assert!(
        leader
            .metric("articlesite_operator_reconciles_total")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(leader.metric("articlesite_operator_leader").await, Ok(1.0));
    assert_standby(&standby, second).await;

    // 1. The leader dies (no chance to release the Lease): the standby waits for it to expire.
    let killed_at = jiff::Timestamp::now();
    leader.signal_and_wait("KILL", Duration::from_secs(5));
    let (takeover, reconciled) = take_over_and_scale(&client, &leases, second, 3).await;
    println!(
        "leader {first} killed: {second} took the lease after {:.2}s (lease {LEASE_SECONDS}s, retry {RETRY_SECONDS}s), reconciled a change {:.2}s later",
        takeover.as_secs_f64(),
        reconciled.as_secs_f64()
    );
    assert!(
        // Expiry after the standby saw the last renewal (within one retry period), then one
        // more attempt.
        takeover <= Duration::from_secs(LEASE_SECONDS + 2 * RETRY_SECONDS + 2),
        "takeover took {takeover:?}"
    );
    let mut leader = standby;

    // 2. A clean stop (SIGTERM, as in a rollout) releases the Lease: a standby takes it at once.
    let c = candidate(&ns.name, "op-c");
    c.wait_ready().await;
    assert_standby(&c, "op-c").await;
    let stopped_at = jiff::Timestamp::now();
    let status = leader.signal_and_wait("TERM", Duration::from_secs(20));
    assert!(status.success(), "{second} exits 0 on SIGTERM: {status:?}");
    // A released Lease (no holder) is taken at the standby's next attempt.
    let handover = wait_holder(&leases, "op-c", Duration::from_secs(8)).await;
    let reconciled = scale_and_wait(&client, &ns.name, 2).await;
    println!(
        "{second} stopped (SIGTERM): op-c took the released lease after {:.2}s, reconciled a change {:.2}s later",
        handover.as_secs_f64(),
        reconciled.as_secs_f64()
    );
    assert!(
        handover <= Duration::from_secs(1 + 2 * RETRY_SECONDS + 2),
        "handover took {handover:?}"
    );
    leader = c;

    // 3. The Lease is taken away (as after a network partition): the leader stops at once.
    let lost_at = Instant::now();
    let stolen_at = jiff::Timestamp::now();
    let now = format!("{stolen_at:.6}");
    leases
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"holderIdentity": "intruder", "renewTime": now, "leaseDurationSeconds": 60}})),
        )
        .await
        .expect("take the lease");
    let status = leader.wait_exit(Duration::from_secs(3 * RETRY_SECONDS + 2));
    let stop = lost_at.elapsed();
    assert!(
        !status.success(),
        "a replica that lost its lease exits non-zero"
    );
    assert!(
        leader.log_text().contains("lost leadership"),
        "the log says why it stopped"
    );
    println!(
        "op-c lost the lease to another holder: stopped reconciling and exited after {:.2}s",
        stop.as_secs_f64()
    );

    // No two replicas ever wrote in the same period: each identity's writes form one block,
    // and each block lies within that replica's leadership (its Lease term).
    let (terms, _) = assert_one_writer(&audit, offset, &ns.name);
    assert_eq!(terms.len(), 3, "three leaders in turn: {terms:#?}");
    let writes = operator_writes(&audit, offset, &ns.name);
    let mut blocks: Vec<(String, jiff::Timestamp, jiff::Timestamp)> = Vec::new();
    for (at, who) in &writes {
        match blocks.last_mut() {
            Some((w, _, last)) if w == who => *last = *at,
            _ => {
                assert!(
                    !blocks.iter().any(|(w, _, _)| w == who),
                    "{who} wrote again after another replica had written: {writes:?}"
                );
                blocks.push((who.clone(), *at, *at));
            }
        }
    }
    let summary: Vec<String> = blocks
        .iter()
        .map(|(w, from, to)| format!("{w}: {from} .. {to}"))
        .collect();
    println!(
        "audit log: {} operator writes, in blocks {summary:?}",
        writes.len()
    );
    let order: Vec<&str> = blocks.iter().map(|(w, _, _)| w.as_str()).collect();
    assert_eq!(
        order,
        vec![first.as_str(), second, "op-c"],
        "writers in order of leadership"
    );
    assert!(blocks[0].2 < killed_at, "{first} wrote after it was killed");
    assert!(
        blocks[1].1 > killed_at,
        "{second} wrote before {first} died"
    );
    assert!(
        blocks[2].1 > stopped_at,
        "op-c wrote before {second} stopped"
    );
    assert!(
        blocks[2].2 < stolen_at + jiff::SignedDuration::from_secs(3),
        "op-c kept writing after losing the lease"
    );
}

// ---------------------------------------------------------------------------------------------
// three candidates in this process, racing for one Lease through a paused and a slowed API server

const RACE_LEASE: Duration = Duration::from_secs(3);
const RACE_RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RACE_RETRY: Duration = Duration::from_millis(500);
/// How long the API server is paused (SIGSTOP) in a pause round.
const PAUSE: Duration = Duration::from_secs(20);

/// A client of the local cluster through `proxy` whose user agent names `identity` (as the
/// operator's does); its writes go only while `fence` is open.
async fn candidate_client(proxy: u16, identity: &str, fence: Option<Arc<Fence>>) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig of the local cluster");
    config.cluster_url = format!("https://127.0.0.1:{proxy}")
        .parse()
        .expect("proxy url");
    config.default_retry = false;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&format!("articlesite-operator/race ({identity})"))
            .expect("user agent"),
    ));
    let builder = ClientBuilder::try_from(config).expect("client");
    match fence {
        Some(f) => builder.with_layer(&FenceLayer::new(f, None)).build(),
        None => builder.build(),
    }
}

/// A candidate as the operator runs one (the elector, and writes through the fenced client)
/// that rejoins as a standby when it loses the Lease instead of exiting. While it leads it
/// writes ConfigMap `work` every 100 ms.
fn spawn_candidate(
    ns: String,
    lease: String,
    identity: String,
    proxy: u16,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let fence = Fence::closed();
        let lease_client = candidate_client(proxy, &identity, None).await;
        let work_client = candidate_client(proxy, &identity, Some(fence.clone())).await;
        let settings = ElectionSettings {
            lease_name: lease.clone(),
            namespace: ns.clone(),
            identity: identity.clone(),
            lease_duration: RACE_LEASE,
            renew_deadline: RACE_RENEW_DEADLINE,
            retry_period: RACE_RETRY,
        };
        let elector = Elector::new(
            lease_client,
            settings,
            fence,
            Arc::new(LeaderMetrics::register(&mut Default::default())),
        );
        let configmaps: Api<ConfigMap> = Api::namespaced(work_client, &ns);
        let work_name = format!("work-{lease}");
        let params = PatchParams::apply(&format!("race-{identity}")).force();
        loop {
            elector.acquire().await;
            let work = async {
                for n in 0u64.. {
                    let cm = json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": work_name},
                        "data": {"writer": identity, "n": n.to_string()},
                    });
                    // Refused by the fence once the Lease is lost; the elector notices too.
                    let _ = configmaps
                        .patch(&work_name, &params, &Patch::Apply(&cm))
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                _ = elector.hold() => {}
                _ = work => {}
            }
        }
    })
}

/// The writer and counter of ConfigMap `work-<lease>`.
async fn work_progress(configmaps: &Api<ConfigMap>, lease: &str) -> Option<(String, u64)> {
    let cm = configmaps.get_opt(&format!("work-{lease}")).await.ok()??;
    let data = cm.data?;
    Some((data.get("writer")?.clone(), data.get("n")?.parse().ok()?))
}

/// Waits until some candidate has written ConfigMap `work-<lease>` 10 times in a row as the
/// leader (after `after`, a previous progress); returns the writer and its counter.
async fn wait_working(
    client: &Client,
    ns: &str,
    lease: &str,
    after: Option<(String, u64)>,
    timeout: Duration,
) -> (String, u64) {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        if let Some((w, n)) = work_progress(&configmaps, lease).await {
            let base = match &after {
                Some((aw, an)) if *aw == w => *an,
                _ => 0,
            };
            if n >= base + 10 {
                return (w, n);
            }
        }
        if start.elapsed() >= timeout {
            panic!(
                "no candidate wrote 10 times as the leader within {timeout:?}; {}",
                describe(client, ns, lease).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_candidates_race_through_a_paused_and_slowed_api_server() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let ns = TestNamespace::create(&client, "leader-race").await;
    let audit = audit_log();
    let offset = file_len(&audit);
    let rounds: usize = std::env::var("LEADER_RACE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let proxy = SlowProxy::start(apiserver_port()).await;
    let mut recoveries = Vec::new();
    for round in 0..rounds {
        let lease = format!("race-{round}");
        // Answers always a little slow (up to 300 ms a chunk), so requests overlap.
        proxy.slow_down(Duration::from_millis(300));
        let spawn = |c: &str| {
            let identity = format!("r{round}-{c}");
            let task =
                spawn_candidate(ns.name.clone(), lease.clone(), identity.clone(), proxy.port);
            (identity, task)
        };
        let mut candidates: Vec<(String, tokio::task::JoinHandle<()>)> = Vec::new();
        let disturbed = Instant::now();
        let (what, before) = match round % 3 {
            // The three start while the whole control plane stalls: their reads and creates
            // queue, and race when it resumes.
            0 => {
                let paused = Paused::apiserver();
                candidates.extend(["a", "b", "c"].map(spawn));
                tokio::time::sleep(PAUSE).await;
                paused.resume();
                (
                    format!("three candidates started during a {PAUSE:?} pause"),
                    None,
                )
            }
            // The leader dies in the middle of a stall: after it, the two standbys race for the
            // expired Lease with the same resourceVersion.
            1 => {
                candidates.extend(["a", "b", "c"].map(spawn));
                let before =
                    wait_working(&client, &ns.name, &lease, None, Duration::from_secs(30)).await;
                let paused = Paused::apiserver();
                tokio::time::sleep(PAUSE / 2).await;
                for (identity, task) in &candidates {
                    if *identity == before.0 {
                        task.abort();
                    }
                }
                tokio::time::sleep(PAUSE / 2).await;
                paused.resume();
                (
                    format!("API server paused {PAUSE:?}, the leader killed meanwhile"),
                    Some(before),
                )
            }
            // Answers slower than the renew deadline: renewals fail, standbys take over.
            _ => {
                candidates.extend(["a", "b", "c"].map(spawn));
                let before =
                    wait_working(&client, &ns.name, &lease, None, Duration::from_secs(30)).await;
                proxy.slow_down(RACE_RENEW_DEADLINE + Duration::from_millis(500));
                tokio::time::sleep(Duration::from_secs(10)).await;
                proxy.slow_down(Duration::from_millis(300));
                (
                    "answers slowed by up to 2.5 s for 10 s".to_string(),
                    Some(before),
                )
            }
        };
        let resumed = Instant::now();
        let after = wait_working(
            &client,
            &ns.name,
            &lease,
            before.clone(),
            Duration::from_secs(60),
        )
        .await;
        recoveries.push(resumed.elapsed());
        if round % 3 == 1 {
            let dead = before.as_ref().map(|b| b.0.as_str());
            assert_ne!(
                Some(after.0.as_str()),
                dead,
                "round {round}: the killed leader wrote"
            );
        }
        println!(
            "round {round}: {what}; leader before {:?}, after {} (writing again {:.1}s after the disturbance ended, {:.1}s after it began)",
            before.map(|b| b.0),
            after.0,
            resumed.elapsed().as_secs_f64(),
            disturbed.elapsed().as_secs_f64()
        );
        for (_, task) in candidates {
            task.abort();
        }
    }
    drop(proxy);
    // Let requests still in flight reach the audit log: wait until the namespace has seen no
    // new write for 2 s (8 polls; the aborted candidates sent their last).
    let writes_here =
        || audit_events(&audit, offset, |e| is_write(e) && in_namespace(e, &ns.name)).len();
    let (mut seen, mut stable) = (usize::MAX, 0);
    wait_for(
        "the namespace's writes to settle",
        Duration::from_secs(30),
        || {
            let now = writes_here();
            stable = if now == seen { stable + 1 } else { 0 };
            seen = now;
            let settled = stable >= 8;
            async move {
                if settled {
                    Ok(())
                } else {
                    Err(format!("{now} writes, still growing"))
                }
            }
        },
    )
    .await;

    let events = audit_events(&audit, offset, |e| is_write(e) && in_namespace(e, &ns.name));
    let mut total_terms = 0;
    let mut total_writes = 0;
    let mut total_refused = 0;
    let mut shortest: Option<jiff::SignedDuration> = None;
    for round in 0..rounds {
        let lease = format!("race-{round}");
        let terms = lease_terms(&events, &ns.name, &lease);
        let writes: Vec<Value> = events
            .iter()
            .filter(|e| on_object(e, "configmaps", &format!("work-{lease}")))
            .cloned()
            .collect();
        let blocks =
            check_one_writer(&writes, &terms).unwrap_or_else(|e| panic!("round {round}: {e}"));
        if let Some(gap) = shortest_takeover(&terms) {
            assert!(
                gap >= jiff::SignedDuration::try_from(RACE_LEASE).expect("duration")
                    - jiff::SignedDuration::from_millis(20),
                "round {round}: a new holder took the Lease {gap:?} after the last renewal (lease {RACE_LEASE:?}): {terms:#?}"
            );
            shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
        }
        let summary: Vec<String> = terms
            .iter()
            .map(|t| format!("{} from {}", t.identity, t.from))
            .collect();
        // Lost races: Lease writes refused because another candidate wrote first.
        let refused = events
            .iter()
            .filter(|e| on_object(e, "leases", &lease))
            .filter(|e| e["responseStatus"]["code"].as_u64() == Some(409))
            .count();
        println!(
            "round {round}: {} terms {summary:?}, {refused} Lease writes refused with 409, {} work writes in {} blocks, none overlapping",
            terms.len(),
            writes.len(),
            blocks.len()
        );
        total_refused += refused;
        assert!(!writes.is_empty(), "round {round}: no work written");
        total_terms += terms.len();
        total_writes += writes.len();
    }
    assert!(
        total_terms > rounds,
        "the disturbances made no leader change at all ({total_terms} terms in {rounds} rounds): nothing was tested"
    );
    println!(
        "{rounds} rounds: {total_terms} leadership terms, {total_refused} Lease writes refused (409), {total_writes} work writes, 0 overlaps; shortest takeover after a last renewal {shortest:?} (lease {RACE_LEASE:?}); recovery times {:?}",
        recoveries
            .iter()
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
}

/// The port of the local API server, from the kubeconfig.
fn apiserver_port() -> u16 {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("kubeconfig");
    kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref()?.server.clone())
        .and_then(|s| s.rsplit(':').next()?.trim_end_matches('/').parse().ok())
        .expect("API server port in the kubeconfig")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_sends_nothing_after_it_resumes_and_rejoins_as_a_standby() {
    let _serial = SERIAL.lock().await;
    let (client, ns, audit, offset, leases) = operator_namespace("leader-pause").await;
    let (mut leader, standby, first, second) = two_candidates_and_a_site(&client, &ns.name).await;

    // The leader's process stops (as in a stalled machine or a long GC pause) past the lease
    // duration; the site changes meanwhile, so the leader has work waiting when it resumes.
    let paused = Paused::stop(leader.pid());
    let stopped_at = jiff::Timestamp::now();
    let (takeover, reconciled) = take_over_and_scale(&client, &leases, second, 3).await;
    assert!(
        takeover >= Duration::from_secs(LEASE_SECONDS - RETRY_SECONDS),
        "{second} took the Lease {takeover:?} after {first} stopped: before it could expire"
    );
    let resumed_at = jiff::Timestamp::now();
    paused.resume();

    // It finds its renew deadline passed: it writes nothing, says why and exits non-zero.
    let status = leader.wait_exit(Duration::from_secs(10));
    let exited = jiff::Timestamp::now();
    assert!(!status.success(), "{first} exits non-zero: {status:?}");
    let log = leader.log_text();
    assert!(
        log.contains("lost the lease") && log.contains("renew deadline"),
        "{first}'s log says why it stopped"
    );
    let late: Vec<Value> = audit_events(&audit, offset, |e| {
        is_write(e)
            && agent_identity(e).as_deref() == Some(first.as_str())
            && received(e) > stopped_at + jiff::SignedDuration::from_millis(500)
    });
    assert!(
        late.is_empty(),
        "{first} wrote after it was stopped (resumed at {resumed_at}): {late:#?}"
    );
    let (terms, blocks) = assert_one_writer(&audit, offset, &ns.name);
    let holders: Vec<&str> = terms.iter().map(|t| t.identity.as_str()).collect();
    assert_eq!(holders, vec![first.as_str(), second], "{terms:#?}");

    // Restarted (as the kubelet does), it rejoins as a standby.
    leader.restart();
    leader.wait_ready().await;
    assert_standby(&leader, &first).await;
    assert_eq!(holder(&leases).await, second);
    assert_eq!(
        standby
            .metric_with(
                "articlesite_operator_leader_transitions_total",
                "transition=\"acquired\""
            )
            .await,
        Ok(1.0),
        "{second} counts its takeover"
    );
    assert_eq!(
        standby
            .metric_with(
                "articlesite_operator_leader_lease_holder",
                &format!("holder=\"{second}\"")
            )
            .await,
        Ok(1.0)
    );
    println!(
        "{first} paused: {second} took the Lease after {:.2}s (lease {LEASE_SECONDS}s) and reconciled a change {:.2}s later; {first} resumed, sent no write and exited after {:.2}s; writes in blocks {blocks:?}",
        takeover.as_secs_f64(),
        reconciled.as_secs_f64(),
        exited.duration_since(resumed_at).as_secs_f64()
    );
}
