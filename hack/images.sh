#!/usr/bin/env bash
# make images: OCI images of the operator, the article server, PostgreSQL with Patroni (a
# Debian root made by mmdebstrap) and the pod sandbox (pause), built without a daemon by
# buildah from a root filesystem assembled here, then imported into the real node's
# containerd when it runs.
#
#   hack/images.sh                      # all four
#   hack/images.sh pause postgresql     # some
#
# Cached: an image is rebuilt only when the hash of its root filesystem and configuration
# changes, and imported only when containerd holds another digest under its name.
# IMAGE_PROFILE=release builds the binaries with the release profile (default: dev, the
# profile `make test` already built). images/*.Dockerfile build equivalent images elsewhere.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/cluster/lib.sh"
. "$here/realnode.sh"

IMAGE_TAG="${IMAGE_TAG:-dev}"
IMAGE_PROFILE="${IMAGE_PROFILE:-dev}"
# The fixed uids of images/rootfs.sh (and of the operator's pod specs).
APP_UID=65532
POSTGRES_UID=999
IMG_CACHE="$CACHE_DIR/images"
BUILDAH=(buildah --root "$IMG_CACHE/storage" --runroot "$IMG_CACHE/run" --storage-driver vfs)

REAL_NODE=1 "$ROOT/hack/deps.sh"
mkdir -p "$IMG_CACHE"

rootfs_rust() { # ROOTFS BINARY
  local target_dir="$ROOT/target/debug"
  [ "$IMAGE_PROFILE" = release ] && target_dir="$ROOT/target/release"
  "$ROOT/images/rootfs.sh" app "$1" "$target_dir/$2"
}
rootfs_article_server() { rootfs_rust "$1" article-server; }
rootfs_articlesite_operator() { rootfs_rust "$1" articlesite-operator; }
# PostgreSQL: a Debian root made by mmdebstrap with Patroni in a venv
# (images/postgresql-rootfs.sh), cached by the hash of what goes into it: the script, the
# pinned requirements and the candidate versions of its packages in this machine's apt lists
# (a Debian point release makes a new one once `apt-get update` has seen it).
rootfs_postgresql() {
  local root=$1 script="$ROOT/images/postgresql-rootfs.sh" reqs="$ROOT/images/postgresql-requirements.txt"
  local h base wheels
  h=$( { cat "$script" "$reqs"; apt-cache policy postgresql-15 pgbackrest python3 2>/dev/null | grep Candidate; } \
    | sha256sum | cut -c1-16)
  base="$IMG_CACHE/postgresql-base-$h"
  if [ ! -d "$base" ]; then
    say "building the PostgreSQL root filesystem (mmdebstrap, Patroni; inputs $h)"
    wheels="$IMG_CACHE/postgresql-wheels-$(sha256sum "$reqs" | cut -c1-16)"
    if [ ! -d "$wheels" ]; then
      rm -rf "$wheels.tmp"
      # pip wheel: sdists among the pins (ydiff) become wheels, installed offline in the root.
      # This machine's python3 must be the image's minor version (3.11, bookworm's): pip in the
      # root refuses wheels built for another one, with a clear message.
      python3 -m pip wheel --quiet --no-deps -r "$reqs" -w "$wheels.tmp"
      mv "$wheels.tmp" "$wheels"
    fi
    rm -rf "$base.tmp" "$IMG_CACHE"/postgresql-base-*
    DEB_CACHE="$IMG_CACHE/debs" "$script" "$base.tmp" "$wheels"
    mv "$base.tmp" "$base"
  fi
  cp -a "$base/." "$root/"
  "$script" --finish "$root"
}

rootfs_pause() {
  local root=$1 src="$ROOT/images/pause/pause.go" out="$IMG_CACHE/pause-bin" h
  mkdir -p "$out"
  h=$(sha256sum "$src" | cut -c1-16)
  if [ ! -x "$out/pause-$h" ]; then
    (cd "$(dirname "$src")" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
      go build -trimpath -ldflags '-s -w' -o "$out/pause-$h" pause.go)
  fi
  "$ROOT/images/rootfs.sh" pause "$root" "$out/pause-$h"
}

