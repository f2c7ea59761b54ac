#!/usr/bin/env bash
# Build the module and the Python package with meson, inside the testbed (or any machine with
# asterisk-dev and python3-dev), and stage them for the tests (testbed.sh run sets the two dirs
# per worktree, /var/tmp/convai-{build,stage}.ID):
#   $CONVAI_BUILD_DIR/app_elevenlabs_convai.so   the module
#   $CONVAI_STAGE_DIR/python                      the convai package with its cffi extension
# The XML docs go into the system's Asterisk documentation dir so `core show application` works.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${CONVAI_BUILD_DIR:-/var/tmp/convai-build}
stage=${CONVAI_STAGE_DIR:-/var/tmp/convai-stage}

# -Dwerror=true: the tests' build is warning-free (-Wall -Wextra) against every flavour's
# Asterisk and Python, or it fails.
# CONVAI_SANITIZE=1: the ASan+UBSan build (meson -Dsanitize=true; scripts/sanitize.sh uses it).
sanitize=-Dsanitize=$([ "${CONVAI_SANITIZE:-0}" = 1 ] && echo true || echo false)
if [ -f "$build/build.ninja" ]; then
  # A build dir from before a new option was added refuses it on --reconfigure: start afresh.
  meson setup --reconfigure -Dwerror=true "$build" "$src" "$sanitize" >/dev/null ||
    meson setup --wipe -Dwerror=true "$build" "$src" "$sanitize" >/dev/null
else
  meson setup "$build" "$src" -Dwerror=true --prefix=/usr \
    --libdir="lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)" "$sanitize"
fi
ninja -C "$build"
rm -rf "$stage"
DESTDIR="$stage" meson install -C "$build" --quiet
pydir=$(find "$stage" -type d -name convai -path '*asterisk-elevenlabs-convai*' | head -n 1)
ln -sfn "$(dirname "$pydir")" "$stage/python"
xml=$(find "$stage" -name 'app_elevenlabs_convai-en_US.xml' | head -n 1)
# The running Asterisk's data dir: Debian's /usr/share/asterisk, a source install's /var/lib/asterisk.
datadir=${CONVAI_ASTERISK_DATADIR:-}
for d in /usr/share/asterisk /var/lib/asterisk; do
  [ -n "$datadir" ] || [ ! -f "$d/documentation/core-en_US.xml" ] || datadir=$d
done
install -D -m 644 "$xml" "${datadir:-/usr/share/asterisk}/documentation/thirdparty/app_elevenlabs_convai-en_US.xml"
echo "built: $build/app_elevenlabs_convai.so; python: $stage/python"
