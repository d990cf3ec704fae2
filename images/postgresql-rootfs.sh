#!/usr/bin/env bash
# The root filesystem of the PostgreSQL image, made with Debian's own tooling: mmdebstrap
# (variant minbase) from this machine's configured apt sources installs PostgreSQL 15,
# pgBackRest and Python 3; Patroni goes into the venv /opt/patroni from the pinned wheels of
# images/postgresql-requirements.txt. Trimmed of documentation, man pages, locales, the JIT
# (LLVM, 100 MB) and apt's lists; user postgres is uid 999. hack/images.sh adds the entry
# point scripts and commits it; images/postgresql.Dockerfile builds the same from
# debian:bookworm-slim.
#
#   images/postgresql-rootfs.sh ROOTFS WHEELS_DIR   # the Debian root with the venv (cacheable)
#   images/postgresql-rootfs.sh --finish ROOTFS      # adds the image's scripts and mount points
#
# WHEELS_DIR holds the wheels of the requirements file (hack/images.sh fills it with pip);
# they are installed with --no-index inside the new root, so the chroot needs no network.
set -euo pipefail
images_dir="$(cd "$(dirname "$0")" && pwd)"
SUITE=bookworm
POSTGRES_UID=999
PACKAGES=postgresql-15,pgbackrest,python3,python3-venv
# Only needed to create the venv: purged afterwards.
BUILD_ONLY_PACKAGES="python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl"
# Perl (45 MB) runs only postgresql-common's maintainer scripts and pg_wrapper; the image calls
# PostgreSQL's binaries directly, so it goes after installation (perl-base, essential, stays).
INSTALL_ONLY_PACKAGES="perl perl-modules-5.36 libperl5.36"

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs inside the new root with a clean environment: the host's pip settings (an index, a
# find-links directory) must not leak into the image's pip.
in_root() { # ROOT CMD...
  local root=$1; shift
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C.UTF-8 chroot "$root" "$@"
}

# mmdebstrap's essential hook: the postgres user exists with uid 999 before postgresql-common
# would create it with the next free system uid.
hook_essential() { # ROOT
  local root=$1
  # minbase has no useradd (passwd is not essential): the entries are written as it would.
  grep -q '^postgres:' "$root/etc/passwd" && die "a postgres user exists already"
  printf 'postgres:x:%s:%s:PostgreSQL administrator:/var/lib/postgresql:/usr/sbin/nologin\n' \
    "$POSTGRES_UID" "$POSTGRES_UID" >>"$root/etc/passwd"
  printf 'postgres:x:%s:\n' "$POSTGRES_UID" >>"$root/etc/group"
  [ ! -e "$root/etc/shadow" ] || printf 'postgres:!:1::::::\n' >>"$root/etc/shadow"
  [ ! -e "$root/etc/gshadow" ] || printf 'postgres:!::\n' >>"$root/etc/gshadow"
}

# mmdebstrap's customize hook: the venv, then everything the image does not need.
hook_customize() { # ROOT
  local root=$1
  mkdir -p "$root/tmp/wheels"
  cp "$WHEELS_DIR"/*.whl "$root/tmp/wheels/"
  cp "$images_dir/postgresql-requirements.txt" "$root/tmp/wheels/requirements.txt"
  in_root "$root" python3 -m venv /opt/patroni
  in_root "$root" /opt/patroni/bin/pip install --quiet --no-cache-dir --no-index \
    --find-links /tmp/wheels --no-deps --require-virtualenv -r /tmp/wheels/requirements.txt
  in_root "$root" /opt/patroni/bin/pip check
  in_root "$root" /opt/patroni/bin/pip uninstall --quiet --yes pip setuptools
  # shellcheck disable=SC2086
  in_root "$root" dpkg --purge $BUILD_ONLY_PACKAGES >/dev/null
  # shellcheck disable=SC2086
  in_root "$root" dpkg --purge --force-depends $INSTALL_ONLY_PACKAGES >/dev/null 2>&1
  in_root "$root" /opt/patroni/bin/patroni --version
  # PostgreSQL's man pages (installed: postgresql-client-15's postinst links them).
  rm -rf "$root/usr/share/postgresql/"*/man
  # The cluster that postgresql-15's postinst creates: the image's clusters live on volumes.
  rm -rf "$root/etc/postgresql/"* "$root/var/lib/postgresql/"*
  rm -rf "$root/tmp/wheels" "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"* \
    "$root/var/cache/debconf/"*-old "$root/var/lib/dpkg/"*-old "$root/var/log/"* \
    "$root/usr/share/python-wheels"
  ln -sfn "$(cd "$root/usr/lib/postgresql" && ls | sort -n | tail -n1)" "$root/usr/lib/postgresql/current"
  # Machine-specific files that mmdebstrap leaves for the host to fill.
  : >"$root/etc/machine-id"
  rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
}

