#!/bin/sh
# Patroni's bootstrap method `pgbackrest_restore` (a site created with
# spec.database.bootstrap.recovery): restores the files of the backup that the target needs
# from the source repository path into PGDATA. Patroni then starts PostgreSQL with the
# recovery settings of patroni.yml (restore_command from the source path, the target, promote),
# waits for the promotion, and runs post_bootstrap, which also resets the roles' passwords to
# this site's. Environment (from the operator): ARTICLESITE_RESTORE_PATH, and
# ARTICLESITE_RESTORE_TIME (RFC 3339) or ARTICLESITE_RESTORE_SET (a backup label).
set -eu
: "${PGDATA:?}" "${ARTICLESITE_RESTORE_PATH:?}"
mkdir -p "$PGDATA"
chmod 0700 "$PGDATA"
set -- --stanza=db --repo1-path="$ARTICLESITE_RESTORE_PATH" --pg1-path="$PGDATA" --delta
if [ -n "${ARTICLESITE_RESTORE_TIME:-}" ]; then
  # pgBackRest picks the backup set from the time only in its own format
  # (2026-12-01 10:00:00+00); PostgreSQL reads either.
  target=$(printf '%s' "$ARTICLESITE_RESTORE_TIME" | sed -e 's/T/ /' -e 's/Z$/+00/')
  set -- "$@" --type=time --target="$target" --target-action=promote
elif [ -n "${ARTICLESITE_RESTORE_SET:-}" ]; then
  set -- "$@" --set="$ARTICLESITE_RESTORE_SET" --type=immediate --target-action=promote
fi
echo "restoring from repository path $ARTICLESITE_RESTORE_PATH: pgbackrest $* restore"
exec pgbackrest "$@" restore
