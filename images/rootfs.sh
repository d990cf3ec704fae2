#!/usr/bin/env bash
# Assembles the root filesystem of one image from this Debian system: the program, the shared
# libraries it loads (found with ldd), a passwd entry for its fixed non-root uid, nothing else.
# Used by hack/images.sh (make images) and by the Dockerfiles beside it, so both build the
# same images. (The PostgreSQL image needs a Python runtime for Patroni: it is a Debian root
# made by images/postgresql-rootfs.sh.)
#
#   images/rootfs.sh app ROOTFS BINARY          # article-server, articlesite-operator: uid 65532
#   images/rootfs.sh pause ROOTFS BINARY        # static pod sandbox binary
set -euo pipefail
APP_UID=65532

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# copy_libs ROOTFS FILE...: the shared libraries the files load, at their paths.
copy_libs() {
  local root=$1 f lib; shift
  for f in "$@"; do
    { ldd "$f" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
      [ -e "$root$lib" ] && continue
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  done
}

base_files() { # ROOTFS USER UID
  local root=$1 user=$2 uid=$3
  mkdir -p "$root/etc" "$root/tmp" "$root/usr/local/bin" "$root/usr/lib"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:/nonexistent:/sbin/nologin\n' \
    "$user" "$uid" "$uid" "$user" >"$root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$user" "$uid" >"$root/etc/group"
  # Debian's merged /usr: libraries that ldd names under /lib land in /usr/lib.
  ln -sfn usr/lib "$root/lib"
}

kind=${1:-}; root=${2:-}
[ -n "$root" ] || die "usage: $0 app|pause ROOTFS [BINARY]"
mkdir -p "$root"
case $kind in
  app)
    bin=${3:?binary}
    base_files "$root" nonroot "$APP_UID"
    cp "$bin" "$root/usr/local/bin/$(basename "$bin")"
    copy_libs "$root" "$bin"
    # Debug information is for the developer's machine, not the image.
    strip --strip-debug "$root/usr/local/bin/$(basename "$bin")"
    ;;
  pause)
    bin=${3:?binary}
    mkdir -p "$root/usr/local/bin"
    cp "$bin" "$root/usr/local/bin/pause"
    ;;
  *) die "unknown kind '$kind' (app, pause)" ;;
esac
