# Several real nodes on this machine (REAL_NODES=N, N >= 2): each one a host of its own, in a
# network namespace with a veth to a host bridge, its own pod subnet, containerd (root, state,
# sockets), kubelet (root directory, cgroup root, pod logs, node name, certificates), kube-proxy
# and CNI configuration. Sourced by realnode.sh when the mode is on; see docs/real-node.md,
# "Several real nodes". REAL_NODES=1 (or REAL_NODE=1) keeps the single real node of realnode.sh.
# shellcheck shell=bash

# Names derived from the cluster directory, like RN_RUN: two clusters never share one.
RNS_ID=$(printf '%s' "$CLUSTER_DIR" | sha256sum | cut -c1-8)
RNS_IF="asrn${RNS_ID:0:5}"          # the host bridge; host ends of the veths are ${RNS_IF}h<i>
RNS_CHAIN="ARTICLESITE-RNS"
# The machines' network (host .1, node i .1<i>) and the nodes' pod subnets 10.88.<i>.0/24.
REAL_NODES_NET="${REAL_NODES_NET:-10.89.0.0/24}"
REAL_NODES_POD_CIDR="${REAL_NODES_POD_CIDR:-10.88.0.0/16}"
RNS_ZONES=(zone-a zone-b zone-c)
# Node heartbeats (see docs/real-node.md, "Node failures"): kubelet and kwok Leases of 12 s,
# renewed every 3 s (a quarter), and a controller-manager that calls a node NotReady after 15 s
# without one, checking every 2 s: NotReady 15-17 s after a fault instead of 40-60 s.
RNS_LEASE_SECONDS=12
RNS_MONITOR_FLAGS="--node-monitor-period=2s --node-monitor-grace-period=15s"

# What the rest of the scripts (and hack/e2e.sh, hack/images.sh) call the real node's parts.
RN_DIR="$CLUSTER_DIR/real-nodes"
REAL_NODE_BRIDGE="$RNS_IF"
REAL_NODE_POD_CIDR="$REAL_NODES_POD_CIDR"
RN_CHAIN="$RNS_CHAIN"

# The host's kube-proxy stands for this machine, a client of the cluster, not for a node.
cmd_kube-proxy() {
  echo "$K8S_BIN/kube-proxy" --config="$RN_DIR/kube-proxy.yaml" --hostname-override=articlesite-host --v=1
}

