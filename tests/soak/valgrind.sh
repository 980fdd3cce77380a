#!/usr/bin/env bash
# make test-valgrind: the e2e suite (tests/e2e/*.test.mjs) once, against the
# release parleyd run under valgrind memcheck with leak checking. Fails when a
# test fails or when any server process reported an error (invalid access, use
# of uninitialised memory, a definite or indirect leak). Each server writes its
# own log (vg.<pid>.log under $VG_DIR); the tests read theirs on stop
# (tests/lib/server.mjs, PARLEYD_WRAPPER_LOG) and this script sums them all.
#   VG_SCALE   multiplier of the suite's waits (10)
#   VG_DIR     where the logs go (build/valgrind)
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
bin=$top/build/release/parleyd
scale=${VG_SCALE:-10}
dir=${VG_DIR:-$top/build/valgrind}

if ! command -v valgrind >/dev/null 2>&1; then
  echo "test-valgrind: installing valgrind"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends valgrind >/dev/null || { echo "cannot install valgrind" >&2; exit 2; }
fi
rm -rf "$dir" && mkdir -p "$dir"

opts="--tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect"
opts="$opts --errors-for-leak-kinds=definite,indirect --num-callers=30 --fair-sched=yes"
opts="$opts --log-file=$dir/vg.%p.log"

t0=$(date +%s)
cd "$top/tests" && PARLEYD=$bin PARLEYD_WRAPPER="valgrind $opts" PARLEYD_WRAPPER_LOG="$dir/vg.%p.log" \
  PARLEY_TEST_TIME_SCALE=$scale node --test --test-reporter=spec --test-concurrency=1 e2e/*.test.mjs \
  >"$dir/suite.log" 2>&1
rc=$?
t1=$(date +%s)
grep -E '^ℹ (tests|pass|fail|cancelled|duration_ms)' "$dir/suite.log"
[ $rc = 0 ] || { echo "--- failing tests:"; grep -E '^✖ ' "$dir/suite.log" | grep -v '^✖ failing tests' | sort -u | head -40; }

logs=$(ls "$dir"/vg.*.log 2>/dev/null | wc -l)
done_logs=$(grep -l 'ERROR SUMMARY' "$dir"/vg.*.log 2>/dev/null | wc -l)
bad=$(grep -lE 'ERROR SUMMARY: [1-9]' "$dir"/vg.*.log 2>/dev/null)
echo "valgrind: $logs server processes, $done_logs exited with a summary (the others were killed -9 or never exited)"
if [ -n "$bad" ]; then
  echo "valgrind: errors in $(echo "$bad" | wc -l) of them:"
  for f in $bad; do echo "== $f"; grep -E 'ERROR SUMMARY|definitely lost|indirectly lost|Invalid|uninitialised|^==[0-9]+== +(at|by) ' "$f" | head -40; done
  rc=1
else
  echo "valgrind: no errors, no definite or indirect leaks"
fi
echo "test-valgrind: $((t1 - t0)) s, suite exit status $rc; logs in $dir (suite.log, vg.*.log)"
exit $rc
