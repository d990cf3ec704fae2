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

cd "$ROOT"
# The checks that need no cluster come first, so a style failure is reported in seconds.
t0=$(date +%s)
say "== cargo fmt --check"
cargo fmt --all -- --check
say "== cargo clippy --all-targets -- -D warnings"
# --features e2e: lint the real-node test too (make e2e runs it, make test does not).
cargo clippy --workspace --all-targets --features e2e --locked -- -D warnings
say "== the committed CRD is current"
cargo test --locked --lib -- crd::tests::committed_crd_is_current --exact
t1=$(date +%s)

if [ "$started" = 1 ]; then
  "$here/up.sh" >/dev/null
fi
t2=$(date +%s)

export KUBECONFIG="$KUBECONFIG_FILE"
export PATH="$K8S_BIN:$HELM_BIN:$PATH"
say "== cargo test --workspace --no-fail-fast"
# --no-fail-fast: one failing suite does not hide the others.
cargo test --workspace --locked --no-fail-fast
t3=$(date +%s)
say "make test passed: checks $((t1 - t0))s, cluster $((t2 - t1))s, tests $((t3 - t2))s, total $((t3 - t0))s"
