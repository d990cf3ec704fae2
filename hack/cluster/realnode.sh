# The optional real node of the local cluster (REAL_NODE=1): containerd + runc, a kubelet and
# kube-proxy built from the pinned Kubernetes module, CNI bridge networking that never leaves
# this machine. Sourced by components.sh (so by up.sh, down.sh, component.sh) and by
# hack/images.sh; see docs/real-node.md for the design.
# shellcheck shell=bash

# REAL_NODES=1 is the single real node; REAL_NODES=N (N >= 2) several (realnodes.sh, sourced
# at the end, which renames the parts below), remembered in .cluster/real-nodes/count.
[ "${REAL_NODES:-}" = 1 ] && REAL_NODE=1
RNS_MULTI=""
if [ "${REAL_NODES:-1}" -gt 1 ] 2>/dev/null || [ -f "$CLUSTER_DIR/real-nodes/count" ]; then RNS_MULTI=1; fi
REAL_NODE_NAME="${REAL_NODE_NAME:-real-node}"
# The real node's pods get addresses here. It must not overlap POD_CIDR or SERVICE_CIDR
# (kwok hands out POD_CIDR to simulated pods, and that range stays blackholed).
REAL_NODE_POD_CIDR="${REAL_NODE_POD_CIDR:-10.88.0.0/24}"
REAL_NODE_BRIDGE="${REAL_NODE_BRIDGE:-asnode0}"
KUBELET_PORT="${KUBELET_PORT:-10250}"
KUBELET_HEALTHZ_PORT="${KUBELET_HEALTHZ_PORT:-10248}"
KUBE_PROXY_METRICS_PORT="${KUBE_PROXY_METRICS_PORT:-10249}"
KUBE_PROXY_HEALTHZ_PORT="${KUBE_PROXY_HEALTHZ_PORT:-10256}"
# CoreDNS answers on the bridge address, port 53 (where pods look); its readiness on 127.0.0.1.
COREDNS_READY_PORT="${COREDNS_READY_PORT:-18181}"
COREDNS_BIN="$CACHE_DIR/bin/coredns-$COREDNS_VERSION"
# The identity of the node's DNS server towards the API server, and its ClusterRole.
COREDNS_USER="system:articlesite:real-node-dns"
# Images made by `make images`, imported under these names; the CRI sandbox uses the pause one.
IMAGE_PREFIX="localhost/articlesite"
PAUSE_IMAGE="$IMAGE_PREFIX/pause:3.10"

RN_DIR="$CLUSTER_DIR/real-node"
# containerd's state holds sockets and tmpfs mounts: a short path under /run, one per cluster.
RN_RUN="/run/articlesite-$(printf '%s' "$CLUSTER_DIR" | sha256sum | cut -c1-8)"
CONTAINERD_SOCK="$RN_RUN/containerd.sock"
RN_CHAIN="ARTICLESITE-RN"
# Host sysctls that the kubelet (kernel tunables) and the bridge (forwarding) change.
RN_SYSCTLS="net.ipv4.ip_forward kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.bridge.bridge-nf-call-iptables"

