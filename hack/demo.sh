#!/usr/bin/env bash
# The demo after `make cluster-up`: installs the CRD, starts the operator, applies
# examples/articlesite.yaml, waits until the site is Ready, shows the site and everything it
# owns (with the zone of each pod), then keeps the operator in the foreground until Ctrl-C.
#
# With the real node (`make cluster-up REAL_NODE=1`, node `real-node` Ready) the site is a real
# one instead: the images are built and imported into the node, a local volume is made for
# PostgreSQL, examples/articlesite-real-node.yaml is applied, and once it is Ready the demo
# writes an article with the generated write token, fetches its HTML page, and prints the URL
# (the site Service's ClusterIP, which kube-proxy routes to the node's pods on this machine).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ -f hack/cluster/env.sh ]; then
  # shellcheck source=/dev/null
  . hack/cluster/env.sh
else
  export KUBECONFIG="${KUBECONFIG:-$root/.cluster/kubeconfig}"
  export PATH="${XDG_CACHE_HOME:-$HOME/.cache}/articlesite/bin/kubernetes-v1.36.3:$PATH"
fi
command -v kubectl >/dev/null || { echo "error: kubectl not found; run make cluster-up" >&2; exit 1; }
[ -f "$KUBECONFIG" ] || { echo "error: no kubeconfig at $KUBECONFIG; run make cluster-up" >&2; exit 1; }

NS="${DEMO_NAMESPACE:-articlesite-demo}"
METRICS_ADDR="${OPERATOR_METRICS_ADDR:-127.0.0.1:8088}"
CLUSTER_DIR="${CLUSTER_DIR:-$root/.cluster}"
LOG="$CLUSTER_DIR/logs/operator-demo.log"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

REAL_NODE_NAME=real-node
REAL_NODES_LIST="$REAL_NODE_NAME"
real_node=0
if [ "$(kubectl get node "$REAL_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; then
  real_node=1
fi
# Several real nodes (make cluster-up REAL_NODES=3): the site spreads over them, three app
# replicas, and the database's volume is a directory every node can mount.
multi_nodes="$(kubectl get nodes -l type=real -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' 2>/dev/null | grep -E '^real-node-[0-9]+$' || true)"
if [ -n "$multi_nodes" ]; then
  real_node=1
  REAL_NODE_NAME="$(echo "$multi_nodes" | head -n1)"
  REAL_NODES_LIST="$(echo "$multi_nodes" | paste -sd, -)"
fi
EXAMPLE=examples/articlesite.yaml
[ "$real_node" = 1 ] && EXAMPLE=examples/articlesite-real-node.yaml
SITE="$(sed -n 's/^  name: *//p' "$EXAMPLE" | head -n1)"
# The local volume of the real node's site: under the node's directory, so cluster-down removes it.
VOLUME_CLASS="$(sed -n 's/^ *storageClass: *//p' "$EXAMPLE" | head -n1)"
VOLUME_NAME="${VOLUME_CLASS:-none}-$NS"
VOLUME_DIR="$CLUSTER_DIR/real-node/volumes/$NS"
[ -n "$multi_nodes" ] && VOLUME_DIR="$CLUSTER_DIR/real-nodes/volumes/$NS"
POSTGRES_UID=999
# Database instances of the example (Patroni: one primary, synchronous and hot standbys).
INSTANCES="$(sed -n 's/^ *instances: *//p' "$EXAMPLE" | head -n1)"
INSTANCES="${INSTANCES:-3}"

# A StorageClass without a provisioner and one local PersistentVolume per database instance
# (volume i: directory $VOLUME_DIR-i) for the site's claims. A volume released by a deleted
# site is wiped and made again: its data belongs to credentials that are gone with that site.
real_node_volumes() {
  kubectl apply --server-side --field-manager=articlesite-demo -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $VOLUME_CLASS}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
EOF
  local i name dir phase
  for i in $(seq 0 $((INSTANCES - 1))); do
    name="$VOLUME_NAME-$i" dir="$VOLUME_DIR-$i"
    phase="$(kubectl get pv "$name" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    if [ "$phase" = Released ] || [ "$phase" = Failed ]; then
      kubectl delete pv "$name" --wait=true >/dev/null
      rm -rf "$dir"
      phase=""
    fi
    [ -n "$phase" ] && continue
    mkdir -p "$dir"
    chown "$POSTGRES_UID:$POSTGRES_UID" "$dir"
    chmod 700 "$dir"
    kubectl apply --server-side --field-manager=articlesite-demo -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $name}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $VOLUME_CLASS
  local: {path: "$dir"}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$REAL_NODES_LIST]}