# build NAME REF ENTRYPOINT-JSON USER [ENV...]: builds when the inputs changed; prints the digest.
build() {
  local name=$1 ref=$2 entry=$3 user=$4; shift 4
  local root="$IMG_CACHE/rootfs-$name"
  rm -rf "$root"
  mkdir -p "$root"
  "rootfs_${name//-/_}" "$root"
  local config="ref=$ref entry=$entry user=$user stop=${STOP_SIGNAL:-SIGTERM} env=$* buildah=$(buildah --version)"
  local hash
  hash=$( (cd "$root" && find . -printf '%p %m %U %l\n' | sort && \
    find . -type f -print0 | sort -z | xargs -0 sha256sum; echo "$config") | sha256sum | cut -c1-32)
  local archive="$IMG_CACHE/$name-$hash.oci.tar"
  if [ ! -s "$archive" ]; then
    say "building image $ref ($name, inputs $hash)"
    local c envargs=() e
    for e in "$@"; do envargs+=(--env "$e"); done
    "${BUILDAH[@]}" rm "asimg-$name" >/dev/null 2>&1 || true
    c=$("${BUILDAH[@]}" from --name "asimg-$name" scratch)
    "${BUILDAH[@]}" copy "$c" "$root/" / >/dev/null
    "${BUILDAH[@]}" config --entrypoint "$entry" --cmd '' --user "$user" --workingdir / \
      --stop-signal "${STOP_SIGNAL:-SIGTERM}" \
      "${envargs[@]}" --label "org.opencontainers.image.source=articlesite-operator" "$c"
    rm -f "$IMG_CACHE/$name"-*.oci.tar
    "${BUILDAH[@]}" commit --quiet --rm --format oci --timestamp 0 "$c" \
      "oci-archive:$archive.tmp:$ref" >/dev/null
    mv "$archive.tmp" "$archive"
  fi
  rm -rf "$root"
  import "$ref" "$archive"
}

# Imports into the real node's containerd (namespace k8s.io, where the CRI looks) when it
# runs and holds another digest under this name.
import() {
  local ref=$1 archive=$2 want have
  want=$(tar -xOf "$archive" index.json | grep -o '"digest":"sha256:[0-9a-f]*"' | head -n1 | cut -d'"' -f4)
  if [ ! -S "$CONTAINERD_SOCK" ]; then
    say "image $ref ($want) built; the real node is not running, nothing imported"
    return 0
  fi
  have=$(ctr_ images ls "name==$ref" 2>/dev/null | awk -v r="$ref" '$1 == r {print $3}')
  if [ "$have" != "$want" ]; then
    ctr_ images import --no-unpack=false "$archive" >/dev/null
    say "image $ref imported into the real node ($want)"
  fi
  echo "$ref $want"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(pause postgresql article-server articlesite-operator)
for n in "${names[@]}"; do
  case $n in
    article-server|articlesite-operator)
      if [ "$IMAGE_PROFILE" = release ]; then
        (cd "$ROOT" && cargo build --quiet --locked --release -p "$n" --bin "$n")
      else
        (cd "$ROOT" && cargo build --quiet --locked -p "$n" --bin "$n")
      fi
      ;;
  esac
  case $n in
    pause) build pause "$PAUSE_IMAGE" '["/usr/local/bin/pause"]' "65535:65535" ;;
    postgresql)
      # SIGTERM: Patroni's signal to stop PostgreSQL fast and release the leader lock.
      # PYTHONDONTWRITEBYTECODE: the root filesystem is read-only (the .pyc files are built in).
      STOP_SIGNAL=SIGTERM build postgresql "$IMAGE_PREFIX/postgresql:$IMAGE_TAG" '["/usr/local/bin/postgresql-entrypoint"]' \
        "$POSTGRES_UID:$POSTGRES_UID" \
        "PATH=/opt/patroni/bin:/usr/lib/postgresql/current/bin:/usr/local/bin:/usr/bin:/bin" \
        "PGDATA=/var/lib/postgresql/data" "TZ=UTC" "LANG=C.UTF-8" "PYTHONDONTWRITEBYTECODE=1"
      ;;
    article-server)
      build article-server "$IMAGE_PREFIX/article-server:$IMAGE_TAG" '["/usr/local/bin/article-server"]' \
        "$APP_UID:$APP_UID"
      ;;
    articlesite-operator)
      build articlesite-operator "$IMAGE_PREFIX/articlesite-operator:$IMAGE_TAG" \
        '["/usr/local/bin/articlesite-operator"]' "$APP_UID:$APP_UID"
      ;;
    *) die "unknown image '$n' (pause, postgresql, article-server, articlesite-operator)" ;;
  esac
done