# 10.88.0.0/24 -> 10.88.0.1: the bridge's address, the pods' gateway and the node's IP.
rn_gateway() {
  local base=${REAL_NODE_POD_CIDR%/*}
  echo "${base%.*}.$(( ${base##*.} + 1 ))"
}

cmd_containerd() {
  echo containerd --config "$RN_DIR/containerd.toml"
}

# No zone label: topology spread counts a tainted node's domain too (nodeTaintsPolicy defaults
# to Ignore), so a zone of its own would hold DoNotSchedule zone spreading of the kwok pods.
cmd_kubelet() {
  echo "$K8S_BIN/kubelet" \
    --config="$RN_DIR/kubelet.yaml" \
    --kubeconfig="$RN_DIR/kubelet.kubeconfig" \
    --root-dir="$RN_DIR/kubelet" \
    --cert-dir="$RN_DIR/kubelet/pki" \
    --hostname-override="$REAL_NODE_NAME" \
    --node-ip="$(rn_gateway)" \
    --node-labels="type=real" \
    --v=1
}

cmd_kube-proxy() {
  echo "$K8S_BIN/kube-proxy" --config="$RN_DIR/kube-proxy.yaml" --hostname-override="$REAL_NODE_NAME" --v=1
}

# The API server listens on 127.0.0.1 only (binding 0.0.0.0 would expose it on every interface).
# Pods reach it through the `kubernetes` Service, whose endpoint is the bridge address
# (--advertise-address, see components.sh): this forwarder listens there and only there.
# (-lf names its log, which also puts the component's name on its command line for component_pid.)
cmd_apiserver-proxy() {
  echo socat -lf "$LOGS/apiserver-proxy.log" \
    "TCP-LISTEN:$APISERVER_PORT,bind=$(rn_gateway),reuseaddr,fork" "TCP:127.0.0.1:$APISERVER_PORT"
}

# Cluster DNS for the real node's pods: `cluster.local` from the API server (Services and
# their EndpointSlices), nothing else. No forward plugin (it is not even compiled in): any
# other name gets REFUSED, so no query ever leaves this machine.
cmd_coredns() {
  echo "$COREDNS_BIN/coredns" -conf "$RN_DIR/Corefile"
}

rn_ports_of() {
  case $1 in
    kubelet) echo "$KUBELET_PORT $KUBELET_HEALTHZ_PORT" ;;
    kube-proxy) echo "$KUBE_PROXY_METRICS_PORT $KUBE_PROXY_HEALTHZ_PORT" ;;
  esac
}

rn_write_configs() {
  local gw; gw=$(rn_gateway)
  mkdir -p "$RN_DIR/cni/net.d" "$RN_DIR/cni/ipam" "$RN_DIR/containerd" "$RN_DIR/kubelet/pki" "$RN_RUN"
  cat >"$RN_DIR/containerd.toml" <<EOF
version = 2
root = "$RN_DIR/containerd"
state = "$RN_RUN/state"
# Root here lacks CAP_SYS_RESOURCE: never ask runc for a lower oom_score_adj than ours.
oom_score = 0
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$RN_RUN/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RN_DIR/cni/net.d"
EOF
  # No default route in the pods: they reach their own subnet and the Service range, nothing else.
  cat >"$RN_DIR/cni/net.d/10-articlesite.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "articlesite-real-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$REAL_NODE_BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RN_DIR/cni/ipam",
        "ranges": [[{"subnet": "$REAL_NODE_POD_CIDR", "gateway": "$gw"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$gw"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  cat >"$RN_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This VM has a hybrid cgroup layout, which counts as v1; PID 1 is not systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $gw
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
registerWithTaints:
- {key: articlesite.io/real-node, value: "true", effect: NoSchedule}
# containerd 1.6 cannot pin the sandbox image: never garbage-collect images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%"}
runtimeRequestTimeout: 10m
oomScoreAdj: 0
serializeImagePulls: false
failSwapOn: false
# Pods get the node's CoreDNS (on the bridge address) and nothing of the host's resolv.conf.
resolvConf: ""
clusterDNS: [$gw]
clusterDomain: cluster.local
maxPods: 30
podPidsLimit: 1024
EOF
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
clusterCIDR: $REAL_NODE_POD_CIDR
bindAddress: 127.0.0.1
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
# Leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables:
  localhostNodePorts: false
  # Every Service connection is masqueraded to the bridge address, so replies come back
  # through the host whatever br_netfilter does.
  masqueradeAll: true
nodePortAddresses: ["$gw/32"]
EOF
}

rn_pki() {
  [ -f "$PKI/kubelet.crt" ] || sign kubelet "/O=system:nodes/CN=system:node:$REAL_NODE_NAME"
  [ -f "$PKI/kube-proxy.crt" ] || sign kube-proxy "/CN=system:kube-proxy"
  [ -f "$PKI/kubelet-serving.crt" ] || sign kubelet-serving "/CN=$REAL_NODE_NAME" \
    "DNS:$REAL_NODE_NAME,IP:$(rn_gateway),IP:127.0.0.1"
  write_kubeconfig "$RN_DIR/kubelet.kubeconfig" kubelet
  write_kubeconfig "$RN_DIR/kube-proxy.kubeconfig" kube-proxy
  [ -f "$PKI/coredns.crt" ] || sign coredns "/CN=$COREDNS_USER"
  write_kubeconfig "$RN_DIR/coredns.kubeconfig" coredns
}

# Least privilege for the DNS server: read Services, EndpointSlices and Namespaces, nothing more.
rn_dns_rbac() {
  kubectl apply --server-side --field-manager=articlesite-cluster-up -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "articlesite:real-node-dns"}
rules:
- {apiGroups: [""], resources: [services, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "articlesite:real-node-dns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "articlesite:real-node-dns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "$COREDNS_USER"}
EOF
}

# The bridge exists before the kubelet starts, so that its address is the node IP.
rn_network_up() {
  local gw prefix; gw=$(rn_gateway); prefix=${REAL_NODE_POD_CIDR#*/}
  if ! ip link show "$REAL_NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$REAL_NODE_BRIDGE" type bridge
    ip addr add "$gw/$prefix" dev "$REAL_NODE_BRIDGE"
    ip link set "$REAL_NODE_BRIDGE" up
  fi
  # The Service range goes to the bridge instead of the blackhole: a host-side connect to a
  # ClusterIP must pass route lookup so that kube-proxy's DNAT can act; without a rule the
  # packet ends on the bridge, inside this machine.
  if [ -n "$(ip route show exact "$SERVICE_CIDR" type blackhole)" ]; then
    ip route del blackhole "$SERVICE_CIDR"
  fi
  ip route replace "$SERVICE_CIDR" dev "$REAL_NODE_BRIDGE"
  # Defence in depth: nothing from the pod subnet or to it is ever forwarded to another
  # interface, so no missing rule sends a packet out of this machine.
  iptables -w -N "$RN_CHAIN" 2>/dev/null || iptables -w -F "$RN_CHAIN"
  iptables -w -A "$RN_CHAIN" -s "$REAL_NODE_POD_CIDR" ! -o "$REAL_NODE_BRIDGE" -j DROP
  iptables -w -A "$RN_CHAIN" -i "$REAL_NODE_BRIDGE" ! -o "$REAL_NODE_BRIDGE" -j DROP
  iptables -w -C FORWARD -j "$RN_CHAIN" 2>/dev/null || iptables -w -I FORWARD 1 -j "$RN_CHAIN"
}

