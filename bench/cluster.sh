#!/bin/sh
# The cluster's cost figures (bench/cluster.mjs): PostgreSQL batched writes against one insert
# per transaction, and CPU per delivery over every process of a 3-node cluster against one node
# (and embedded SQLite), in one run, as ratios. `make bench` runs it after bench/run.sh;
# `make bench-cluster` runs only this.
#
#   bench/cluster.sh [--quick] [--reps N] [--only writes,cost] [--dir D] [--port P] [--out FILE.json]
#                    (see `node bench/cluster.mjs --help`)
#
# Defaults: 3 rounds (--quick: 1 round, short cells), about 35 minutes (quick: 12), bounded by
# --budget-min (60). Everything listens on 127.0.0.1, ports P..P+700 (default 21080, below the ephemeral range), under
# /tmp/parley-bench-cluster; whatever it started is stopped at the end.
#
# Needs: build/release/parleyd and build/release/bench/load/parley-load (make build), Node.js,
# redis-server, haproxy and PostgreSQL 15 (scripts/setup --test installs them).
set -e
cd "$(dirname "$0")/.."

for b in "${PARLEYD:-build/release/parleyd}" "${PARLEY_LOAD:-build/release/bench/load/parley-load}"; do
  if [ ! -x "$b" ]; then
    echo "bench/cluster.sh: $b is missing: run make build first" >&2
    exit 2
  fi
done
for t in node redis-server redis-cli haproxy ss; do
  if ! command -v "$t" >/dev/null 2>&1; then
    echo "bench/cluster.sh: $t is missing (scripts/setup --test installs it)" >&2
    exit 2
  fi
done
# the clients and the nodes each hold a descriptor per connection
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 16384 ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
exec node bench/cluster.mjs "$@"
