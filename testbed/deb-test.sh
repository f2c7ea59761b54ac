#!/usr/bin/env bash
# The Debian package test (issue 6), one phase of scripts/test.sh:  bash testbed/deb-test.sh
#
# In a private mount and PID namespace it mounts an overlayfs over the testbed root, so nothing
# it installs reaches the cached root, copies the source tree into the overlay and runs
# tests/deb/in-root.sh there, which:
#   builds the package with dpkg-buildpackage against Debian's asterisk-dev, runs lintian,
#   installs it with `apt-get install ./asterisk-elevenlabs-convai_*.deb`, starts a throw-away
#   Asterisk whose module dir is the system one, loads the installed module, places a call against
#   the ConvAI simulator, then `apt-get remove` and `apt-get purge` with Asterisk still running and
#   healthy after each step, and prints the lintian output and the installed size.
# When the namespace ends, every process in it (Asterisk, the simulator) ends and every mount goes.
#
# Environment:
#   CONVAI_TESTBED   the testbed root (default /var/cache/app-elevenlabs-convai/testbed); provisioned
#                    with testbed/testbed.sh when it is not ready
#   CONVAI_DEB_OUT   where the .deb, the build log and the lintian output are copied
#                    (default <repo>/out/deb)
#   CONVAI_DEB_KEEP  1: keep the overlay's upper dir (what the test changed) and print its path
# Exit status: 0 when every step passed.
# shellcheck disable=SC2016,SC2317 # the inner script is single-quoted on purpose; cleanup runs from the EXIT trap
set -euo pipefail

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}
export PATH LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/.." && pwd -P)
ROOT=${CONVAI_TESTBED:-/var/cache/app-elevenlabs-convai/testbed}
case $ROOT in /*) ;; *) ROOT=$PWD/$ROOT ;; esac
ROOT=$(realpath -m -- "$ROOT")
OUT=${CONVAI_DEB_OUT:-$REPO/out/deb}

log() { printf '[deb-test] %s\n' "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (unshare, mount and chroot need it)"
command -v unshare >/dev/null || die "unshare (util-linux) is missing"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || die "this kernel has no overlayfs"

# A root without testbed.sh's completion marker is used as it is when it can build and run the
# package (a hand-made sid root); otherwise testbed.sh provisions the root (idempotent and cached:
# it only installs what testbed/packages.txt added).
if [ -f "$ROOT/.convai-testbed" ] || [ ! -x "$ROOT/usr/sbin/asterisk" ] || [ ! -x "$ROOT/usr/bin/dpkg-buildpackage" ]; then
  bash "$HERE/testbed.sh" provision
else
  log "using the unmarked root $ROOT as it is (not provisioned by testbed.sh)"
fi
[ -x "$ROOT/usr/sbin/asterisk" ] || die "no Asterisk in $ROOT"

# testbed.sh rebuilds the root under an exclusive lock: hold it shared, since changing an
# overlay's lower dir while it is mounted is undefined.
mkdir -p -- "$(dirname -- "$ROOT")"
exec 9>"$ROOT.lock"
flock -s 9

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/convai-deb-test.XXXXXX")
cleanup() {
  if [ "${CONVAI_DEB_KEEP:-0}" = 1 ]; then
    log "kept the overlay's changes: $WORK/upper"
  else
    rm -rf --one-file-system -- "$WORK"
  fi
}
trap cleanup EXIT
mkdir -p "$WORK/upper" "$WORK/work" "$WORK/merged" "$WORK/out"

log "root $ROOT, overlay $WORK"
rc=0
# --pid --fork --kill-child: the inner shell is PID 1 of a new PID namespace, so whatever the
# test started dies with it, even on a failure or a signal.
unshare --mount --pid --fork --kill-child --propagation private -- \
  bash -euo pipefail -c '
    root=$1 work=$2 repo=$3
    m=$work/merged
    mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/work" "$m"
    mount -t proc proc "$m/proc"
    mount -t sysfs sysfs "$m/sys" 2>/dev/null || true
    mount --bind /dev "$m/dev"
    mount --bind /dev/pts "$m/dev/pts" 2>/dev/null || true
    mkdir -p "$m/dev/shm"
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$m/dev/shm"
    mkdir -p "$m/build/src" "$m/build/out"
    mount --bind "$work/out" "$m/build/out"
    rm -f "$m/etc/resolv.conf"
    cp -L /etc/resolv.conf "$m/etc/resolv.conf" 2>/dev/null || true
    # dpkg-buildpackage writes next to the source tree and into debian/: build a copy of what
    # git would commit (tracked plus untracked-but-not-ignored files); without git, the tree
    # minus build trees and caches.
    excl=(--exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache
      --exclude=.hypothesis)
    if command -v git >/dev/null && git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      git -C "$repo" ls-files -z -co --exclude-standard |
        while IFS= read -r -d "" f; do [ -e "$repo/$f" ] && printf "%s\0" "$f"; done |
        tar -C "$repo" "${excl[@]}" --null -T - -cf - | tar -C "$m/build/src" -xf -
    else
      tar -C "$repo" "${excl[@]}" --exclude=./.git --exclude=./.venv --exclude=./out --exclude="./obj-*" \
        --exclude=./build --exclude="./_build*" -cf - . | tar -C "$m/build/src" -xf -
    fi
    exec chroot "$m" /usr/bin/env -i HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      DEBIAN_FRONTEND=noninteractive ${CI:+CI=$CI} \
      bash /build/src/tests/deb/in-root.sh
  ' deb-test "$ROOT" "$WORK" "$REPO" || rc=$?

# The in-root script leaves the .deb and the logs in /build/out (a bind of $WORK/out).
mkdir -p -- "$OUT"
if compgen -G "$WORK/out/*" >/dev/null; then
  cp -a -- "$WORK"/out/. "$OUT"/
  log "artifacts in $OUT: $(cd "$WORK/out" && printf '%s ' *)"
fi
if [ "$rc" = 0 ]; then
  log "PASS"
else
  log "FAIL (exit $rc)"
fi
exit "$rc"
