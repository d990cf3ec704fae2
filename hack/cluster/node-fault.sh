#!/usr/bin/env bash
# Failures on demand for the real nodes of the local cluster (make cluster-up REAL_NODES=3):
#
#   hack/cluster/node-fault.sh freeze    real-node-2   # the machine hangs: its kubelet, containerd,
#                                                      # kube-proxy, shims and pods frozen (cgroup freezer)
#   hack/cluster/node-fault.sh partition real-node-2   # unreachable but running: its link is down
#   hack/cluster/node-fault.sh kill      real-node-2   # off: link down, every process of the node SIGKILLed
#   hack/cluster/node-fault.sh heal      real-node-2   # undoes freeze and partition
#   hack/cluster/node-fault.sh boot      real-node-2   # after kill: powers it on again (link up, containerd,
#                                                      # kubelet, kube-proxy; the kubelet then cleans up)
#   hack/cluster/node-fault.sh status    [NODE]        # state, processes and memory of each node
#
# Nothing tells the control plane: the node lifecycle controller sees the node's Lease stop and
# marks it NotReady by itself (15-17 s, see docs/real-node.md, "Node failures").
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
. "$here/components.sh"

action=${1:-}; node=${2:-}
[ -n "$RNS_MULTI" ] || die "no real nodes in $CLUSTER_DIR: start them with make cluster-up REAL_NODES=3"

state_file() { echo "$(rns_dir "$1")/fault"; }
fault_of() { cat "$(state_file "$1")" 2>/dev/null || echo none; }
mark() { echo "$2" >"$(state_file "$1")"; }

status_of() {
  local i=$1 st link
  st=$(fault_of "$i")
  link=$(ip -br link show "${RNS_IF}h$i" 2>/dev/null | awk '{print $2}')
  printf '%s %s fault=%s freezer=%s link=%s processes=%s\n' "$(rns_name "$i")" "$(rns_zone "$i")" "$st" \
    "$(cat "/sys/fs/cgroup/freezer/$(rns_cgroup "$i")/freezer.state" 2>/dev/null || echo -)" "${link:--}" \
    "$(node_procs "$i" | wc -l)"
  node_memory "$i"
}

freeze() {
  local i=$1 f deadline
  f="/sys/fs/cgroup/freezer/$(rns_cgroup "$i")/freezer.state"
  echo FROZEN >"$f"
  deadline=$(( $(date +%s) + 20 ))
  until [ "$(cat "$f")" = FROZEN ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$(rns_name "$i") did not freeze within 20 s ($(cat "$f"))"
    sleep 0.1
  done
}

case $action in
  status)
    if [ -n "$node" ]; then status_of "$(rns_index "$node")"; else
      for i in $(seq 1 "$(rns_count)"); do status_of "$i"; done
    fi
    exit 0 ;;
  freeze|partition|kill|heal|boot) ;;
  *) die "usage: $0 freeze|partition|kill|heal|boot|status NODE (real-node-1 .. real-node-$(rns_count))" ;;
esac
[ -n "$node" ] || die "usage: $0 $action NODE"
i=$(rns_index "$node")
name=$(rns_name "$i")
current=$(fault_of "$i")

case $action in
  freeze)
    [ "$current" = none ] || die "$name is already faulty ($current); heal it first"
    freeze "$i"; mark "$i" frozen
    say "$name frozen: $(node_procs "$i" | wc -l) processes (kubelet, containerd, kube-proxy, shims, pods) hang" ;;
  partition)
    [ "$current" = none ] || die "$name is already faulty ($current); heal it first"
    ip link set "${RNS_IF}h$i" down; mark "$i" partitioned
    say "$name partitioned: its link is down, its processes run on" ;;
  kill)
    [ "$current" = none ] || [ "$current" = frozen ] || [ "$current" = partitioned ] || die "$name is $current"
    ip link set "${RNS_IF}h$i" down
    node_kill_all "$i"; mark "$i" off
    say "$name is off: link down, every process killed" ;;
  heal)
    case $current in
      frozen) node_thaw "$i" ;;
      partitioned) ip link set "${RNS_IF}h$i" up ;;
      none) say "$name is not faulty" ;;
      off) die "$name is off: boot it ($0 boot $name)" ;;
    esac
    [ "$current" = none ] || { mark "$i" none; say "$name healed (was $current)"; } ;;
  boot)
    [ "$current" = off ] || die "$name is not off ($current)"
    ip link set "${RNS_IF}h$i" up
    node_boot "$i"; mark "$i" none
    say "$name booted: containerd, kubelet and kube-proxy started again" ;;
esac
