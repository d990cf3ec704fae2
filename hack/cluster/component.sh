#!/usr/bin/env bash
# Stops or starts one component of the running local cluster, for tests that exercise
# recovery (for example an API server restart):  hack/cluster/component.sh stop kube-apiserver
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
. "$here/components.sh"

action=${1:-}; name=${2:-}
case " ${COMPONENTS[*]} " in *" $name "*) ;; *) die "unknown component '$name' (one of: ${COMPONENTS[*]})" ;; esac
case $action in
  stop) stop_component "$name" ;;
  start) start_component "$name" ;;
  restart) stop_component "$name"; start_component "$name" ;;
  *) die "usage: $0 stop|start|restart COMPONENT" ;;
esac
