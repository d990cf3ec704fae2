#!/usr/bin/env bash
# make e2e: the end-to-end tests on real nodes (cargo feature e2e), in two runs of the local
# cluster: one real node (REAL_NODE=1, tests/real_node.rs: the chart, the site, DNS, routes;
# tests/real_node_autoscaling.rs: the HorizontalPodAutoscaler under a bounded load;
# tests/backup_restore.rs: backups to the local S3 server and restores from them),
# then three (REAL_NODES=3, tests/real_nodes.rs: node failures under load;
# tests/replicated_database.rs: the loss of the database's primary under load). For each, when no
# cluster runs, it starts the cluster, builds and imports the images, runs the test, stops the
# cluster, then checks that cluster-down left nothing behind on this machine (interfaces, routes,
# mounts, network namespaces, iptables rules, processes, cgroups, sysctls, directories). A
# cluster that was already running is left alone, and only the test that fits it runs
# (E2E_NODES=1 or 3 runs only one of the two).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/cluster/lib.sh"
. "$here/components.sh"

REAL_NODE=1 "$ROOT/hack/deps.sh"
# wrk: the full-load test's read load (tests/full_load.rs, tests/load/reads.lua).
ensure_commands wrk:wrk

# What the real node may touch, in a form that can be compared before and after. Only
# names and ranges of our own: other clusters on this machine change theirs meanwhile.
# Covers both kinds: the single node's bridge and the several nodes' bridge, veths,
# namespaces and cgroups (their names derive from the cluster directory, as in realnodes.sh).
RNS_IF="asrn$(printf '%s' "$CLUSTER_DIR" | sha256sum | cut -c1-5)"
RNS_CG="articlesite-$(printf '%s' "$CLUSTER_DIR" | sha256sum | cut -c1-8)"
host_state() {
  local s
  echo "== links"; ip -o link show | awk -F': ' '{print $2}' | grep -E "^($REAL_NODE_BRIDGE|$RNS_IF|veth)" || true
  echo "== routes"; ip route show | grep -E "$REAL_NODE_BRIDGE|$RNS_IF|^[a-z]* ?10\.8[89]\.|${SERVICE_CIDR%/*}/" || true
  echo "== mounts"; awk '{print $5}' /proc/self/mountinfo | grep -E "^(/run/netns|$RN_RUN|$RN_DIR|$CLUSTER_DIR/real-nodes)" || true
  echo "== netns"; ls /run/netns 2>/dev/null || true
  echo "== iptables"; { iptables-save; ip6tables-save; } 2>/dev/null | grep -E -- 'KUBE-|CNI-|ARTICLESITE-' || true
  echo "== processes"; ps -eo args | grep -E "^(containerd|$K8S_BIN/kube(let|-proxy)|containerd-shim|socat -lf $LOGS/apiserver-proxy|$COREDNS_BIN/coredns|$RCLONE_BIN/rclone serve s3 $CLUSTER_DIR/s3/data)" | grep -v grep || true
  echo "== cgroups"; find /sys/fs/cgroup -maxdepth 2 \( -name kubepods -o -name "$RNS_CG-*" \) 2>/dev/null || true
  echo "== sysctls"; for s in $RN_SYSCTLS; do [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(sysctl -n "$s")"; done
  echo "== dirs"; ls -d /var/log/pods /var/log/containers /var/lib/kubelet "$RN_DIR" "$CLUSTER_DIR/real-nodes" "$RN_RUN" "$CLUSTER_DIR/s3" 2>/dev/null || true
}

export KUBECONFIG="$KUBECONFIG_FILE" POD_CIDR SERVICE_CIDR
export ARTICLE_SERVER_IMAGE="$IMAGE_PREFIX/article-server:${IMAGE_TAG:-dev}"
export POSTGRESQL_IMAGE="$IMAGE_PREFIX/postgresql:${IMAGE_TAG:-dev}"
export OPERATOR_IMAGE="$IMAGE_PREFIX/articlesite-operator:${IMAGE_TAG:-dev}"

started=0
before=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$started" = 1 ]; then
    "$here/down.sh" || rc=1
    local after
    after=$(host_state)
    if [ "$after" != "$before" ]; then
      say "error: cluster-down left state behind on this machine:"
      diff <(echo "$before") <(echo "$after") >&2 || true
      rc=1
    else
      say "cluster-down left nothing behind (links, routes, mounts, netns, iptables, processes, cgroups, sysctls, dirs)"
    fi
  fi
  started=0
  [ "$rc" = 0 ] || exit "$rc"
}

# run_e2e NODES "TEST...": the cluster with NODES real nodes (started here when none runs), the
# images, the test (one at a time: the latency figures are the site's, not those of two cores shared).
run_e2e() {
  local nodes=$1 tests=$2 t0 t1 t2 t3 t args=()
  for t in $tests; do args+=(--test "$t"); done
  t0=$(date +%s)
  if [ -z "$(component_pid kube-apiserver)" ]; then
    started=1
    before=$(host_state)
    trap cleanup EXIT INT TERM
    if [ "$nodes" = 1 ]; then REAL_NODE=1 "$here/up.sh" >/dev/null; else REAL_NODES=$nodes "$here/up.sh" >/dev/null; fi
  fi
  t1=$(date +%s)
  "$ROOT/hack/images.sh" >/dev/null
  t2=$(date +%s)
  if [ "$nodes" = 1 ]; then
    export REAL_NODE_BRIDGE REAL_NODE_POD_CIDR REAL_NODE_DIR="$RN_DIR"
  else
    export REAL_NODE_DIR="$CLUSTER_DIR/real-nodes"
  fi
  # --no-fail-fast: every test runs and prints its figures, even after one failed.
  (cd "$ROOT" && cargo test --locked --no-fail-fast --features e2e "${args[@]}" -- --nocapture --test-threads=1)
  t3=$(date +%s)
  [ "$nodes" = 1 ] || "$here/node-fault.sh" status | grep MiB || true
  if [ "$started" = 1 ]; then cleanup; trap - EXIT INT TERM; fi
  say "e2e $tests passed: cluster $((t1 - t0))s, images $((t2 - t1))s, test $((t3 - t2))s, down $(( $(date +%s) - t3 ))s"
}

T0=$(date +%s)
running=none
if [ -n "$(component_pid kube-apiserver)" ]; then
  if [ -f "$CLUSTER_DIR/real-nodes/count" ]; then running=multi
  elif [ -n "$(component_pid kubelet)" ]; then running=single
  else die "a local cluster runs without real nodes: stop it (make cluster-down) or start it with REAL_NODE=1 or REAL_NODES=3"
  fi
fi
want=${E2E_NODES:-all}
if [ "$running" != multi ] && { [ "$want" = all ] || [ "$want" = 1 ]; }; then run_e2e 1 "real_node real_node_autoscaling backup_restore"; fi
if [ "$running" != single ] && { [ "$want" = all ] || [ "$want" = 3 ]; }; then
  [ -z "$(component_pid kube-apiserver)" ] || [ "$running" = multi ] || die "the cluster of the first run is still up"
  run_e2e 3 "real_nodes replicated_database full_load"
fi
say "make e2e passed in $(( $(date +%s) - T0 ))s"
