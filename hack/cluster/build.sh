#!/usr/bin/env bash
# Builds the pinned control-plane binaries from the Go module proxy and caches them
# under $CACHE_DIR/bin/<component>-<version>/. A cached binary is never rebuilt.
#
#   hack/cluster/build.sh            # everything the local cluster needs
#   hack/cluster/build.sh kubelet    # plus extra Kubernetes commands (real node)
#   hack/cluster/build.sh coredns    # plus CoreDNS (the real node's cluster DNS)
#   hack/cluster/build.sh rclone     # plus rclone (the tests' S3 server, s3.sh)
#
# Prints the bin directory of each component on stdout, one "name=dir" per line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/versions.sh"

log_dir="$CACHE_DIR/logs"
mkdir -p "$log_dir"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false"

fail() {
  echo "build of $1 failed; see $2 (last lines below)" >&2
  tail -n 30 "$2" >&2 || true
  exit 1
}

# Kubernetes cannot be `go install`ed (its go.mod has replace lines), so a small
# wrapper module requires it and replaces each staging module with its tagged twin.
build_kubernetes() {
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl "$@")
  local out="$CACHE_DIR/bin/kubernetes-$KUBERNETES_VERSION"
  local missing=()
  for c in "${cmds[@]}"; do [ -x "$out/$c" ] || missing+=("$c"); done
  if [ ${#missing[@]} -eq 0 ]; then echo "kubernetes=$out"; return; fi

  local mod="$CACHE_DIR/src/kubernetes-$KUBERNETES_VERSION"
  local logf="$log_dir/build-kubernetes-$KUBERNETES_VERSION.log"
  mkdir -p "$mod" "$out"
  echo "building kubernetes $KUBERNETES_VERSION: ${missing[*]} (log: $logf)" >&2
  (
    set -e
    cd "$mod"
    upstream=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
    staging_ver="v0.${KUBERNETES_VERSION#v1.}"
    {
      echo "module articlesite.local/kubernetes-build"
      echo
      grep -E '^go ' "$upstream"
      echo
      echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
      echo
      echo "replace ("
      grep -E '=> \./staging/' "$upstream" | awk -v v="$staging_ver" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > go.mod
    cat > tools.go <<'GO'
//go:build tools

package tools
GO
    minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
    ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    for c in "${missing[@]}"; do
      echo "== go build k8s.io/kubernetes/cmd/$c"
      go build -mod=mod -p 2 -trimpath -ldflags "$ld" -o "$out/$c.tmp" "k8s.io/kubernetes/cmd/$c"
      mv "$out/$c.tmp" "$out/$c"
    done
  ) >"$logf" 2>&1 || fail kubernetes "$logf"
  echo "kubernetes=$out"
}

# A module that only requires one tool keeps its dependencies from meeting another's.
build_go_tool() { # name version module package
  local name=$1 version=$2 module=$3 pkg=$4 ldflags=${5:-}
  local out="$CACHE_DIR/bin/$name-$version"
  if [ -x "$out/$name" ]; then echo "$name=$out"; return; fi
  local mod="$CACHE_DIR/src/$name-$version" logf="$log_dir/build-$name-$version.log"
  mkdir -p "$mod" "$out"
  echo "building $name $version (log: $logf)" >&2
  (
    set -e
    cd "$mod"
    printf 'module articlesite.local/%s-build\n\ngo 1.24\n\nrequire %s %s\n' "$name" "$module" "$version" > go.mod
    go build -mod=mod -p 2 -trimpath -ldflags "-s -w $ldflags" -o "$out/$name.tmp" "$pkg"
    mv "$out/$name.tmp" "$out/$name"
  ) >"$logf" 2>&1 || fail "$name" "$logf"
  echo "$name=$out"
}

# CoreDNS with only the plugins the real node's DNS uses: a main package of our own sets the
# directive list, so the cloud plugins (route53, azure, clouddns) and forward are not even
# compiled in, and the build pulls a fraction of the module's dependencies.
build_coredns() {
  local out="$CACHE_DIR/bin/coredns-$COREDNS_VERSION"
  if [ -x "$out/coredns" ]; then echo "coredns=$out"; return; fi
  local mod="$CACHE_DIR/src/coredns-$COREDNS_VERSION" logf="$log_dir/build-coredns-$COREDNS_VERSION.log"
  mkdir -p "$mod" "$out"
  echo "building coredns $COREDNS_VERSION (log: $logf)" >&2
  (
    set -e
    cd "$mod"
    printf 'module articlesite.local/coredns-build\n\ngo 1.26.0\n\nrequire github.com/coredns/coredns %s\n' \
      "$COREDNS_VERSION" > go.mod
    cat > main.go <<'GO'
// CoreDNS with the plugins of the real node's cluster DNS only (no forward: nothing leaves).
package main

import (
	"log"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order in which the plugins handle a query: upstream's order, restricted to ours.
var directives = []string{"bind", "ready", "errors", "log", "cache", "kubernetes"}

func init() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		log.Fatal(err)
	}
}

func main() { coremain.Run() }
GO
    go build -mod=mod -p 2 -trimpath -ldflags "-s -w" \
      -o "$out/coredns.tmp" .
    mv "$out/coredns.tmp" "$out/coredns"
  ) >"$logf" 2>&1 || fail coredns "$logf"
  echo "coredns=$out"
}

# rclone with the local backend and `serve s3` only (plus `version`): the S3 server of the
# backup tests (s3.sh). A main package of our own, as for CoreDNS: the other 70-odd backends and
# their cloud SDKs are not compiled in. The godebug lines are those of rclone's own go.mod.
build_rclone() {
  local out="$CACHE_DIR/bin/rclone-$RCLONE_VERSION"
  if [ -x "$out/rclone" ]; then echo "rclone=$out"; return; fi
  local mod="$CACHE_DIR/src/rclone-$RCLONE_VERSION" logf="$log_dir/build-rclone-$RCLONE_VERSION.log"
  mkdir -p "$mod" "$out"
  echo "building rclone $RCLONE_VERSION (log: $logf)" >&2
  (
    set -e
    cd "$mod"
    printf 'module articlesite.local/rclone-build\n\ngo 1.26.0\n\ngodebug (\n\tmultipathtcp=0\n\tx509negativeserial=1\n)\n\nrequire github.com/rclone/rclone %s\n' \
      "$RCLONE_VERSION" > go.mod
    cat > main.go <<'GO'
// rclone with what the tests' S3 server needs: the local backend and `serve s3`.
package main

import (
	"github.com/rclone/rclone/cmd"

	_ "github.com/rclone/rclone/backend/local"
	_ "github.com/rclone/rclone/cmd/serve/s3"
	_ "github.com/rclone/rclone/cmd/version"
)

func main() { cmd.Main() }
GO
    go build -mod=mod -p 2 -trimpath -ldflags "-s -w -X github.com/rclone/rclone/fs.Version=$RCLONE_VERSION" \
      -o "$out/rclone.tmp" .
    mv "$out/rclone.tmp" "$out/rclone"
  ) >"$logf" 2>&1 || fail rclone "$logf"
  echo "rclone=$out"
}

k8s_cmds=()
want_coredns=0
want_rclone=0
for a in "$@"; do
  case $a in
    coredns) want_coredns=1 ;;
    rclone) want_rclone=1 ;;
    *) k8s_cmds+=("$a") ;;
  esac