EOF
  done
}

# Writes and publishes an article through the site's ClusterIP with the generated write token,
# then fetches its page: proof that the real containers serve.
real_site_serves() {
  local ip=$1 token slug deadline page
  # Dial the ClusterIP only when every pod behind it runs on the real node (kube-proxy would
  # send a simulated pod's address into the blackhole).
  local nodes
  nodes="$(kubectl get pods -n "$NS" -l "app.kubernetes.io/instance=$SITE,app.kubernetes.io/component=app" \
    -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)"
  local n
  for n in $nodes; do
    case ",$REAL_NODES_LIST," in *",$n,"*) ;; *) die "the app pods are not all on $REAL_NODES_LIST: $nodes" ;; esac
  done
  token="$(kubectl get secret -n "$NS" "$SITE-write-token" -o jsonpath='{.data.token}' | base64 -d)"
  [ -n "$token" ] || die "no write token in Secret $SITE-write-token"
  slug="hello-$(date +%s)"
  deadline=$(( $(date +%s) + 60 ))
  # kube-proxy programs the Service a moment after the pods turn Ready: retry until a deadline.
  until curl -fsS --max-time 5 -o /dev/null -X POST "http://$ip/api/v1/articles" \
      -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      --data "{\"slug\": \"$slug\", \"title\": \"Hello from a real node\", \"summary\": \"make demo\", \"body\": \"Served by **real containers** on $REAL_NODE_NAME, written through the API.\"}"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "could not create an article through http://$ip/api/v1/articles"
    sleep 1
  done
  curl -fsS --max-time 5 -o /dev/null -X POST -H "Authorization: Bearer $token" \
    "http://$ip/api/v1/articles/$slug/publish" || die "could not publish $slug"
  echo "created and published /articles/$slug through the API (write token from Secret $SITE-write-token)"
  page="$(curl -fsS --max-time 5 "http://$ip/articles/$slug")" || die "could not fetch http://$ip/articles/$slug"
  grep -q 'Hello from a real node' <<<"$page" || die "the page of $slug does not show its title"
  grep -q '<strong>real containers</strong>' <<<"$page" || die "the page of $slug does not render its Markdown"
  echo "fetched http://$ip/articles/$slug: $(wc -c <<<"$page") bytes of HTML, title and rendered Markdown in it"
  REAL_URL="http://$ip/"
  REAL_ARTICLE="http://$ip/articles/$slug"
}

if [ "$real_node" = 1 ]; then
  step "the real node $REAL_NODE_NAME is Ready: building the images and importing them into it"
  hack/images.sh >/dev/null
fi

step "building the operator"
cargo build --quiet --bin articlesite-operator
bin="$root/target/debug/articlesite-operator"

step "installing the CRD (server-side apply)"
kubectl apply --server-side --field-manager=articlesite-demo -f crds/articlesite.yaml
kubectl wait --for=condition=Established --timeout=30s crd/articlesites.articlesite.io

kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"

step "starting the operator for namespace $NS (metrics on http://$METRICS_ADDR/metrics, log: $LOG)"
mkdir -p "$(dirname "$LOG")"
"$bin" run --namespace "$NS" --metrics-addr "$METRICS_ADDR" --log-format text >"$LOG" 2>&1 &
op_pid=$!
tail_pid=""
stop() {
  trap - INT TERM EXIT
  if kill -0 "$op_pid" 2>/dev/null; then
    echo; echo "stopping the operator (SIGTERM)…"
    kill -TERM "$op_pid" 2>/dev/null || true
    wait "$op_pid" 2>/dev/null || true
  fi
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null || true
}
trap stop INT TERM EXIT
for _ in $(seq 1 60); do
  curl -fsS "http://$METRICS_ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 "$op_pid" 2>/dev/null || { echo "error: the operator exited; see $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
  sleep 0.5
done

if [ "$real_node" = 1 ]; then
  step "$INSTANCES local volumes for the database instances (StorageClass $VOLUME_CLASS, $VOLUME_DIR-*)"
  real_node_volumes
fi

step "applying $EXAMPLE"
kubectl apply --server-side --field-manager=articlesite-demo -n "$NS" -f "$EXAMPLE"
if [ -n "$multi_nodes" ]; then
  kubectl patch articlesite "$SITE" -n "$NS" --type merge -p '{"spec": {"app": {"replicas": 3}}}'
