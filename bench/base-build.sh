#!/bin/sh
# Builds the parleyd of a git commit, for `make bench BASE=<ref>` (bench/run.sh --base <ref>).
#
#   bench/base-build.sh <git ref>      prints the path of that commit's parleyd on stdout
#
# The commit is checked out in a detached git worktree, build/base-<short sha> (build/ is
# ignored by git, `make clean` removes it; a stale registration is pruned here), and built
# there like `make build` builds the tree: CMake + Ninja, Release, -O2 -g -DNDEBUG, target
# parleyd only. If that commit's own warnings fail the build under -Werror with today's
# compiler, it is configured again with -DCMAKE_C_FLAGS=-Wno-error. A finished build is reused
# (the sha names the directory, so it cannot be stale). Nothing outside build/base-<sha> and
# git's worktree list is touched: the working tree and its uncommitted changes stay as they are.
set -eu
cd "$(dirname "$0")/.."
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: bench/base-build.sh <git ref>" >&2
  exit 2
fi
sha=$(git rev-parse --verify --quiet "$1^{commit}") || {
  echo "bench/base-build.sh: '$1' is not a commit of this repository" >&2
  exit 2
}
short=$(git rev-parse --short=10 "$sha")
dir=build/base-$short
bin=$dir/build/release/parleyd
log=build/base-$short.log

if [ -x "$bin" ] && [ -f "$dir/.parley-base-ok" ]; then
  echo "bench/base-build.sh: $1 = $short, already built: $bin" >&2
  echo "$bin"
  exit 0
fi

git worktree prune
if [ -e "$dir" ] && [ "$(git -C "$dir" rev-parse HEAD 2>/dev/null)" != "$sha" ]; then
  echo "bench/base-build.sh: $dir is not a worktree at $short: removing it" >&2
  git worktree remove --force "$dir" 2>/dev/null || rm -rf "$dir"
  git worktree prune
fi
mkdir -p build
if [ ! -e "$dir" ]; then
  echo "bench/base-build.sh: $1 = $short: git worktree add --detach $dir" >&2
  git worktree add --detach --quiet "$dir" "$sha"
fi

configure() {
  cmake -S "$dir" -B "$dir/build/release" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS_RELEASE="-O2 -g -DNDEBUG" "$@" >>"$log" 2>&1
}
echo "bench/base-build.sh: building parleyd at $short (log: $log)" >&2
: >"$log"
if ! { configure -DCMAKE_C_FLAGS= && ninja -C "$dir/build/release" parleyd >>"$log" 2>&1; }; then
  echo "bench/base-build.sh: the build at $short failed; trying again with -DCMAKE_C_FLAGS=-Wno-error" >&2
  if ! { configure -DCMAKE_C_FLAGS=-Wno-error && ninja -C "$dir/build/release" parleyd >>"$log" 2>&1; }; then
    echo "bench/base-build.sh: parleyd at $short does not build; the last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
fi
touch "$dir/.parley-base-ok"
echo "$bin"
