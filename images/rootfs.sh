#!/usr/bin/env bash
# Assembles the root filesystem of one image from this Debian system: the program, the shared
# libraries it loads (found with ldd), a passwd entry for its fixed non-root uid, nothing else.
# Used by hack/images.sh (make images) and by the Dockerfiles beside it, so both build the
# same images.
#
#   images/rootfs.sh app ROOTFS BINARY          # article-server, articlesite-operator: uid 65532
#   images/rootfs.sh postgresql ROOTFS          # from the installed postgresql-NN package: uid 999
#   images/rootfs.sh pause ROOTFS BINARY        # static pod sandbox binary
set -euo pipefail
images_dir="$(cd "$(dirname "$0")" && pwd)"
APP_UID=65532
POSTGRES_UID=999

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

# copy_with_libs ROOTFS FILE...: the files, at their paths, and their libraries.
copy_with_libs() {
  local root=$1 f; shift
  for f in "$@"; do
    mkdir -p "$root$(dirname "$f")"
    cp -aL "$f" "$root$f"
  done
  copy_libs "$root" "$@"
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

pg_version() {
  local ver
  ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n1)
  [ -n "$ver" ] || die "PostgreSQL is not installed"
  echo "$ver"
}

kind=${1:-}; root=${2:-}
[ -n "$root" ] || die "usage: $0 app|postgresql|pause ROOTFS [BINARY]"
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
  postgresql)
    ver=$(pg_version)
    base_files "$root" postgres "$POSTGRES_UID"
    files=()
    # Everything but the JIT, which would pull in LLVM (100 MB) for little gain here.
    while IFS= read -r f; do files+=("$f"); done < <(
      find "/usr/lib/postgresql/$ver/bin" "/usr/lib/postgresql/$ver/lib" -maxdepth 1 -type f \
        ! -name 'llvmjit*' | sort)
    # /bin/sh for the entry point and the exec probes (pg_isready); chmod for the data directory.
    copy_with_libs "$root" "${files[@]}" /bin/sh /bin/chmod
    mkdir -p "$root/usr/share/postgresql" "$root/usr/share/zoneinfo/Etc" \
      "$root/var/lib/postgresql" "$root/var/run/postgresql"
    cp -a "/usr/share/postgresql/$ver" "$root/usr/share/postgresql/"
    cp -L /usr/share/zoneinfo/UTC "$root/usr/share/zoneinfo/UTC"
    cp -L /usr/share/zoneinfo/UTC "$root/usr/share/zoneinfo/Etc/UTC"
    chown "$POSTGRES_UID:$POSTGRES_UID" "$root/var/lib/postgresql" "$root/var/run/postgresql"
    install -m 0755 "$images_dir/postgresql-entrypoint.sh" "$root/usr/local/bin/postgresql-entrypoint"
    # The image's PATH names the version directory.
    ln -sfn "$ver" "$root/usr/lib/postgresql/current"
    ;;
  pause)
    bin=${3:?binary}
    mkdir -p "$root/usr/local/bin"
    cp "$bin" "$root/usr/local/bin/pause"
    ;;
  *) die "unknown kind '$kind' (app, postgresql, pause)" ;;
esac
