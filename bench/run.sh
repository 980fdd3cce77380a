#!/bin/sh
# Runs the benchmark scenarios against parleyd (default batching AND PARLEY_BATCH_MAX=1 where it
# matters) and the two reference servers (node-ref, uws-ref) in one run, and prints a table of
# medians with ratios parleyd / every other server. `make bench` runs it.
#
#   bench/run.sh [--base <git ref>] [compare.mjs arguments: --reps N, --quick, --suite load|node|all,
#                 --only ..., --servers ...|all, --out FILE]; see `node bench/compare.mjs --help`.
#
# --base REF: builds that commit's parleyd in build/base-<short sha> (bench/base-build.sh, a git
# worktree) and runs it as the extra server parleyd-base in the same rounds (make bench BASE=REF).
#
# Needs: build/release/parleyd and build/release/bench/load/parley-load (make build), Node.js
# (the runner; with npm, bench/node_modules/ws is installed on first use from bench/package-lock.json
# for the Node generator), and the baselines in ../shared/baselines (or NODE_REF / UWS_REF pointing
# at their wrappers; missing ones are skipped).
set -e
cd "$(dirname "$0")/.."

base=
first=1
for a in "$@"; do
  # take --base REF / --base=REF out of the arguments, keep the rest in order
  if [ $first = 1 ]; then set --; first=0; fi
  case "$a" in
    --base=*) base=${a#--base=} ;;
    --base) base=. ;;
    *) if [ "$base" = . ]; then base=$a; else set -- "$@" "$a"; fi ;;
  esac
done
if [ "$base" = . ]; then
  echo "bench/run.sh: --base needs a git ref" >&2
  exit 2
fi

if [ ! -x "${PARLEYD:-build/release/parleyd}" ]; then
  echo "bench/run.sh: ${PARLEYD:-build/release/parleyd} is missing: run make build first" >&2
  exit 2
fi
if ! command -v node >/dev/null 2>&1; then
  echo "bench/run.sh: node is missing (scripts/setup --test installs it)" >&2
  exit 2
fi
load=${PARLEY_LOAD:-build/release/bench/load/parley-load}
if [ ! -x "$load" ] && [ -z "${PARLEY_LOAD:-}" ] && [ -f build/release/build.ninja ]; then
  echo "bench/run.sh: building $load" >&2
  ninja -C build/release --quiet parley-load
fi
if [ ! -d bench/node_modules/ws ]; then
  echo "bench/run.sh: npm ci in bench/ (ws)" >&2
  (cd bench && npm ci --no-audit --no-fund --silent)
fi
# The baselines install their dependencies on first start (uws-ref builds better-sqlite3 from
# source, about 2 minutes): longer than a generator waits for a server to listen. Install first.
for ref in "${NODE_REF:-../shared/baselines/node-ref/parleyd-node}" "${UWS_REF:-../shared/baselines/uws-ref/parleyd-uws}"; do
  dir=$(dirname -- "$ref")
  if [ -f "$dir/package-lock.json" ] && [ -w "$dir" ] && [ ! -d "$dir/node_modules" ]; then
    echo "bench/run.sh: npm ci in $dir (first use of the baseline)" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --silent) >&2 || echo "bench/run.sh: npm ci in $dir failed: its cells will fail" >&2
  fi
done
if [ -n "$base" ]; then
  bin=$(bench/base-build.sh "$base")
  label="$base = $(git rev-parse --short=10 "$base^{commit}")"
  set -- --base-bin "$bin" --base-label "$label" "$@"
fi
# load/conns opens 19,000 sockets (idle-memory 2,000): the generator and the server each need
# that many descriptors. Take the hard limit; parley-load says so clearly if it is too low.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 19200 ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 19100 ]; then
    echo "bench/run.sh: ulimit -n is $(ulimit -n) (hard $(ulimit -Hn)): load/conns needs 19,100; it will fail, the rest runs" >&2
  fi
fi
# parleyd drains for 15 s on SIGTERM by default (PARLEY_DRAIN_*): not between benchmark runs
export PARLEY_DRAIN_DELAY_S=0 PARLEY_DRAIN_SECONDS=0
exec node bench/compare.mjs "$@"