done
build_kubernetes "${k8s_cmds[@]}"
[ "$want_coredns" = 1 ] && build_coredns
[ "$want_rclone" = 1 ] && build_rclone
build_go_tool etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3
build_go_tool kwok "$KWOK_VERSION" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
# kwok's default stages ship inside its module as data; gather the ones the local cluster
# uses (node life, pod life, volume provisioning) into one config file beside the binary.
kwok_stages() {
  local out="$CACHE_DIR/bin/kwok-$KWOK_VERSION/stages.yaml" dir f
  [ -s "$out" ] && return 0
  dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  [ -d "$dir/kustomize/stage" ] || { echo "kwok stages not found in $dir" >&2; exit 1; }
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml \
           volume/fast/pvc-provision.yaml volume/fast/pv-bind.yaml volume/fast/pvc-delete.yaml \
           volume/fast/pv-delete.yaml; do
    echo "---"
    cat "$dir/kustomize/stage/$f"
  done >"$out.tmp"
  mv "$out.tmp" "$out"
}
kwok_stages
# kwok's simulated kubelet resource metrics (/metrics/nodes/<node>/metrics/resource, what
# metrics-server scrapes) and pod usage from the annotations kwok.x-k8s.io/usage-cpu and
# kwok.x-k8s.io/usage-memory (1m and 1Mi without them), both shipped in its module.
kwok_metrics() {
  local out="$CACHE_DIR/bin/kwok-$KWOK_VERSION/metrics.yaml" dir f
  [ -s "$out" ] && return 0
  dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  for f in metrics/resource/metrics-resource.yaml metrics/usage/usage-from-annotation.yaml; do
    [ -f "$dir/kustomize/$f" ] || { echo "kwok $f not found in $dir" >&2; exit 1; }
    echo "---"
    cat "$dir/kustomize/$f"
  done >"$out.tmp"
  mv "$out.tmp" "$out"
}
kwok_metrics
# The resource metrics API the HorizontalPodAutoscaler reads (docs/autoscaling.md).
build_go_tool metrics-server "$METRICS_SERVER_VERSION" sigs.k8s.io/metrics-server \
  sigs.k8s.io/metrics-server/cmd/metrics-server

kminor="${KUBERNETES_VERSION#v1.}"; kminor="${kminor%%.*}"
build_go_tool helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kminor"