rn_save_sysctls() {
  [ -f "$RN_DIR/sysctls.saved" ] && return 0
  local s
  for s in $RN_SYSCTLS; do
    [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(sysctl -n "$s")"
  done >"$RN_DIR/sysctls.saved"
}

rn_restore_sysctls() {
  [ -f "$RN_DIR/sysctls.saved" ] || return 0
  local line
  while IFS= read -r line; do
    sysctl -q -w "$line" >/dev/null || say "warning: could not restore $line"
  done <"$RN_DIR/sysctls.saved"
  rm -f "$RN_DIR/sysctls.saved"
}

ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

real_node_up() {
  REAL_NODE=1 "$ROOT/hack/deps.sh"
  "$here/build.sh" kubelet kube-proxy coredns >/dev/null
  if ip link show "$REAL_NODE_BRIDGE" >/dev/null 2>&1 && [ ! -f "$RN_DIR/sysctls.saved" ]; then
    die "the bridge $REAL_NODE_BRIDGE exists but belongs to no real node of $CLUSTER_DIR: another cluster's real node? Only one real node per machine; stop that cluster first (make cluster-down with its CLUSTER_DIR)."
  fi
  mkdir -p "$RN_DIR"
  rn_save_sysctls
  rn_pki
  rn_write_configs
  rn_network_up
  # The kubelet writes container logs there (a fixed path); remove it on the way down if we made it.
  [ -d /var/log/pods ] || [ -f "$RN_DIR/varlog.created" ] || { mkdir -p /var/log/pods && touch "$RN_DIR/varlog.created"; }
  # Likewise the directory of named network namespaces that the CRI uses.
  [ -d /run/netns ] || [ -f "$RN_DIR/netns.created" ] || { mkdir -p /run/netns && touch "$RN_DIR/netns.created"; }
  # The kubelet makes /var/lib/kubelet/device-plugins whatever --root-dir says: likewise.
  [ -d /var/lib/kubelet ] || [ -f "$RN_DIR/varlib.created" ] || touch "$RN_DIR/varlib.created"

  # A control plane started without REAL_NODE=1 advertises another address: restart its API server.
  local api args=""; api=$(component_pid kube-apiserver)
  [ -n "$api" ] && args=$(tr '\0' ' ' <"/proc/$api/cmdline")
  if [ -n "$api" ] && [[ $args != *"--advertise-address=$(rn_gateway)"* ]]; then
    say "restarting kube-apiserver to advertise $(rn_gateway) for the real node's pods"
    stop_component kube-apiserver
    start_component kube-apiserver
    wait_until "kube-apiserver /readyz" 90 kube-apiserver apiserver_ready
  fi
  start_component apiserver-proxy
  rn_dns_rbac
  start_component coredns
  start_component containerd
  wait_until "containerd" 60 containerd ctr_ version
  "$ROOT/hack/images.sh" pause >/dev/null
  for c in kubelet kube-proxy; do
    local p
    for p in $(rn_ports_of "$c"); do
      port_in_use "$p" && [ -z "$(component_pid "$c")" ] && die "port $p, needed by $c, is in use"
    done
    start_component "$c"
  done
  rn_node_ready() {
    [ "$(kubectl get node "$REAL_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
  }
  wait_until "the real node $REAL_NODE_NAME to be Ready" 120 kubelet rn_node_ready
  check_alive kube-proxy
  # Ready once the kubernetes plugin has synced its first lists from the API server.
  wait_until "CoreDNS ready" 60 coredns curl -fsS "http://127.0.0.1:$COREDNS_READY_PORT/ready"
  say "real node $REAL_NODE_NAME is Ready: pods on $REAL_NODE_BRIDGE $REAL_NODE_POD_CIDR, Services $SERVICE_CIDR via kube-proxy, DNS cluster.local at $(rn_gateway):53"
}

# Removes everything the real node made, in reverse: containers (killed through containerd),
# processes, mounts, network namespaces, veths, rules, routes, cgroups, sysctls, directories.
real_node_down() {
  [ -d "$RN_DIR" ] || [ -d "$RN_RUN" ] || return 0
  stop_component kube-proxy
  stop_component kubelet
  if [ -n "$(component_pid containerd)" ]; then
    rn_remove_pods
  fi
  stop_component containerd
  stop_component apiserver-proxy
  stop_component coredns
  rn_kill_shims
  rn_unmount_all
  rn_remove_netns
  "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  rn_remove_rules
  # A pod's network namespace can outlive its processes for minutes (orphaned TCP sockets of a
  # killed pod keep it until they time out), and with it its veth: delete the bridge's ports.
  local port
  for port in $(ip -o link show master "$REAL_NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$port" 2>/dev/null || true
  done
  if ip link show "$REAL_NODE_BRIDGE" >/dev/null 2>&1; then ip link del "$REAL_NODE_BRIDGE"; fi
  if [ -n "$(ip route show exact "$SERVICE_CIDR" dev "$REAL_NODE_BRIDGE" 2>/dev/null)" ]; then
    ip route del "$SERVICE_CIDR" dev "$REAL_NODE_BRIDGE" || true
  fi
  rn_remove_cgroups
  if [ -f "$RN_DIR/varlog.created" ]; then rm -rf /var/log/pods /var/log/containers; fi
  if [ -f "$RN_DIR/netns.created" ]; then rmdir /run/netns 2>/dev/null || true; fi
  if [ -f "$RN_DIR/varlib.created" ]; then rm -rf /var/lib/kubelet; fi
  rn_restore_sysctls
  rm -rf "$RN_RUN" "$RN_DIR"
}

# Kills and deletes every container and pod sandbox. Their network namespaces (the CRI
# makes them under /run/netns) are recorded first and removed once no process holds them;
# that also destroys the veth pairs. Addresses live in our own IPAM directory.
rn_remove_pods() {
  local c
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers info "$c" 2>/dev/null | grep -o '"/var/run/netns/cni-[0-9a-f-]*"\|"/run/netns/cni-[0-9a-f-]*"' \
      | tr -d '"' >>"$RN_DIR/netns.list" || true
    ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
  done
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true
    ctr_ containers delete "$c" >/dev/null 2>&1 || true
  done
}

# Shims outlive containerd; ours carry our socket address on their command line.
rn_kill_shims() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
    case $cmd in
      *containerd-shim*"-address $CONTAINERD_SOCK"*) kill -KILL "${p#/proc/}" 2>/dev/null || true ;;
    esac
  done
}

rn_unmount_all() {
  local m
  # deepest first
  for m in $(awk -v a="$RN_DIR" -v b="$RN_RUN" '$5 ~ "^"a || $5 ~ "^"b {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

rn_remove_netns() {
  [ -f "$RN_DIR/netns.list" ] || return 0
  local ns
  while IFS= read -r ns; do
    [ -e "$ns" ] || continue
    umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true
    rm -f "$ns"
  done <"$RN_DIR/netns.list"
}

# rn_drop_chain IPTABLES TABLE CHAIN: removes the rules that jump to CHAIN, then CHAIN.
rn_drop_chain() {
  local ipt=$1 t=$2 c=$3 rule
  "$ipt" -w -t "$t" -S "$c" >/dev/null 2>&1 || return 0
  "$ipt" -w -t "$t" -S | { grep -E -- "-j $c( |\$)" || true; } | sed 's/^-A /-D /' | while read -r rule; do
    # shellcheck disable=SC2086 # a rule is a list of words
    eval "$ipt -w -t $t $rule" || true
  done
  "$ipt" -w -t "$t" -F "$c" 2>/dev/null || true
  "$ipt" -w -t "$t" -X "$c" 2>/dev/null || say "warning: could not remove the $ipt chain $t/$c"
}

rn_remove_rules() {
  local t c ipt
  rn_drop_chain iptables filter "$RN_CHAIN"
  # The kubelet's chains and kube-proxy's canaries (kube-proxy --cleanup removed the rest).
  for ipt in iptables ip6tables; do
    for t in mangle nat filter; do
      for c in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-PROXY-CANARY KUBE-IPTABLES-HINT; do
        rn_drop_chain "$ipt" "$t" "$c"
      done
    done
  done
}

# The kubelet's cgroups (kubepods and its QoS children), leaf first, in every v1 hierarchy.
rn_remove_cgroups() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h/kubepods" ] || continue
    find "$h/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

if [ -n "$RNS_MULTI" ]; then
  . "$here/realnodes.sh"
fi
