#!/usr/bin/env bash
# make cluster-down: stops exactly the processes that cluster-up started (by pid file),
# removes the blackhole routes and the cluster's state. Safe to run when nothing runs.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
. "$here/components.sh"

# The tests' S3 server first: it listens on the real node's bridge address, which goes below.
"$here/s3.sh" stop
# The real node first (REAL_NODE=1), while the API server still answers its kubelet.
if [ -n "$RNS_MULTI" ]; then real_nodes_down; else real_node_down; fi

for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
  stop_component "${COMPONENTS[$i]}"
done

for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
  # No `| grep -q` here: with pipefail, ip's SIGPIPE would make the test fail at random.
  if [ -n "$(ip route show exact "$cidr" type blackhole 2>/dev/null)" ]; then
    ip route del blackhole "$cidr" || say "warning: could not remove the blackhole route for $cidr"
  fi
done

# Keep the logs of the last run for post-mortems; everything else goes.
if [ -d "$CLUSTER_DIR" ]; then
  rm -rf "$CLUSTER_DIR/etcd" "$CLUSTER_DIR/pki" "$PIDS" "$CLUSTER_DIR"/*.kubeconfig "$KUBECONFIG_FILE" \
    "$CLUSTER_DIR/ports.env" "$CLUSTER_DIR/s3"
fi
say "local cluster stopped"
