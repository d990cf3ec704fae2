#!/usr/bin/env bash
# make cluster-up: builds (or reuses) the pinned binaries and starts a local control plane
# with six simulated nodes, all on 127.0.0.1. Idempotent: a healthy running cluster is left
# as it is. See README.md, "Local cluster".
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
. "$here/pki.sh"
. "$here/components.sh"

start=$(date +%s)
ensure_commands openssl:openssl ss:iproute2 ip:iproute2 curl:curl envsubst:gettext-base
"$here/build.sh" >/dev/null

kubectl() { "$K8S_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" "$@"; }

mkdir -p "$CLUSTER_DIR" "$LOGS" "$PIDS"
cat >"$CLUSTER_DIR/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT ETCD_PEER_PORT=$ETCD_PEER_PORT APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT SCHEDULER_PORT=$SCHEDULER_PORT KWOK_PORT=$KWOK_PORT
METRICS_SERVER_PORT=$METRICS_SERVER_PORT S3_PORT=$S3_PORT
POD_CIDR=$POD_CIDR SERVICE_CIDR=$SERVICE_CIDR
EOF
make_pki
make_aggregation_pki
write_kubeconfig "$KUBECONFIG_FILE" admin
for c in kube-controller-manager kube-scheduler kwok metrics-server; do
  write_kubeconfig "$CLUSTER_DIR/$c.kubeconfig" "$c"
done

# Blackhole routes first, before anything can hand out a fabricated address.
# (With a real node the Service range is routed to its bridge instead: see realnode.sh.)
for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
  [ -n "$(ip route show exact "$cidr")" ] || ip route add blackhole "$cidr" \
    || die "cannot add the blackhole route for $cidr (needs root / CAP_NET_ADMIN)"
done

# wait_until DESCRIPTION SECONDS COMPONENT COMMAND...: polls COMMAND until it succeeds;
# fails with COMPONENT's log tail when it dies or the deadline passes.
wait_until() {
  local what=$1 secs=$2 comp=$3; shift 3
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    check_alive "$comp"
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "error: timed out after ${secs}s waiting for $what. Last lines of $LOGS/$comp.log:"
      tail -n 25 "$LOGS/$comp.log" >&2
      exit 1
    fi
    sleep 0.2
  done
}

apiserver_ready() {
  curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -qx ok
}

start_component etcd
wait_until "etcd /health" 30 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

start_component kube-apiserver
wait_until "kube-apiserver /readyz" 90 kube-apiserver apiserver_ready

start_component kube-controller-manager
start_component kube-scheduler
start_component kwok

# The default StorageClass whose claims kwok's volume stages provision and bind.
kubectl apply --server-side --field-manager=articlesite-cluster-up -f "$here/storageclass.yaml" >/dev/null

# Six simulated nodes, two per zone. kwok manages nodes carrying its annotation.
for zone in a b c; do
  for i in 1 2; do
    NODE="kwok-zone-$zone-$i" ZONE="zone-$zone" \
      envsubst <"$here/node.yaml.in" |
      kubectl apply --server-side --field-manager=articlesite-cluster-up -f - >/dev/null
  done
done

nodes_ready() {
  [ "$(kubectl get nodes -l type=kwok \
      -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
      grep -c True)" -eq 6 ]
}
wait_until "six Ready nodes" 60 kwok nodes_ready

# The resource metrics API, waited for until the aggregator calls it Available (~10 s): while an
# APIService is unavailable, discovery is incomplete and Helm refuses to install anything.
METRICS_SERVER_PORT=$METRICS_SERVER_PORT CA_BUNDLE=$(base64 -w0 <"$PKI/ca.crt") \
  envsubst '${METRICS_SERVER_PORT} ${CA_BUNDLE}' <"$here/metrics-server.yaml" |
  kubectl apply --server-side --field-manager=articlesite-cluster-up -f - >/dev/null
start_component metrics-server
wait_until "metrics-server /livez" 30 metrics-server \
  curl -fsS --cacert "$PKI/ca.crt" "https://127.0.0.1:$METRICS_SERVER_PORT/livez"
metrics_api_available() {
  [ "$(kubectl get apiservice v1beta1.metrics.k8s.io \
      -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ]
}
wait_until "the APIService v1beta1.metrics.k8s.io Available" 60 metrics-server metrics_api_available
for c in kube-controller-manager kube-scheduler; do check_alive "$c"; done
# Pods need the `default` ServiceAccount, which the controller-manager creates.
wait_until "the default ServiceAccount" 60 kube-controller-manager kubectl -n default get serviceaccount default

if [ -n "$RNS_MULTI" ]; then
  real_nodes_up "$(rns_count)"
elif [ "${REAL_NODE:-0}" = 1 ]; then
  real_node_up
fi
# The S3 server of the backup tests (s3.sh), once the bridge exists: on the address where the
# real node(s)' pods reach this machine (the bridge's gateway, or the host on the machines'
# network), and only there.
if [ -n "$RNS_MULTI" ] || [ "${REAL_NODE:-0}" = 1 ]; then
  S3_ADDRESS=$(rn_gateway) "$here/s3.sh" start
fi

say "local cluster is up ($(( $(date +%s) - start ))s): kube $KUBERNETES_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, metrics-server $METRICS_SERVER_VERSION, 6 nodes in 3 zones"
say "logs: $LOGS/"
echo "export KUBECONFIG=$KUBECONFIG_FILE PATH=$K8S_BIN:$HELM_BIN:\$PATH"
