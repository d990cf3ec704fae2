# Source this to use the local cluster's kubectl and helm:  . hack/cluster/env.sh
# shellcheck shell=bash
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
export KUBECONFIG="$KUBECONFIG_FILE"
export PATH="$K8S_BIN:$HELM_BIN:$KWOK_BIN:$ETCD_BIN:$PATH"