rns_net_base() { local b=${REAL_NODES_NET%/*}; echo "${b%.*}"; }
rn_gateway() { echo "$(rns_net_base).1"; }
rns_node_ip() { echo "$(rns_net_base).$((10 + $1))"; }
rns_pod_cidr() { local b=${REAL_NODES_POD_CIDR%/*}; echo "${b%%.*}.$(echo "$b" | cut -d. -f2).$1.0/24"; }
rns_pod_gw() { local c; c=$(rns_pod_cidr "$1"); c=${c%/*}; echo "${c%.*}.1"; }
rns_name() { echo "real-node-$1"; }
rns_netns() { echo "articlesite-$RNS_ID-n$1"; }
rns_dir() { echo "$RN_DIR/$(rns_name "$1")"; }
rns_run() { echo "$RN_RUN/n$1"; }
rns_sock() { echo "$(rns_run "$1")/containerd.sock"; }
rns_cgroup() { echo "articlesite-$RNS_ID-n$1"; }
rns_zone() { echo "${RNS_ZONES[$((($1 - 1) % ${#RNS_ZONES[@]}))]}"; }
rns_count() { cat "$RN_DIR/count" 2>/dev/null || echo "${REAL_NODES:-0}"; }
# node index from "real-node-2" or "2"
rns_index() {
  local i=${1#real-node-}
  [[ $i =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le "$(rns_count)" ] || die "no real node '$1' (real-node-1 .. real-node-$(rns_count))"
  echo "$i"
}

# CONTAINERD_SOCK is node 1's (images.sh tests that it exists); ctr_ acts on every node:
# `images ls` answers only when all nodes hold the same, so images.sh imports where one lacks it.
CONTAINERD_SOCK="$RN_RUN/n1/containerd.sock"
ctr_() {
  local i out first="" same=1
  if [ "${1:-}" = images ] && [ "${2:-}" = ls ]; then
    for i in $(seq 1 "$(rns_count)"); do
      out=$(ctr --address "$(rns_sock "$i")" --namespace k8s.io "$@" 2>/dev/null | sed 1d) || out=""
      if [ "$i" = 1 ]; then first=$out; elif [ "$out" != "$first" ]; then same=0; fi
    done
    [ "$same" = 1 ] && printf 'REF TYPE DIGEST\n%s\n' "$first"
    return 0
  fi
  for i in $(seq 1 "$(rns_count)"); do
    ctr --address "$(rns_sock "$i")" --namespace k8s.io "$@" || return 1
  done
}
ctr_node() { local i=$1; shift; ctr --address "$(rns_sock "$i")" --namespace k8s.io "$@"; }

# --- per-node processes: pid files .cluster/pids/real-node-<i>.<part>.pid, logs likewise --------

# The command of a node's part; each names "<node dir>/<part>" (its config), which node_pid checks.
rns_cmd() {
  local i=$1 part=$2 d; d=$(rns_dir "$1")
  case $part in
    containerd) echo containerd --config "$d/containerd.toml" ;;
    kubelet)
      echo "$K8S_BIN/kubelet" --config="$d/kubelet.yaml" --kubeconfig="$d/kubelet.kubeconfig" \
        --root-dir="$d/kubelet" --cert-dir="$d/kubelet/pki" --hostname-override="$(rns_name "$i")" \
        --node-ip="$(rns_node_ip "$i")" \
        --node-labels="type=real,topology.kubernetes.io/zone=$(rns_zone "$i"),topology.kubernetes.io/region=local" \
        --v=1
      ;;
    kube-proxy) echo "$K8S_BIN/kube-proxy" --config="$d/kube-proxy.yaml" --hostname-override="$(rns_name "$i")" --v=1 ;;
  esac
}

node_pid() {
  local i=$1 part=$2 f pid
  f="$PIDS/$(rns_name "$i").$part.pid"
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$(rns_dir "$i")/$part"; then
    echo "$pid"
  fi
}

# Starts a part inside the node's network namespace (nsenter keeps the host's mount namespace,
# so the kubelet's volume mounts reach containerd) and inside the node's freezer cgroup, which
# node-fault.sh freezes. The shell moves itself into the cgroup before exec: no child escapes.
node_start() {
  local i=$1 part=$2 log
  [ -n "$(node_pid "$i" "$part")" ] && return 0
  mkdir -p "$LOGS" "$PIDS"
  log="$LOGS/$(rns_name "$i").$part.log"
  # shellcheck disable=SC2046 # the command is a list of words
  setsid sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh \
    "/sys/fs/cgroup/freezer/$(rns_cgroup "$i")/agents" \
    nsenter --net="/run/netns/$(rns_netns "$i")" -- $(rns_cmd "$i" "$part") >>"$log" 2>&1 </dev/null &
  echo $! >"$PIDS/$(rns_name "$i").$part.pid"
}

node_stop() {
  local i=$1 part=$2 pid n
  pid=$(node_pid "$i" "$part")
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for n in $(seq 1 100); do
      [ -d "/proc/$pid" ] || break
      grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && break
      sleep 0.1
    done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$(rns_name "$i").$part.pid"
}

# Every process in the node's cgroup tree (agents, shims, containers), from the freezer hierarchy.
node_procs() {
  local d="/sys/fs/cgroup/freezer/$(rns_cgroup "$1")"
  [ -d "$d" ] || return 0
  find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un
}

node_frozen() { [ "$(cat "/sys/fs/cgroup/freezer/$(rns_cgroup "$1")/freezer.state" 2>/dev/null)" = FROZEN ]; }
node_thaw() {
  local f="/sys/fs/cgroup/freezer/$(rns_cgroup "$1")/freezer.state"
  [ -f "$f" ] && echo THAWED >"$f" || true
}

# Kills every process of the node (SIGKILL, thawed so that frozen ones die too), with a deadline.
node_kill_all() {
  local i=$1 deadline p
  deadline=$(( $(date +%s) + 30 ))
  while [ -n "$(node_procs "$i")" ]; do
    for p in $(node_procs "$i"); do kill -KILL "$p" 2>/dev/null || true; done
    node_thaw "$i"
    [ "$(date +%s)" -lt "$deadline" ] || { say "warning: processes of $(rns_name "$i") survive SIGKILL: $(node_procs "$i" | tr '\n' ' ')"; return 1; }
    sleep 0.2
  done
  local part; for part in kube-proxy kubelet containerd; do rm -f "$PIDS/$(rns_name "$i").$part.pid"; done
}

# The machine's memory: resident memory of its agents (containerd, kubelet, kube-proxy, shims)
# and what its pods' cgroups are charged, in MiB.
node_memory() {
  local i=$1 p rss=0 kb pods=0 f
  for p in $(cat "/sys/fs/cgroup/freezer/$(rns_cgroup "$i")/agents/cgroup.procs" 2>/dev/null); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    rss=$((rss + ${kb:-0}))
  done
  f="/sys/fs/cgroup/memory/$(rns_cgroup "$i")/kubepods/memory.usage_in_bytes"
  [ -f "$f" ] && pods=$(( $(cat "$f") / 1024 / 1024 ))
  echo "$(rns_name "$i"): agents $((rss / 1024)) MiB RSS (containerd, kubelet, kube-proxy, shims), pods $pods MiB (cgroup)"
}

# --- configuration -------------------------------------------------------------------------------

# A kubeconfig for a node's process: the API server through the forwarder on the host bridge
# (127.0.0.1 is the node's own loopback), checked against the certificate's name `kubernetes`.
rns_kubeconfig() { # FILE USER
  write_kubeconfig "$1" "$2"
  sed -i "s#server: https://127.0.0.1:$APISERVER_PORT#server: https://$(rn_gateway):$APISERVER_PORT\n    tls-server-name: kubernetes#" "$1"
}

rns_write_configs() {
  local i=$1 d run gw ip cidr; d=$(rns_dir "$i"); run=$(rns_run "$i")
  gw=$(rns_pod_gw "$i"); ip=$(rns_node_ip "$i"); cidr=$(rns_pod_cidr "$i")
  mkdir -p "$d/cni/net.d" "$d/cni/ipam" "$d/containerd" "$d/kubelet/pki" "$d/pod-logs" "$run"
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd"
state = "$run/state"
oom_score = 0
[grpc]
  address = "$run/containerd.sock"
[ttrpc]
  address = "$run/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_selinux = false
  # the node's own loopback (this runs in its network namespace)
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # pod network namespaces under this node's state, so that removing the node finds them all
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
EOF
  # Pods reach the other nodes' pods, the Service range and the machines' network (the host's
  # CoreDNS) through their node, nothing else: no default route.
  cat >"$d/cni/net.d/10-articlesite.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "articlesite-$(rns_name "$i")",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$d/cni/ipam",
        "ranges": [[{"subnet": "$cidr", "gateway": "$gw"}]],
        "routes": [
          {"dst": "$REAL_NODES_POD_CIDR", "gw": "$gw"},
          {"dst": "$SERVICE_CIDR", "gw": "$gw"},
          {"dst": "$REAL_NODES_NET", "gw": "$gw"}
        ]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
# Its own cgroup tree: a kubelet removes the pod cgroups it does not know, so several kubelets
# must never share one (and node-fault.sh freezes this tree).
cgroupRoot: /$(rns_cgroup "$i")
# Likewise its own pod logs: a kubelet removes the log directories of pods it does not know.
podLogsDir: $d/pod-logs
containerRuntimeEndpoint: unix://$run/containerd.sock
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
tlsCertFile: $PKI/$(rns_name "$i")-serving.crt
tlsPrivateKeyFile: $PKI/$(rns_name "$i")-serving.key
registerWithTaints:
- {key: articlesite.io/real-node, value: "true", effect: NoSchedule}
nodeLeaseDurationSeconds: $RNS_LEASE_SECONDS
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Every node reports the whole machine; evictions only when it is nearly full.
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%"}
runtimeRequestTimeout: 10m
oomScoreAdj: 0
serializeImagePulls: false
failSwapOn: false
resolvConf: ""
clusterDNS: [$(rn_gateway)]
clusterDomain: cluster.local
maxPods: 30
podPidsLimit: 1024
EOF
  cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $d/kube-proxy.kubeconfig}
clusterCIDR: $REAL_NODES_POD_CIDR
bindAddress: $ip
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: true}
nodePortAddresses: ["$ip/32"]
EOF
  [ -f "$PKI/$(rns_name "$i").crt" ] || sign "$(rns_name "$i")" "/O=system:nodes/CN=system:node:$(rns_name "$i")"
  [ -f "$PKI/$(rns_name "$i")-serving.crt" ] || sign "$(rns_name "$i")-serving" "/CN=$(rns_name "$i")" \
    "DNS:$(rns_name "$i"),IP:$ip,IP:127.0.0.1"
  rns_kubeconfig "$d/kubelet.kubeconfig" "$(rns_name "$i")"
  rns_kubeconfig "$d/kube-proxy.kubeconfig" kube-proxy
}

# The host's parts: CoreDNS on the bridge address, and a kube-proxy of the host (the machine the
# tests and the demo run on, a client of the site) so that ClusterIPs work from here too.
rns_write_host_configs() {
  local gw; gw=$(rn_gateway)
  mkdir -p "$RN_DIR" "$RN_RUN"
  cat >"$RN_DIR/Corefile" <<EOF
cluster.local:53 {
  bind $gw
  errors
  ready 127.0.0.1:$COREDNS_READY_PORT
  cache 5
  kubernetes cluster.local {
    kubeconfig $RN_DIR/coredns.kubeconfig articlesite-local
    pods disabled
    ttl 5
  }
}
EOF
  cat >"$RN_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $RN_DIR/kube-proxy.kubeconfig}
clusterCIDR: $REAL_NODES_POD_CIDR
bindAddress: $gw
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: true}
nodePortAddresses: ["$gw/32"]
EOF
  [ -f "$PKI/kube-proxy.crt" ] || sign kube-proxy "/CN=system:kube-proxy"
  write_kubeconfig "$RN_DIR/kube-proxy.kubeconfig" kube-proxy
  [ -f "$PKI/coredns.crt" ] || sign coredns "/CN=$COREDNS_USER"
  write_kubeconfig "$RN_DIR/coredns.kubeconfig" coredns
}

# --- network and cgroups -------------------------------------------------------------------------

rns_network_host() {
  local gw prefix; gw=$(rn_gateway); prefix=${REAL_NODES_NET#*/}
  if ! ip link show "$RNS_IF" >/dev/null 2>&1; then
    ip link add "$RNS_IF" type bridge
    ip addr add "$gw/$prefix" dev "$RNS_IF"
    ip link set "$RNS_IF" up
  fi
  if [ -n "$(ip route show exact "$SERVICE_CIDR" type blackhole)" ]; then
    ip route del blackhole "$SERVICE_CIDR"
  fi
  ip route replace "$SERVICE_CIDR" dev "$RNS_IF"
  # The machines talk to each other over the bridge only; nothing that comes in from it or from
  # a pod subnet is ever forwarded to another interface of this machine.
  iptables -w -N "$RNS_CHAIN" 2>/dev/null || iptables -w -F "$RNS_CHAIN"
  iptables -w -A "$RNS_CHAIN" -i "$RNS_IF" -o "$RNS_IF" -j ACCEPT
  iptables -w -A "$RNS_CHAIN" -i "$RNS_IF" -j DROP
  iptables -w -A "$RNS_CHAIN" -s "$REAL_NODES_POD_CIDR" -j DROP
  iptables -w -C FORWARD -j "$RNS_CHAIN" 2>/dev/null || iptables -w -I FORWARD 1 -j "$RNS_CHAIN"
}

