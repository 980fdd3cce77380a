#!/bin/sh
# Runs every parley-bench scenario against parleyd (default batching AND PARLEY_BATCH_MAX=1)
# and the two reference servers (node-ref, uws-ref) in one run, and prints a table of medians
# with ratios parleyd / baseline. Arguments go to bench/compare.mjs (--reps N, --quick,
# --only ..., --servers ...|all, --out FILE); see `node bench/compare.mjs --help`.
#
# Needs: build/release/parleyd (make build), Node.js with npm (bench/node_modules/ws is
# installed here on first use from bench/package-lock.json), and the baselines in
# ../shared/baselines (or NODE_REF / UWS_REF pointing at their wrappers; missing ones are skipped).
set -e
cd "$(dirname "$0")/.."
if [ ! -x "${PARLEYD:-build/release/parleyd}" ]; then
  echo "bench/run.sh: ${PARLEYD:-build/release/parleyd} is missing: run make build first" >&2
  exit 2
fi
if ! command -v node >/dev/null 2>&1; then
  echo "bench/run.sh: node is missing (scripts/setup --test installs it)" >&2
  exit 2
fi
if [ ! -d bench/node_modules/ws ]; then
  echo "bench/run.sh: npm ci in bench/ (ws)" >&2
  (cd bench && npm ci --no-audit --no-fund --silent)
fi
# idle-memory opens 2000 sockets: client and server each need that many descriptors.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 8192 ]; then
  ulimit -n 8192 2>/dev/null || echo "bench/run.sh: ulimit -n is $(ulimit -n); idle-memory will open fewer sockets" >&2
fi
exec node bench/compare.mjs "$@"
