#!/bin/sh
# Entry point of the PostgreSQL image, with the environment contract of the official image:
# POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required for a new cluster),
# POSTGRES_DB (default: the user) and PGDATA. Initialises an empty data directory once, then
# runs the server in the foreground (SIGTERM = smart shutdown, SIGINT = fast).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export PGDATA

# The kubelet's fsGroup handling makes the volume's directories group-writable (2770), which
# PostgreSQL refuses for its data directory; the official image tightens it at every start too.
if [ -d "$PGDATA" ]; then
  chmod 0700 "$PGDATA"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "error: PGDATA ($PGDATA) is empty and POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  umask 077
  pwfile="/tmp/initdb-pwfile.$$"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-locale
  : >"$pwfile"
  # Connections from other pods, always with the password.
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    printf 'CREATE DATABASE "%s"\n' "$POSTGRES_DB" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "database cluster initialised in $PGDATA"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
