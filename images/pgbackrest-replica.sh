#!/bin/sh
# Patroni's replica method `pgbackrest` (create_replica_methods: [pgbackrest, basebackup]): a
# new or rebuilt standby restores the newest backup from the repository and replays the
# archive, instead of copying the whole database from the primary. Patroni then starts it as a
# standby of the primary. While the repository has no backup this fails and Patroni falls back
# to pg_basebackup.
set -eu
: "${PGDATA:?}"
mkdir -p "$PGDATA"
chmod 0700 "$PGDATA"
echo "restoring this standby from the backup repository"
exec pgbackrest --stanza=db --pg1-path="$PGDATA" --delta --type=standby restore