rns_network_node() {
  local i=$1 n ns ip j; n=$(rns_count); ns=$(rns_netns "$i"); ip=$(rns_node_ip "$i")
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "${RNS_IF}h$i" >/dev/null 2>&1; then
    ip link add "${RNS_IF}h$i" type veth peer name "${RNS_IF}n$i"
    ip link set "${RNS_IF}n$i" netns "$ns"
    ip -n "$ns" link set "${RNS_IF}n$i" name eth0
    ip -n "$ns" addr add "$ip/${REAL_NODES_NET#*/}" dev eth0
  fi
  ip link set "${RNS_IF}h$i" master "$RNS_IF" up
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  # kindnet-style: every other node's pod subnet via that node; no default route.
  for j in $(seq 1 "$n"); do
    [ "$j" = "$i" ] && continue
    ip -n "$ns" route replace "$(rns_pod_cidr "$j")" via "$(rns_node_ip "$j")" dev eth0
  done
  ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1 >/dev/null
  ip route replace "$(rns_pod_cidr "$i")" via "$ip" dev "$RNS_IF"
}

# The node's cgroup in every v1 hierarchy (the kubelet's cgroupRoot), cpuset initialised from
# the root (else ENOSPC), and agents/ in the freezer for its containerd, kubelet and kube-proxy.
rns_cgroups() {
  local i=$1 h cg; cg=$(rns_cgroup "$i")
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ "$h" = /sys/fs/cgroup/unified ] && continue
    mkdir -p "$h/$cg"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/$cg/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/$cg/cpuset.mems"
    fi
  done
  mkdir -p "/sys/fs/cgroup/freezer/$cg/agents"
}

