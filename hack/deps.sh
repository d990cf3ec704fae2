#!/usr/bin/env bash
# Installs what the tests and the local cluster need and a fresh machine of this kind
# may lack: Debian packages, and the Rust components for fmt and clippy.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/cluster/lib.sh"

# lua5.1: tests run the Argo CD health check (docs/gitops/) with it, as Argo CD's gopher-lua
# follows Lua 5.1.
ensure_commands openssl:openssl ss:iproute2 ip:iproute2 curl:curl envsubst:gettext-base \
  runuser:util-linux lua5.1:lua5.1
# The real node (REAL_NODE=1, make images, make e2e): container runtime, CNI plugins,
# iptables for kube-proxy, buildah for the images, binutils to strip the binaries, mmdebstrap
# for the PostgreSQL image's Debian root.
if [ "${REAL_NODE:-0}" = 1 ]; then
  ensure_commands containerd:containerd runc:runc iptables:iptables conntrack:conntrack \
    buildah:buildah sysctl:procps strip:binutils socat:socat mmdebstrap:mmdebstrap
  [ -x /usr/lib/cni/bridge ] || apt_install containernetworking-plugins
fi
# PostgreSQL: the article server's tests start a real server from Debian's package.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
fi
# Chromium and its WebDriver: the article server's page tests load every page in a real
# headless browser (app/tests/it/browser.rs).
ensure_commands chromium:chromium chromedriver:chromium-driver
command -v go >/dev/null 2>&1 || die "Go is required to build the local control plane (see README.md)"
command -v cargo >/dev/null 2>&1 || die "Rust (cargo) is required (see README.md)"
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
