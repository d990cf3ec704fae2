#!/usr/bin/env bash
# The demo after `make cluster-up`: installs the CRD, starts the operator, applies
# examples/articlesite.yaml, waits until the site is Ready, shows the site and everything it
# owns (with the zone of each pod), then keeps the operator in the foreground until Ctrl-C.
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
SITE="$(sed -n 's/^  name: *//p' examples/articlesite.yaml | head -n1)"
LOG="$root/.cluster/logs/operator-demo.log"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

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

step "applying examples/articlesite.yaml"
kubectl apply --server-side --field-manager=articlesite-demo -n "$NS" -f examples/articlesite.yaml

step "waiting until ArticleSite $SITE is Ready"
kubectl wait --for=condition=Ready --timeout=180s -n "$NS" "articlesite/$SITE"

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

step "the operator keeps reconciling (try: kubectl -n $NS delete service $SITE, or kubectl -n $NS scale articlesite $SITE --replicas=5). Ctrl-C stops it."
export KUBECONFIG
tail -n 0 -f "$LOG" &
tail_pid=$!
wait "$op_pid"
