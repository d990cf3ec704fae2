#!/usr/bin/env bash
# Builds the pinned control-plane binaries from the Go module proxy and caches them
# under $CACHE_DIR/bin/<component>-<version>/. A cached binary is never rebuilt.
#
#   hack/cluster/build.sh            # everything the local cluster needs
#   hack/cluster/build.sh kubelet    # plus extra Kubernetes commands (real node)
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

build_kubernetes "$@"
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

kminor="${KUBERNETES_VERSION#v1.}"; kminor="${kminor%%.*}"
build_go_tool helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kminor"
