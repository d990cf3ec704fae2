#!/bin/sh
# Patroni's bootstrap.post_bootstrap: runs once, on the leader of a new cluster, with a
# connection string to it as $1 (and PGPASSFILE set by Patroni). Creates the site's database
# POSTGRES_DB (the official image's contract; nothing when unset or "postgres").
set -eu
conn=${1:?connection string}
db=${POSTGRES_DB:-postgres}
[ "$db" = postgres ] && exit 0
# psql quotes the name (:'db' and %I), so any database name is safe here.
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 -v db="$db" "$conn" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
echo "database $db is there"