# The image's own files on top of the (cached) Debian root: entry points and mount points.
# mmdebstrap empties /run, so these are made here.
finish() { # ROOT
  local root=$1
  install -m 0755 "$images_dir/postgresql-entrypoint.sh" "$root/usr/local/bin/postgresql-entrypoint"
  install -m 0755 "$images_dir/patroni-post-bootstrap.sh" "$root/usr/local/bin/patroni-post-bootstrap"
  # Backups (docs/backup-and-restore.md): the restore at bootstrap, the standby restored from
  # the repository, and the agent that creates the stanza and reports archiving.
  install -m 0755 "$images_dir/patroni-restore.sh" "$root/usr/local/bin/patroni-restore"
  install -m 0755 "$images_dir/pgbackrest-replica.sh" "$root/usr/local/bin/pgbackrest-replica"
  install -m 0755 "$images_dir/backup-agent.py" "$root/usr/local/bin/backup-agent"
  # Writable at run time only where the operator mounts volumes; these are the mount points.
  mkdir -p "$root/run/postgresql" "$root/var/lib/postgresql/data" "$root/etc/patroni" "$root/tmp" \
    "$root/etc/pgbackrest"
  chown "$POSTGRES_UID:$POSTGRES_UID" "$root/run/postgresql" "$root/var/lib/postgresql" \
    "$root/var/lib/postgresql/data"
  chmod 2775 "$root/run/postgresql"
  chmod 0700 "$root/var/lib/postgresql/data"
  chmod 1777 "$root/tmp"
}

case ${1:-} in
  --hook-essential) hook_essential "$2"; exit ;;
  --hook-customize) hook_customize "$2"; exit ;;
  --finish) finish "$2"; exit ;;
esac

root=${1:-}; WHEELS_DIR=${2:-}
[ -n "$root" ] && [ -d "$WHEELS_DIR" ] || die "usage: $0 ROOTFS WHEELS_DIR"
command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed (hack/deps.sh installs it)"
[ "$(id -u)" = 0 ] || die "mmdebstrap's root mode needs root"
export WHEELS_DIR
# The machine's own apt sources, as apt reads them.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -s "$f" ] && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || die "no apt sources configured on this machine"
[ ! -e "$root" ] || [ -z "$(ls -A "$root")" ] || die "$root is not empty"

self="$images_dir/postgresql-rootfs.sh"
# Quoted: dpkg matches these patterns, the host's shell must not.
excludes=(
  '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*'
  '/usr/share/i18n/*' '/usr/share/lintian/*'
  # The JIT: llvmjit.so and its bitcode, and LLVM itself. PostgreSQL runs without JIT when
  # the provider library is absent (as in the image before Patroni).
  '/usr/lib/postgresql/*/lib/llvmjit*' '/usr/lib/postgresql/*/lib/bitcode/*' '/usr/lib/*/libLLVM-*'
  '/usr/lib/*/libz3.so*'
)
dpkgopts=()
for e in "${excludes[@]}"; do dpkgopts+=("--dpkgopt=path-exclude=$e"); done
# Licences stay.
dpkgopts+=("--dpkgopt=path-include=/usr/share/doc/*/copyright")

# DEB_CACHE (optional): a directory that keeps the downloaded packages between builds.
cache_hooks=()
if [ -n "${DEB_CACHE:-}" ]; then
  mkdir -p "$DEB_CACHE"
  cache_hooks=(--setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
    --setup-hook="sync-in '$DEB_CACHE' /var/cache/apt/archives/"
    --customize-hook="sync-out /var/cache/apt/archives '$DEB_CACHE'")
fi

mmdebstrap --quiet --mode=root --variant=minbase --format=directory \
  --include="$PACKAGES" "${dpkgopts[@]}" "${cache_hooks[@]}" \
  --essential-hook="'$self' --hook-essential \"\$1\"" \
  --customize-hook="'$self' --hook-customize \"\$1\"" \
  "$SUITE" "$root" "${sources[@]}"
