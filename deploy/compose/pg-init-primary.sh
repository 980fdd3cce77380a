#!/bin/bash
# The primary's first start (the postgres image runs /docker-entrypoint-initdb.d/*.sh
# once, on an empty data directory): the roles Parley needs. Parley connects as parley,
# an ordinary role that owns its database (not a superuser); its migrations run at the
# first node's start, under an advisory lock. replicator may stream WAL (the replica).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set=app_pw="$DB_PASSWORD" --set=repl_pw="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE parley LOGIN PASSWORD :'app_pw';
CREATE DATABASE parley OWNER parley;
CREATE ROLE replicator LOGIN REPLICATION PASSWORD :'repl_pw';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
