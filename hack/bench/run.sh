#!/usr/bin/env bash
# make bench: figures, not tests. Builds release binaries, starts a local cluster of its own
# (.cluster-bench/, other ports: a running dev cluster is never touched) and its own PostgreSQL,
# runs hack/bench/bench.py and writes docs/benchmarks.json and docs/benchmarks.md.
#
# Knobs (environment): BENCH_SITES ("100 1000"), BENCH_PARTS ("operator app"),
# BENCH_CONNECTIONS ("1 16 64"), BENCH_DURATION (seconds per load run, 10),
# BENCH_STEADY_SECONDS (75), BENCH_RESYNC_SECONDS (60), BENCH_CONCURRENCY (the operator's
# --concurrency, 16: each reconcile waits on a dozen API calls, so at the default of 4 the
# operator, not the API server, sets the pace), BENCH_CONVERGE_TIMEOUT (seconds, 1800; a run
# that reaches it reports how many sites were Ready), BENCH_OUT (docs/benchmarks).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

export CLUSTER_DIR="${BENCH_CLUSTER_DIR:-$ROOT/.cluster-bench}"
export APISERVER_PORT="${BENCH_APISERVER_PORT:-7143}" ETCD_PORT="${BENCH_ETCD_PORT:-13179}"
export ETCD_PEER_PORT="${BENCH_ETCD_PEER_PORT:-13180}" KCM_PORT="${BENCH_KCM_PORT:-11057}"
export SCHEDULER_PORT="${BENCH_SCHEDULER_PORT:-11059}" KWOK_PORT="${BENCH_KWOK_PORT:-11047}"
export METRICS_SERVER_PORT="${BENCH_METRICS_SERVER_PORT:-11053}"
export POD_CIDR="${BENCH_POD_CIDR:-10.251.0.0/16}" SERVICE_CIDR="${BENCH_SERVICE_CIDR:-10.103.0.0/16}"
export KCM_API_QPS=200 KCM_API_BURST=400 KCM_HOSTPATH_PROVISIONER=1
. "$ROOT/hack/cluster/lib.sh"
. "$ROOT/hack/cluster/components.sh"

"$ROOT/hack/deps.sh"
ensure_commands wrk:wrk python3:python3 envsubst:gettext-base

cd "$ROOT"
say "== cargo build --release"
# One invocation for all binaries: building packages one by one resolves other feature sets
# and compiles every dependency again.
cargo build --release --locked --workspace --bins

parts="${BENCH_PARTS:-operator app}"
started=0
cleanup() {
  local rc=$?
  if [ "$started" = 1 ]; then
    "$ROOT/hack/cluster/down.sh" || true
    # The controller-manager's host-path provisioner leaves empty directories behind.
    rm -rf /tmp/hostpath_pv
  fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

nodes=0
case " $parts " in *" operator "*)
  if [ -z "$(component_pid kube-apiserver)" ]; then
    started=1
    "$ROOT/hack/cluster/up.sh" >/dev/null
  fi
  # Room for the pods of a thousand sites twice over (the reference applies the same children
  # while the operator's sites still run): 24 more nodes of 250 pods, eight per zone. With
  # twelve, the six cluster nodes of 110 pods and the bench nodes held 3,660 pods, and the
  # reference at 1,000 sites stalled at 1,660 of its 2,000 pods for want of room.
  for zone in a b c; do
    for i in 1 2 3 4 5 6 7 8; do
      NODE="kwok-bench-$zone-$i" ZONE="zone-$zone" envsubst <"$ROOT/hack/bench/node.yaml.in" |
        "$K8S_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" apply --server-side \
          --field-manager=articlesite-bench -f - >/dev/null
    done
  done
  nodes=30
  # (A bench cluster already running from before KCM_HOSTPATH_PROVISIONER was set has no such
  # provisioner: its claims stay Pending; stop it with CLUSTER_DIR=.cluster-bench down.sh.)
  # The benchmark's claims go to the controller-manager's host-path provisioner, which binds
  # claims concurrently (kwok's volume stages bind one at a time: at 1,000 sites the median
  # database volume waited 369 s for them, and that queue, not the operator, set the pace).
  "$K8S_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" annotate storageclass kwok-volume --overwrite \
    storageclass.kubernetes.io/is-default-class=false >/dev/null
  "$K8S_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" apply --server-side \
    --field-manager=articlesite-bench -f "$ROOT/hack/bench/storageclass.yaml" >/dev/null
  ;;
esac

export KUBECONFIG="$KUBECONFIG_FILE" K8S_BIN KUBERNETES_VERSION ETCD_VERSION KWOK_VERSION PIDS LOGS PKI
python3 "$ROOT/hack/bench/bench.py" \
  --parts "$parts" \
  --sites "${BENCH_SITES:-100 1000}" \
  --nodes "$nodes" \
  --connections "${BENCH_CONNECTIONS:-1 16 64}" \
  --duration "${BENCH_DURATION:-10}" \
  --steady-seconds "${BENCH_STEADY_SECONDS:-75}" \
  --resync-seconds "${BENCH_RESYNC_SECONDS:-60}" \
  --concurrency "${BENCH_CONCURRENCY:-16}" \
  --converge-timeout "${BENCH_CONVERGE_TIMEOUT:-1800}" \
  --out "${BENCH_OUT:-docs/benchmarks}"
