#!/usr/bin/env bash
# make e2e: the end-to-end test on the real node (tests/real_node.rs, cargo feature e2e).
# Starts the local cluster with REAL_NODE=1 when no cluster runs, builds and imports the
# images, runs the test, and stops the cluster again; then checks that cluster-down left
# nothing behind on this machine (interfaces, routes, mounts, network namespaces, iptables
# rules, processes, cgroups, sysctls). A cluster that was already running is left alone
# (it must have its real node).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/cluster/lib.sh"
. "$here/components.sh"

REAL_NODE=1 "$ROOT/hack/deps.sh"

# What the real node may touch, in a form that can be compared before and after. Only
# names and ranges of our own: other clusters on this machine change theirs meanwhile.
host_state() {
  local s
  echo "== links"; ip -o link show | awk -F': ' '{print $2}' | grep -E "^($REAL_NODE_BRIDGE|veth)" || true
  echo "== routes"; ip route show | grep -E "$REAL_NODE_BRIDGE|^[a-z]* ?${REAL_NODE_POD_CIDR%/*}|${SERVICE_CIDR%/*}/" || true
  echo "== mounts"; awk '{print $5}' /proc/self/mountinfo | grep -E "^(/run/netns|$RN_RUN|$RN_DIR)" || true
  echo "== netns"; ls /run/netns 2>/dev/null || true
  echo "== iptables"; { iptables-save; ip6tables-save; } 2>/dev/null | grep -E -- 'KUBE-|CNI-|ARTICLESITE-' || true
  echo "== processes"; ps -eo args | grep -E "^(containerd|$K8S_BIN/kube(let|-proxy)|containerd-shim|socat -lf $LOGS/apiserver-proxy|$COREDNS_BIN/coredns)" | grep -v grep || true
  echo "== cgroups"; find /sys/fs/cgroup -maxdepth 2 -name kubepods 2>/dev/null || true
  echo "== sysctls"; for s in $RN_SYSCTLS; do [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(sysctl -n "$s")"; done
  echo "== dirs"; ls -d /var/log/pods /var/log/containers "$RN_DIR" "$RN_RUN" 2>/dev/null || true
}

started=0
[ -z "$(component_pid kube-apiserver)" ] && started=1
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
      say "cluster-down left nothing behind (links, routes, mounts, netns, iptables, processes, cgroups, sysctls)"
    fi
  fi
  exit "$rc"
}

t0=$(date +%s)
if [ "$started" = 1 ]; then
  before=$(host_state)
  trap cleanup EXIT INT TERM
  REAL_NODE=1 "$here/up.sh" >/dev/null
elif [ -z "$(component_pid kubelet)" ]; then
  die "a local cluster runs without its real node: stop it (make cluster-down) or start it with REAL_NODE=1"
fi
t1=$(date +%s)
"$ROOT/hack/images.sh" >/dev/null
t2=$(date +%s)

cd "$ROOT"
export KUBECONFIG="$KUBECONFIG_FILE" REAL_NODE_BRIDGE REAL_NODE_POD_CIDR POD_CIDR SERVICE_CIDR
export REAL_NODE_DIR="$RN_DIR"
export ARTICLE_SERVER_IMAGE="$IMAGE_PREFIX/article-server:${IMAGE_TAG:-dev}"
export POSTGRESQL_IMAGE="$IMAGE_PREFIX/postgresql:${IMAGE_TAG:-dev}"
export OPERATOR_IMAGE="$IMAGE_PREFIX/articlesite-operator:${IMAGE_TAG:-dev}"
# One test at a time: the latency figures are the site's, not those of two cores shared.
cargo test --locked --features e2e --test real_node -- --nocapture --test-threads=1
t3=$(date +%s)
say "make e2e passed: cluster $((t1 - t0))s, images $((t2 - t1))s, test $((t3 - t2))s"
