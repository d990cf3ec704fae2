#!/usr/bin/env bash
# make test: the whole test suite, as CI runs it. Starts the local cluster when it is not
# running and stops it again afterwards (also when a test fails); leaves a cluster that
# was already running alone.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/cluster/lib.sh"
. "$here/components.sh"

"$ROOT/hack/deps.sh"

started=0
if [ -z "$(component_pid kube-apiserver)" ]; then
  started=1
fi
cleanup() {
  local rc=$?
  if [ "$started" = 1 ]; then "$here/down.sh" || true; fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

t0=$(date +%s)
if [ "$started" = 1 ]; then
  "$here/up.sh" >/dev/null
fi
t1=$(date +%s)

cd "$ROOT"
export KUBECONFIG="$KUBECONFIG_FILE"
export PATH="$K8S_BIN:$HELM_BIN:$PATH"
say "== cargo fmt --check"
cargo fmt --all -- --check
say "== cargo clippy --all-targets -- -D warnings"
# --features e2e: lint the real-node test too (make e2e runs it, make test does not).
cargo clippy --workspace --all-targets --features e2e --locked -- -D warnings
say "== cargo test --workspace"
cargo test --workspace --locked
t2=$(date +%s)
say "make test passed: cluster $((t1 - t0))s, checks and tests $((t2 - t1))s, total $((t2 - t0))s"
