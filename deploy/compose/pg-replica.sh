#!/bin/bash
# The replica's entrypoint (runs as postgres): the first start clones the primary with
# pg_basebackup (-R: standby.signal and the connection to the primary), then postgres
# runs as a hot standby that Parley reads history, sync, lists and searches from.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -q -h "$PRIMARY_HOST" -p 5432; do sleep 1; done
  rm -rf "$PGDATA"
  PGPASSWORD=$REPLICATION_PASSWORD pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator \
    -D "$PGDATA" -R -X stream --checkpoint=fast
  # the password for later reconnections (the last setting in the file wins)
  echo "primary_conninfo = 'host=$PRIMARY_HOST port=5432 user=replicator password=$REPLICATION_PASSWORD application_name=parley-replica'" \
    >> "$PGDATA/postgresql.auto.conf"
  chmod 0700 "$PGDATA"
fi
exec postgres -c hot_standby=on