fi

step "waiting until ArticleSite $SITE is Ready"
kubectl wait --for=condition=Ready --timeout=300s -n "$NS" "articlesite/$SITE"

step "the site"
kubectl get articlesite -n "$NS" -o wide
kubectl get articlesite "$SITE" -n "$NS" \
  -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'

step "everything it owns"
kubectl get deployment,statefulset,service,poddisruptionbudget,networkpolicy,ingress,secret,persistentvolumeclaim \
  -n "$NS" -l "app.kubernetes.io/instance=$SITE" -o wide

step "its pods and their zones"
zones="$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.labels.topology\.kubernetes\.io/zone}{"\n"}{end}')"
{
  printf 'POD\tSTATUS\tREADY\tNODE\tZONE\n'
  kubectl get pods -n "$NS" -l "app.kubernetes.io/instance=$SITE" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\t"}{.status.phase}{"\t"}{.status.containerStatuses[0].ready}{"\t"}{.spec.nodeName}{"\n"}{end}' |
    while IFS=$'\t' read -r pod phase ready node; do
      zone="$(awk -v n="$node" '$1 == n { print $2 }' <<<"$zones")"
      printf '%s\t%s\t%s\t%s\t%s\n' "$pod" "$phase" "$ready" "$node" "${zone:-<none>}"
    done
} | if command -v column >/dev/null; then column -t -s $'\t'; else cat; fi

step "its database: $INSTANCES PostgreSQL instances under Patroni"
kubectl get articlesite "$SITE" -n "$NS" -o jsonpath='{"primary: "}{.status.database.primary}{", synchronous standby: "}{.status.database.synchronousStandby}{", timeline: "}{.status.database.timeline}{"\n"}{range .status.database.instances[*]}{"  "}{.name}{"\t"}{.role}{"\t"}{.state}{"\t"}{.node}{"\tlag "}{.lagBytes}{" bytes\n"}{end}'
kubectl get articlesite "$SITE" -n "$NS" \
  -o jsonpath='{range .status.conditions[?(@.type=="DatabaseHighlyAvailable")]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
if [ "$real_node" = 1 ]; then
  echo
  echo "  Switch the primary over (Patroni picks the synchronous standby), and watch it happen:"
  echo "    kubectl -n $NS annotate articlesite $SITE articlesite.io/switchover=any"
  echo "    kubectl -n $NS get articlesite $SITE -w -o custom-columns=PRIMARY:.status.database.primary,SWITCHOVERS:.status.database.switchovers,LAST:.status.database.lastLeaderChange.kind"
  echo "    kubectl -n $NS get events --field-selector reason=DatabaseSwitchover -w"
  echo "  Or lose the primary: kubectl -n $NS delete pod -l role=primary,app.kubernetes.io/instance=$SITE"
else
  echo "  (simulated nodes run no PostgreSQL: the database status fills in on real nodes, make cluster-up REAL_NODES=3)"
fi

if [ "$real_node" = 1 ]; then
  step "the site serves from real containers on $REAL_NODE_NAME"
  real_site_serves "$(kubectl get service -n "$NS" "$SITE" -o jsonpath='{.spec.clusterIP}')"
  printf '\n  Open the site: \033[1m%s\033[0m   (its article: %s)\n' "$REAL_URL" "$REAL_ARTICLE"
  echo "  The address is the site Service's ClusterIP; kube-proxy routes it to the real node's pods on this machine."
  if [ -n "$multi_nodes" ]; then
    node="$(kubectl get pods -n "$NS" -l "app.kubernetes.io/instance=$SITE,app.kubernetes.io/component=app" -o jsonpath='{.items[0].spec.nodeName}')"
    echo
    echo "  Freeze a node and watch the site keep serving (docs/real-node.md, \"Node failures\"):"
    echo "    hack/cluster/node-fault.sh freeze $node      # its kubelet, containerd and pods hang"
    echo "    kubectl get nodes -w                              # NotReady 15-17 s later"
    echo "    while sleep 0.5; do curl -s -o /dev/null -w '%{http_code} ' --max-time 2 $REAL_URL; done"
    echo "    hack/cluster/node-fault.sh heal $node"
  fi
fi

step "the operator keeps reconciling (try: kubectl -n $NS delete service $SITE, or kubectl -n $NS scale articlesite $SITE --replicas=5). Ctrl-C stops it."
export KUBECONFIG
tail -n 0 -f "$LOG" &
tail_pid=$!
wait "$op_pid"
