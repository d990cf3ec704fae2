# How each component of the local cluster is started. Sourced by up.sh and by
# component.sh (which restarts one component, for the resilience tests).
# shellcheck shell=bash

cmd_etcd() {
  echo "$ETCD_BIN/etcd" \
    --name=local \
    --data-dir="$CLUSTER_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls="" \
    --unsafe-no-fsync=true \
    --quota-backend-bytes=4294967296 \
    --log-level=warn
}

cmd_kube-apiserver() {
  echo "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    $(advertise_address) \
    --allow-privileged=true \
    --audit-policy-file="$here/audit-policy.yaml" \
    --audit-log-path="$LOGS/audit.log" \
    --audit-log-format=json \
    --audit-log-maxsize=200 \
    --audit-log-maxbackup=1 \
    --profiling=false \
    $(aggregation_flags) \
    --v=1
}

# The aggregation layer: metrics.k8s.io is served by metrics-server behind this API server,
# which proxies to it with the front-proxy client certificate and the user in headers.
aggregation_flags() {
  echo --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key"
}

# With the real node (REAL_NODE=1), the `kubernetes` Service points at its bridge address,
# where realnode.sh forwards to this API server; otherwise the API server picks its own.
advertise_address() {
  if [ "${REAL_NODE:-0}" = 1 ] || [ -d "$CLUSTER_DIR/real-node" ] || [ -n "${RNS_MULTI:-}" ]; then
    echo "--advertise-address=$(rn_gateway)"
  fi
}

# KCM_API_QPS/BURST: the client rate limit (its defaults); make bench raises it so that a
# thousand sites converge at the API server's pace, not at the controller-manager's.
cmd_kube-controller-manager() {
  echo "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$CLUSTER_DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CLUSTER_DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CLUSTER_DIR/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --root-ca-file="$PKI/ca.crt" \
    --service-account-private-key-file="$PKI/sa.key" \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --kube-api-qps="${KCM_API_QPS:-20}" \
    --kube-api-burst="${KCM_API_BURST:-30}" \
    $(node_monitor_flags) \
    $(hostpath_provisioner_flags) \
    --profiling=false \
    --v=1
}

# With several real nodes (REAL_NODES=N) nodes go NotReady 15-17 s after a fault instead of
# the default 40-60 s (see realnodes.sh and docs/real-node.md, "Node failures").
node_monitor_flags() {
  if [ -n "${RNS_MULTI:-}" ]; then echo "$RNS_MONITOR_FLAGS"; fi
}

# KCM_HOSTPATH_PROVISIONER=1 (make bench only): the controller-manager's in-tree provisioner
# for StorageClasses of `kubernetes.io/host-path` (empty directories under /tmp/hostpath_pv).
# It provisions claims concurrently, where kwok's volume stages take one claim at a time, so a
# thousand new database claims do not queue behind each other (docs/benchmarks.md).
hostpath_provisioner_flags() {
  if [ "${KCM_HOSTPATH_PROVISIONER:-0}" = 1 ]; then echo "--enable-hostpath-provisioner=true"; fi
}

cmd_kube-scheduler() {
  echo "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$CLUSTER_DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$CLUSTER_DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$CLUSTER_DIR/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$SCHEDULER_PORT" \
    --leader-elect=false \
    --profiling=false \
    --v=1
}

cmd_kwok() {
  echo "$KWOK_BIN/kwok" \
    --kubeconfig="$CLUSTER_DIR/kwok.kubeconfig" \
    --config="$KWOK_BIN/stages.yaml" \
    --config="$here/kwok-stages/simulate.yaml" \
    --config="$KWOK_BIN/metrics.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr="$POD_CIDR" \
    --node-lease-duration-seconds="${RNS_LEASE_SECONDS:-40}" \
    --node-ip=127.0.0.1 \
    --node-port="$KWOK_PORT" \
    --tls-cert-file="$PKI/kwok-serving.crt" \
    --tls-private-key-file="$PKI/kwok-serving.key" \
    --server-address="127.0.0.1:$KWOK_PORT"
}

# The resource metrics API (metrics.k8s.io) for HorizontalPodAutoscalers. It scrapes each
# node's kubelet at its InternalIP and status port: for the simulated nodes that is kwok on
# 127.0.0.1:$KWOK_PORT (kwok's --node-ip/--node-port), at the per-node path their
# `metrics.k8s.io/resource-metrics-path` annotation names (node.yaml.in); for a real node its
# kubelet. Both serve certificates of the cluster CA.
cmd_metrics-server() {
  echo "$METRICS_SERVER_BIN/metrics-server" \
    --bind-address=127.0.0.1 \
    --secure-port="$METRICS_SERVER_PORT" \
    --tls-cert-file="$PKI/metrics-server-serving.crt" \
    --tls-private-key-file="$PKI/metrics-server-serving.key" \
    --kubeconfig="$CLUSTER_DIR/metrics-server.kubeconfig" \
    --authentication-kubeconfig="$CLUSTER_DIR/metrics-server.kubeconfig" \
    --authorization-kubeconfig="$CLUSTER_DIR/metrics-server.kubeconfig" \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-use-node-status-port \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --metric-resolution=10s \
    --kubelet-request-timeout=5s \
    --profiling=false \
    --v=0
}

# The port each component listens on, to refuse a start when something else has it.
ports_of() {
  case $1 in
    etcd) echo "$ETCD_PORT $ETCD_PEER_PORT" ;;
    kube-apiserver) echo "$APISERVER_PORT" ;;
    kube-controller-manager) echo "$KCM_PORT" ;;
    kube-scheduler) echo "$SCHEDULER_PORT" ;;
    kwok) echo "$KWOK_PORT" ;;
    metrics-server) echo "$METRICS_SERVER_PORT" ;;
  esac
}

# start_component NAME: starts it detached (its own session, so make's exit does not
# stop it), logs to .cluster/logs/NAME.log, pid in .cluster/pids/NAME.pid.
start_component() {
  local name=$1 p
  [ -n "$(component_pid "$name")" ] && return 0
  for p in $(ports_of "$name"); do
    if port_in_use "$p"; then
      die "port 127.0.0.1:$p, needed by $name, is already in use: $(ss -Hltnp "sport = :$p" | head -n1). Stop that process or set the port variable in hack/cluster/lib.sh's environment."
    fi
  done
  mkdir -p "$LOGS" "$PIDS"
  # shellcheck disable=SC2046
  setsid $(cmd_"$name") >>"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$! i
  echo "$pid" >"$PIDS/$name.pid"
  # Until the forked shell execs, /proc/PID/cmdline is this script's: on a loaded machine
  # check_alive would take the slow fork for a dead component (empty log, "not running").
  for i in $(seq 1 100); do
    [ -n "$(component_pid "$name")" ] && return 0
    [ -d "/proc/$pid" ] || return 0 # it died: check_alive reports it with its log
    sleep 0.1
  done
}

# stop_component NAME: TERM, then KILL after 10 s; removes the pid file.
stop_component() {
  local name=$1 pid i
  pid=$(component_pid "$name")
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      [ -d "/proc/$pid" ] || break
      # a zombie has exited already; nothing left to wait for
      grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && break
      sleep 0.1
    done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name.pid"
}

# Fails with the tail of its log when a component is not running.
check_alive() {
  local name=$1
  if [ -z "$(component_pid "$name")" ]; then
    say "error: $name is not running. Last lines of $LOGS/$name.log:"
    tail -n 25 "$LOGS/$name.log" >&2 2>/dev/null || true
    exit 1
  fi
}

# The real node's components and addresses (REAL_NODE=1).
. "$here/realnode.sh"
