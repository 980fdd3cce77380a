#!/usr/bin/env bash
# The steps of deploy/docker/Dockerfile as one script: the Dockerfile's RUN lines
# call it, and deploy/check runs the same commands on a Debian 12 machine that has
# no Docker engine (build, install into a staging prefix, start the installed
# parleyd as an unprivileged user, probe it with the image's health check).
#
#   steps.sh build-deps                  the build stage's packages (scripts/setup:
#                                        compiler, CMake, Ninja and the -dev libraries)
#   steps.sh build SRC BUILD PREFIX [DESTDIR]
#                                        configure SRC in BUILD (Release, -O2), build
#                                        parleyd, install it and the web client into
#                                        DESTDIR/PREFIX (bin/parleyd, share/parley/web);
#                                        the binary looks for its web client in
#                                        PREFIX/share/parley/web
#   steps.sh runtime-packages            prints the final image's packages: the shared
#                                        libraries parleyd links, nothing else
#   steps.sh runtime-deps                installs them (apt-get) and empties apt's lists
#   steps.sh user [ROOT]                 the unprivileged user parley (uid/gid 10001)
#                                        and its data directory /var/lib/parley (mode
#                                        0700); ROOT: in the tree ROOT (useradd --prefix)
set -euo pipefail

USER_ID=10001
DATA_DIR=/var/lib/parley
# One package per library parleyd links (readelf -d: NEEDED); deploy/check compares
# this list with what the installed binary actually loads (ldd + dpkg -S).
RUNTIME_PACKAGES=(libuv1 libjansson4 libsodium23 libsqlite3-0 libnettle8 libhiredis0.14 libpq5)

die() { echo "steps.sh: $*" >&2; exit 1; }

cmd=${1:-}
[ -n "$cmd" ] && shift
case "$cmd" in
  build-deps)
    here=$(cd "$(dirname "$0")/../.." && pwd)
    "$here/scripts/setup"
    ;;
  build)
    [ $# -ge 3 ] || die "usage: steps.sh build SRC BUILD PREFIX [DESTDIR]"
    src=$1 build=$2 prefix=$3 destdir=${4:-}
    cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG" -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
    cmake --build "$build" --target parleyd-installed
    DESTDIR=$destdir cmake --install "$build" --strip
    ;;
  runtime-packages)
    printf '%s\n' "${RUNTIME_PACKAGES[@]}"
    ;;
  runtime-deps)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${RUNTIME_PACKAGES[@]}" >/dev/null
    rm -rf /var/lib/apt/lists/*
    ;;
  user)
    root=${1:-}
    prefix=(); [ -n "$root" ] && prefix=(--prefix "$root")
    groupadd "${prefix[@]}" --gid "$USER_ID" parley
    useradd "${prefix[@]}" --uid "$USER_ID" --gid "$USER_ID" --no-create-home --no-log-init \
      --home-dir "$DATA_DIR" --shell /usr/sbin/nologin parley
    install -d -o "$USER_ID" -g "$USER_ID" -m 0700 "$root$DATA_DIR"
    ;;
  *)
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