rns_remove_cgroups() {
  local i=$1 h cg; cg=$(rns_cgroup "$i")
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$cg" ] || continue
    find "$h$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || say "warning: could not remove cgroup $h$cg"
  done
}

# --- up and down ---------------------------------------------------------------------------------

rns_node_ready() {
  [ "$(kubectl get node "$(rns_name "$1")" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# Boots node i (its network and cgroups already made): containerd, then the kubelet and kube-proxy.
node_boot() {
  local i=$1
  node_start "$i" containerd
  local deadline=$(( $(date +%s) + 60 ))
  until ctr_node "$i" version >/dev/null 2>&1; do
    [ -n "$(node_pid "$i" containerd)" ] || { tail -n 20 "$LOGS/$(rns_name "$i").containerd.log" >&2; die "containerd of $(rns_name "$i") died"; }
    [ "$(date +%s)" -lt "$deadline" ] || die "containerd of $(rns_name "$i") did not answer within 60 s"
    sleep 0.2
  done
  node_start "$i" kubelet
  node_start "$i" kube-proxy
}

real_nodes_up() {
  local n=$1 i
  REAL_NODE=1 "$ROOT/hack/deps.sh"
  "$here/build.sh" kubelet kube-proxy coredns >/dev/null
  if ip link show "$RNS_IF" >/dev/null 2>&1 && [ ! -f "$RN_DIR/sysctls.saved" ]; then
    die "the bridge $RNS_IF exists but belongs to no real nodes of $CLUSTER_DIR"
  fi
  if ip link show asnode0 >/dev/null 2>&1 || [ -d "$CLUSTER_DIR/real-node" ]; then
    die "a single real node (REAL_NODE=1) runs on this machine: stop its cluster first; one kind of real node at a time"
  fi
  [ -f "$RN_DIR/count" ] && [ "$(cat "$RN_DIR/count")" != "$n" ] && die "this cluster runs $(cat "$RN_DIR/count") real nodes; make cluster-down first"
  mkdir -p "$RN_DIR" "$RN_RUN"
  echo "$n" >"$RN_DIR/count"
  rn_save_sysctls
  rns_write_host_configs
  rns_network_host
  [ -d /var/log/pods ] || [ -f "$RN_DIR/varlog.created" ] || { mkdir -p /var/log/pods && touch "$RN_DIR/varlog.created"; }
  [ -d /var/log/containers ] || [ -f "$RN_DIR/varlogc.created" ] || { mkdir -p /var/log/containers && touch "$RN_DIR/varlogc.created"; }
  [ -d /run/netns ] || [ -f "$RN_DIR/netns.created" ] || { mkdir -p /run/netns && touch "$RN_DIR/netns.created"; }
  # `ip netns add` turns /run/netns into a (shared) mount point of itself the first time:
  # undone on the way down, or the directory cannot be removed.
  mountpoint -q /run/netns || [ -f "$RN_DIR/netns.mounted" ] || touch "$RN_DIR/netns.mounted"
  # The kubelet's device-plugin directory is fixed (/var/lib/kubelet/device-plugins, whatever
  # --root-dir says); remove it on the way down if a kubelet of ours made it.
  [ -d /var/lib/kubelet ] || [ -f "$RN_DIR/varlib.created" ] || touch "$RN_DIR/varlib.created"

  # The API server advertises the bridge address, and the controller-manager and kwok run with
  # the node-monitor settings above: restart them when they were started otherwise.
  local c pid want
  for c in kube-apiserver kube-controller-manager kwok; do
    pid=$(component_pid "$c")
    want=$(cmd_"$c" | tr ' ' '\n' | grep -E -- '^--(advertise-address|node-monitor-grace-period|node-lease-duration-seconds)=')
    if [ -n "$pid" ] && ! tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "$want"; then
      say "restarting $c for the real nodes ($want)"
      stop_component "$c"
      start_component "$c"
      [ "$c" = kube-apiserver ] && wait_until "kube-apiserver /readyz" 90 kube-apiserver apiserver_ready
    fi
  done
  start_component apiserver-proxy
  rn_dns_rbac
  start_component coredns
  for i in $(seq 1 "$n"); do
    rns_write_configs "$i"
    rns_cgroups "$i"
    rns_network_node "$i"
    node_boot "$i"
  done
  "$ROOT/hack/images.sh" pause >/dev/null
  start_component kube-proxy
  for i in $(seq 1 "$n"); do
    local deadline=$(( $(date +%s) + 120 ))
    until rns_node_ready "$i" 2>/dev/null; do
      if [ "$(date +%s)" -ge "$deadline" ] || [ -z "$(node_pid "$i" kubelet)" ]; then
        tail -n 25 "$LOGS/$(rns_name "$i").kubelet.log" >&2
        die "the real node $(rns_name "$i") did not become Ready"
      fi
      sleep 0.5
    done
  done
  check_alive kube-proxy
  wait_until "CoreDNS ready" 60 coredns curl -fsS "http://127.0.0.1:$COREDNS_READY_PORT/ready"
  say "$n real nodes are Ready: $(for i in $(seq 1 "$n"); do printf '%s (%s, %s, pods %s) ' "$(rns_name "$i")" "$(rns_zone "$i")" "$(rns_node_ip "$i")" "$(rns_pod_cidr "$i")"; done)on bridge $RNS_IF; DNS cluster.local at $(rn_gateway):53"
}

real_nodes_down() {
  [ -d "$RN_DIR" ] || [ -d "$RN_RUN" ] || return 0
  local n i ns; n=$(rns_count)
  for i in $(seq 1 "$n"); do
    node_thaw "$i"
    ip link set "${RNS_IF}h$i" up 2>/dev/null || true
  done
  for i in $(seq 1 "$n"); do
    node_stop "$i" kube-proxy
    node_stop "$i" kubelet
    if [ -n "$(node_pid "$i" containerd)" ]; then
      for c in $(ctr_node "$i" containers ls -q 2>/dev/null); do ctr_node "$i" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
      for c in $(ctr_node "$i" containers ls -q 2>/dev/null); do
        ctr_node "$i" tasks delete -f "$c" >/dev/null 2>&1 || true
        ctr_node "$i" containers delete "$c" >/dev/null 2>&1 || true
      done
    fi
    node_stop "$i" containerd
    # whatever is left of the machine: shims, containers
    node_kill_all "$i" || true
  done
  stop_component kube-proxy
  stop_component apiserver-proxy
  stop_component coredns
  rn_unmount_all
  for i in $(seq 1 "$n"); do
    ns=$(rns_netns "$i")
    if [ -e "/run/netns/$ns" ]; then ip netns del "$ns" || say "warning: could not remove the network namespace $ns"; fi
    ip link del "${RNS_IF}h$i" 2>/dev/null || true
  done
  "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  rn_remove_rules
  local port
  for port in $(ip -o link show master "$RNS_IF" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$port" 2>/dev/null || true
  done
  if ip link show "$RNS_IF" >/dev/null 2>&1; then ip link del "$RNS_IF"; fi
  for i in $(seq 1 "$n"); do rns_remove_cgroups "$i"; done
  if [ -f "$RN_DIR/varlog.created" ]; then rm -rf /var/log/pods; fi
  if [ -f "$RN_DIR/varlogc.created" ]; then rm -rf /var/log/containers; fi
  if [ -f "$RN_DIR/varlib.created" ]; then rm -rf /var/lib/kubelet; fi
  if [ -f "$RN_DIR/netns.mounted" ] && mountpoint -q /run/netns && [ -z "$(ls -A /run/netns)" ]; then
    umount /run/netns || say "warning: could not unmount /run/netns"
  fi
  if [ -f "$RN_DIR/netns.created" ]; then rmdir /run/netns 2>/dev/null || true; fi
  rn_restore_sysctls
  rm -rf "$RN_RUN" "$RN_DIR"
}
