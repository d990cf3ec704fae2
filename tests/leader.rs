//! Leader election of the operator itself: of several processes exactly one reconciles; when the
//! leader dies, stops or loses its Lease, another takes over, and two never write at once
//! (proven from the API server's audit log, by user agent, and from the standbys' metrics).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use common::audit::{audit_events, audit_log, by_operator, file_len, in_namespace, is_write};
use common::crd::install_crd;
use common::operator::{OperatorProcess, lease_holder};
use common::{TestNamespace, client, kubeconfig_path, wait_for};

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

/// Polls every 50 ms until the Lease names `who`; returns the time it took.
async fn wait_holder(leases: &Api<Lease>, who: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if holder(leases).await == who {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{who} did not take the lease within {timeout:?}; holder: {:?}",
            holder(leases).await
        );
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
    .map(|e: &Value| {
        let ua = e["userAgent"].as_str().unwrap_or_default();
        let identity = ua
            .split_once(" (")
            .and_then(|(_, rest)| rest.split(')').next())
            .unwrap_or("?")
            .to_string();
        let at: jiff::Timestamp = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("audit timestamp");
        (at, identity)
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_reconciles_and_a_standby_takes_over() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "leader").await;
    let audit = audit_log();
    let offset = file_len(&audit);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);

    let a = candidate(&ns.name, "op-a");
    a.wait_ready().await;
    let b = candidate(&ns.name, "op-b");
    b.wait_ready().await;
    wait_for("a leader", Duration::from_secs(15), || async {
        match holder(&leases).await.as_str() {
            "op-a" | "op-b" => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let first = holder(&leases).await;
    let (mut leader, standby, second) = if first == "op-a" {
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

    Api::<ArticleSite>::namespaced(client.clone(), &ns.name)
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
    let sites: Api<ArticleSite> = Api::namespaced(client.clone(), &ns.name);
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
    let takeover = wait_holder(
        &leases,
        second,
        Duration::from_secs(LEASE_SECONDS + 3 * RETRY_SECONDS + 4),
    )
    .await;
    let reconciled = scale_and_wait(&client, &ns.name, 3).await;
    println!(
        "leader {first} killed: {second} took the lease after {:.2}s (lease {LEASE_SECONDS}s, retry {RETRY_SECONDS}s), reconciled a change {:.2}s later",
        takeover.as_secs_f64(),
        reconciled.as_secs_f64()
    );
    assert!(
        // Expiry after the last renewal, then one attempt and the confirming second look.
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
    // The released Lease expires after 1 s; then one attempt and the confirming second look.
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
    // and each block lies within that replica's leadership.
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
