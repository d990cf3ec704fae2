#!/bin/sh
# Entry point of the PostgreSQL image: Patroni runs PostgreSQL, with the Kubernetes API as its
# store. Configuration: /etc/patroni/patroni.yml (the operator's ConfigMap) and the PATRONI_*
# environment (name, scope, namespace, pod IP, credentials); see docs/high-availability.md.
# A data directory made by the image before Patroni (initdb'd with the app's user as the
# superuser) is taken over as it is: with no cluster in the store, Patroni runs it as leader.
# SIGTERM (the image's stop signal) makes Patroni stop PostgreSQL fast and release the lock.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${PATRONI_CONFIG:=/etc/patroni/patroni.yml}"
export PGDATA

[ -r "$PATRONI_CONFIG" ] || { echo "error: Patroni's configuration $PATRONI_CONFIG is missing" >&2; exit 1; }
for v in PATRONI_NAME PATRONI_SCOPE PATRONI_SUPERUSER_USERNAME PATRONI_SUPERUSER_PASSWORD \
  PATRONI_REPLICATION_USERNAME PATRONI_REPLICATION_PASSWORD; do
  eval "[ -n \"\${$v:-}\" ]" || { echo "error: $v is not set" >&2; exit 1; }
done

# Where the other members and clients reach this one: the pod's IP (Patroni requires both).
if [ -n "${PATRONI_KUBERNETES_POD_IP:-}" ]; then
  : "${PATRONI_RESTAPI_CONNECT_ADDRESS:=$PATRONI_KUBERNETES_POD_IP:8008}"
  : "${PATRONI_POSTGRESQL_CONNECT_ADDRESS:=$PATRONI_KUBERNETES_POD_IP:5432}"
  export PATRONI_RESTAPI_CONNECT_ADDRESS PATRONI_POSTGRESQL_CONNECT_ADDRESS
fi

# The kubelet's fsGroup handling makes the volume's directories group-writable (2770), which
# PostgreSQL refuses for its data directory; tightened at every start, as before.
if [ -d "$PGDATA" ]; then
  chmod 0700 "$PGDATA"
fi

exec patroni "$PATRONI_CONFIG"
