# Shared paths and helpers of the local cluster scripts. Sourced, never run.
# shellcheck shell=bash
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/versions.sh"

ROOT="$(cd "$here/../.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-$ROOT/.cluster}"
PKI="$CLUSTER_DIR/pki"
LOGS="$CLUSTER_DIR/logs"
PIDS="$CLUSTER_DIR/pids"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"

# A running cluster's ports and ranges, written by up.sh: whoever acts on this cluster later
# (component.sh restarting the API server from a test, say) uses the same ones.
# shellcheck disable=SC1091
if [ -f "$CLUSTER_DIR/ports.env" ]; then . "$CLUSTER_DIR/ports.env"; fi

# Ports, all on 127.0.0.1. Override in the environment if they clash with something else.
ETCD_PORT="${ETCD_PORT:-12379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-12380}"
APISERVER_PORT="${APISERVER_PORT:-6443}"
KCM_PORT="${KCM_PORT:-10257}"
SCHEDULER_PORT="${SCHEDULER_PORT:-10259}"
KWOK_PORT="${KWOK_PORT:-10247}"
METRICS_SERVER_PORT="${METRICS_SERVER_PORT:-10253}"
# The tests' S3 server (s3.sh, real node(s) only): on the real node's bridge address, not 127.0.0.1.
S3_PORT="${S3_PORT:-9443}"

# Fabricated address ranges of the simulated cluster. They are routed to a local
# blackhole so that an accidental dial of a pod or Service IP never leaves the machine.
POD_CIDR="${POD_CIDR:-10.244.0.0/16}"
SERVICE_CIDR="${SERVICE_CIDR:-10.96.0.0/16}"

K8S_BIN="$CACHE_DIR/bin/kubernetes-$KUBERNETES_VERSION"
ETCD_BIN="$CACHE_DIR/bin/etcd-$ETCD_VERSION"
KWOK_BIN="$CACHE_DIR/bin/kwok-$KWOK_VERSION"
HELM_BIN="$CACHE_DIR/bin/helm-$HELM_VERSION"
METRICS_SERVER_BIN="$CACHE_DIR/bin/metrics-server-$METRICS_SERVER_VERSION"
RCLONE_BIN="$CACHE_DIR/bin/rclone-$RCLONE_VERSION"

# The order in which components start; cluster-down stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok metrics-server)

say() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# pid of a running component, or nothing. Checks the command name too, so a recycled
# pid of an unrelated process is never taken for ours.
component_pid() {
  local f="$PIDS/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$1"; then
    echo "$pid"
  fi
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# Installs the Debian packages that provide the given commands, when any is missing.
ensure_commands() { # cmd:package ...
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install "${missing[@]}"
}

apt_install() {
  say "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq "$@" >/dev/null \
    || die "apt-get install $* failed"
}
