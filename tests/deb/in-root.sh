#!/usr/bin/env bash
# The in-root half of testbed/deb-test.sh: runs chrooted in a throw-away overlay of the testbed
# root, as PID 1's child in a private PID namespace, with the source tree copied to /build/src.
# Artifacts (the .deb, build log, lintian output) go to /build/out.
#
# Steps: build -> lintian -> apt install -> Asterisk + module load + a call through the installed
# module against the simulator -> apt remove -> apt purge -> a pre-existing elevenlabs.conf is
# left alone -> autopkgtest (debian/tests) with the null runner. Asterisk must be running and
# healthy after each package operation.
set -euo pipefail

SRC=/build/src
OUT=/build/out
PKG=asterisk-elevenlabs-convai
MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
MODDIR=/usr/lib/$MA/asterisk/modules
PYDIR=/usr/lib/$MA/$PKG/python
CONF=/etc/asterisk/elevenlabs.conf
T=/tmp/deb-test-ast            # the throw-away Asterisk instance
ASTCONF=$T/etc/asterisk.conf

T0=$(date +%s.%N)
declare -a SUMMARY=()
STEP=""
STEP_T0=$T0

log() { printf '[deb-test] %s\n' "$*"; }
secs() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { # step NAME: close the previous step (as passed) and open the next one
  [ -z "$STEP" ] || SUMMARY+=("PASS  $(printf '%-34s' "$STEP") $(secs "$STEP_T0") s")
  STEP=$1
  STEP_T0=$(date +%s.%N)
  printf '\n[deb-test] ==== %s\n' "$STEP"
}
fail() {
  log "FAIL in '$STEP': $*"
  exit 1
}
ok() { printf '[deb-test]   ok  %s\n' "$*"; }

ast() { asterisk -C "$ASTCONF" -rx "$*" 2>&1 || true; }

on_exit() {
  local rc=$?
  bash "$SRC/tests/deb/installed-call.sh" stop "$T" >/dev/null 2>&1 || true
  if [ "$rc" != 0 ]; then
    if [ -f "$T/log/messages.log" ]; then
      log "---- last lines of the Asterisk log"
      tail -n 40 "$T/log/messages.log" || true
    fi
    if [ -f "$T/sim.log" ]; then
      log "---- last lines of the simulator output"
      tail -n 20 "$T/sim.log" || true
    fi
  fi
  [ -z "$STEP" ] || [ "$rc" != 0 ] || SUMMARY+=("PASS  $(printf '%-34s' "$STEP") $(secs "$STEP_T0") s")
  [ "$rc" = 0 ] || SUMMARY+=("FAIL  $(printf '%-34s' "$STEP") $(secs "$STEP_T0") s")
  printf '\n[deb-test] ==== summary\n'
  printf '[deb-test] %s\n' "${SUMMARY[@]}"
  printf '[deb-test] total %s s: %s\n' "$(secs "$T0")" "$([ "$rc" = 0 ] && echo PASS || echo FAIL)"
  exit "$rc"
}
trap on_exit EXIT

# Asterisk answers on its control socket and reports an uptime.
healthy() { bash "$SRC/tests/deb/installed-call.sh" healthy "$T"; }

installed_status() { dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null || true; }

# ---------------------------------------------------------------------------------------------
step "build (dpkg-buildpackage -b)"
cd "$SRC"
if ! dpkg-checkbuilddeps 2>"$OUT/checkbuilddeps.txt"; then
  # The testbed's packages.txt should carry every build dependency; until it does, fetch the
  # missing ones (into the overlay only).
  log "missing build dependencies: $(cat "$OUT/checkbuilddeps.txt")"
  log "installing them with apt-get build-dep (add them to testbed/packages.txt)"
  apt-get update -q >/dev/null
  apt-get build-dep -y -q . >"$OUT/build-dep.log" 2>&1 || { cat "$OUT/build-dep.log"; fail "apt-get build-dep"; }
fi
# The source package first, from the pristine copy, so that lintian checks debian/ too.
(cd /build && dpkg-source -b src) >"$OUT/source.log" 2>&1 || { cat "$OUT/source.log"; fail "dpkg-source -b"; }
DSC=$(ls /build/app-elevenlabs-convai_*.dsc)
ok "source package $(basename "$DSC") ($(du -h --apparent-size /build/app-elevenlabs-convai_*.tar.* | cut -f1 | head -n 1))"
if ! dpkg-buildpackage -us -uc -b >"$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"
  fail "dpkg-buildpackage failed (log: out/deb/build.log)"
fi
grep -E '^(dpkg-deb: building|dpkg-gencontrol: warning)|ring_stress +OK|^Ok:' "$OUT/build.log" | sed 's/^/[deb-test]   /' || true
cd /build
DEB=$(ls /build/${PKG}_*.deb)
CHANGES=$(ls /build/app-elevenlabs-convai_*.changes)
cp "$DEB" "$OUT/"
ok "built $(basename "$DEB")"
dpkg-deb -f "$DEB" Package Version Architecture Section Installed-Size Depends | sed 's/^/[deb-test]   /'
DEPENDS=$(dpkg-deb -f "$DEB" Depends)
PYVER=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
for want in "asterisk-abi-$(sed -n 's/^#define AST_BUILDOPT_SUM "\(.*\)"/\1/p' /usr/include/asterisk/buildopts.h)" \
  "libpython$PYVER " python3-websockets python3-aiohttp python3-cffi-backend; do
  case "$DEPENDS" in *"$want"*) ok "Depends has ${want% }" ;; *) fail "Depends lacks '${want% }': $DEPENDS" ;; esac
done

# ---------------------------------------------------------------------------------------------
step "lintian"
# As an unprivileged user (lintian warns when run as root); fail on errors and on warnings not
# overridden in debian/*.lintian-overrides (each override carries its reason).
chmod -R a+rX /build
lintian_rc=0
setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=/tmp \
  lintian --info --display-info --pedantic --show-overrides --fail-on error,warning "$CHANGES" "$DSC" \
  >"$OUT/lintian.txt" 2>&1 || lintian_rc=$?
if [ -s "$OUT/lintian.txt" ]; then sed 's/^/[deb-test]   /' "$OUT/lintian.txt"; else ok "lintian: no tags at all"; fi
[ "$lintian_rc" = 0 ] || fail "lintian found errors or unexplained warnings (exit $lintian_rc)"
ok "lintian: no errors, no warnings without an override"

# ---------------------------------------------------------------------------------------------
step "apt-get install ./${PKG}_*.deb"
[ ! -e "$MODDIR/app_elevenlabs_convai.so" ] || fail "$MODDIR/app_elevenlabs_convai.so exists before the install"
[ ! -e "$CONF" ] || fail "$CONF exists before the install (the root is not clean)"
apt-get install -y -q "./$(basename "$DEB")" </dev/null >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; fail "apt-get install"; }
[ "$(installed_status)" = "ii " ] || fail "dpkg status is '$(installed_status)', not ii"
ok "installed ($(dpkg-query -W -f='${Version}' "$PKG"))"
[ -f "$MODDIR/app_elevenlabs_convai.so" ] || fail "the module is not in $MODDIR"
ok "module in $MODDIR"
if [ ! -f "$PYDIR/convai/host.py" ] || ! compgen -G "$PYDIR/convai/_native.cpython-*.so" >/dev/null; then
  fail "the Python package is not in $PYDIR"
fi
ok "Python package (with its cffi extension) in $PYDIR"
compgen -G "$PYDIR/convai/__pycache__/host.cpython-*.pyc" >/dev/null || fail "py3compile did not byte-compile $PYDIR"
ok "byte-compiled by py3compile"
[ -f /usr/share/asterisk/documentation/thirdparty/app_elevenlabs_convai-en_US.xml ] || fail "XML docs missing"
ok "XML docs in /usr/share/asterisk/documentation/thirdparty"
for f in elevenlabs.conf.example copyright README.md ARCHITECTURE.md; do
  compgen -G "/usr/share/doc/$PKG/$f*" >/dev/null || fail "/usr/share/doc/$PKG/$f is missing"
done
ok "example config and docs in /usr/share/doc/$PKG"
[ -f "$CONF" ] || fail "$CONF was not created"
perm=$(stat -c '%a %U:%G' "$CONF")
[ "$perm" = "640 root:asterisk" ] || fail "$CONF is '$perm', not '640 root:asterisk'"
cmp -s "$CONF" /usr/share/doc/$PKG/elevenlabs.conf.example || fail "$CONF differs from the example"
ok "$CONF created from the example, $perm"
PYDIR=$PYDIR python3 -I -B -c '
import os, sys
sys.path.insert(0, os.environ["PYDIR"])
import convai._native, websockets, aiohttp
print("[deb-test]   ok  the installed convai._native imports under", sys.version.split()[0])'

# ---------------------------------------------------------------------------------------------
step "Asterisk + the installed module"
# tests/deb/installed-call.sh is shared with the autopkgtest (debian/tests/install-and-call).
bash "$SRC/tests/deb/installed-call.sh" start "$T" "$SRC" | sed 's/^\[installed-call\]/[deb-test]/'

# ---------------------------------------------------------------------------------------------
step "a call through the installed module"
bash "$SRC/tests/deb/installed-call.sh" call "$T" | sed 's/^\[installed-call\]/[deb-test]/'

# ---------------------------------------------------------------------------------------------
step "apt-get remove"
apt-get remove -y -q "$PKG" </dev/null >"$OUT/remove.log" 2>&1 || { cat "$OUT/remove.log"; fail "apt-get remove"; }
if grep -i "warning" "$OUT/remove.log"; then fail "dpkg warned during the removal"; fi
[ "$(installed_status)" = "rc " ] || fail "dpkg status is '$(installed_status)', not rc"
ok "removed, configuration kept (dpkg status rc)"
[ ! -e "$MODDIR/app_elevenlabs_convai.so" ] || fail "the module is still in $MODDIR"
if [ -e "$(dirname "$PYDIR")" ]; then
  fail "$(dirname "$PYDIR") is still there: $(find "$(dirname "$PYDIR")" | head)"
fi
[ ! -e /usr/share/asterisk/documentation/thirdparty/app_elevenlabs_convai-en_US.xml ] || fail "the XML docs are still there"
ok "module, Python package (with the .pyc files) and XML docs gone"
[ -f "$CONF" ] || fail "$CONF was removed by 'remove'"
ok "$CONF kept ($(stat -c '%a %U:%G' "$CONF"))"
healthy || fail "Asterisk is not healthy after the removal"
ok "Asterisk still running and healthy: $(ast 'core show uptime' | head -n 1)"

# ---------------------------------------------------------------------------------------------
step "apt-get purge"
apt-get purge -y -q "$PKG" </dev/null >"$OUT/purge.log" 2>&1 || { cat "$OUT/purge.log"; fail "apt-get purge"; }
if grep -i "warning" "$OUT/purge.log"; then fail "dpkg warned during the purge"; fi
[ -z "$(installed_status)" ] || [ "$(installed_status)" = "un " ] || fail "dpkg status is '$(installed_status)' after the purge"
ok "purged (dpkg knows nothing of it)"
[ ! -e "$CONF" ] || fail "$CONF survived the purge"
[ ! -e /var/lib/$PKG ] || fail "/var/lib/$PKG survived the purge"
ok "$CONF removed by the purge"
healthy || fail "Asterisk is not healthy after the purge"
ok "Asterisk still running and healthy: $(ast 'core show uptime' | head -n 1)"

# ---------------------------------------------------------------------------------------------
step "a pre-existing elevenlabs.conf"
# An admin's own file (or one from another ElevenLabs module, which used the same name) is never
# touched: no prompt, no change on install, and purge leaves it, since the package did not make it.
printf '; my own\n[general]\ndebug = yes\n' >"$CONF"
chmod 0600 "$CONF"
before=$(sha256sum "$CONF")
apt-get install -y -q "./$(basename "$DEB")" </dev/null >"$OUT/install2.log" 2>&1 || { cat "$OUT/install2.log"; fail "apt-get install over an existing $CONF"; }
if [ "$(sha256sum "$CONF")" != "$before" ] || [ "$(stat -c '%a %U:%G' "$CONF")" != "600 root:root" ]; then
  fail "the install changed the existing $CONF"
fi
ok "install kept the existing $CONF as it was, without a prompt"
apt-get purge -y -q "$PKG" </dev/null >"$OUT/purge2.log" 2>&1 || { cat "$OUT/purge2.log"; fail "apt-get purge"; }
[ "$(sha256sum "$CONF" 2>/dev/null)" = "$before" ] || fail "the purge removed a $CONF the package did not create"
ok "purge left it alone"
rm -f "$CONF"
healthy || fail "Asterisk is not healthy"
ok "Asterisk still running and healthy"

# ---------------------------------------------------------------------------------------------
step "autopkgtest (debian/tests, null runner)"
# Debian's CI way: autopkgtest installs the .deb and the test's Depends, then runs
# debian/tests/install-and-call (the same installed-call.sh as above).
bash "$SRC/tests/deb/installed-call.sh" stop "$T" >/dev/null 2>&1 || true
autopkgtest --output-dir "$OUT/autopkgtest" "$DEB" "$SRC" -- null >"$OUT/autopkgtest.log" 2>&1 ||
  { tail -n 60 "$OUT/autopkgtest.log"; fail "autopkgtest failed (log: out/deb/autopkgtest.log)"; }
grep -E '^install-and-call +[A-Z]+' "$OUT/autopkgtest.log" | sed 's/^/[deb-test]   /'
grep -qE '^install-and-call +PASS' "$OUT/autopkgtest.log" || fail "install-and-call did not PASS"
ok "autopkgtest: install-and-call PASS"
apt-get purge -y -q "$PKG" </dev/null >"$OUT/purge3.log" 2>&1 || { cat "$OUT/purge3.log"; fail "apt-get purge after autopkgtest"; }

# ---------------------------------------------------------------------------------------------
step "installed size"
size=$(dpkg-deb -f "$DEB" Installed-Size)
echo "[deb-test]   Installed-Size (dpkg-deb -I): $size KiB"
mkdir -p /tmp/deb-extract
dpkg-deb -x "$DEB" /tmp/deb-extract
echo "[deb-test]   du of the files (apparent size):"
(
  cd /tmp/deb-extract
  for d in . usr/lib/*/asterisk/modules usr/lib/*/"$PKG" usr/share/asterisk usr/share/doc/"$PKG" usr/share/"$PKG"; do
    du -sh --apparent-size "$d"
  done
) | sed 's/^/[deb-test]     /'
echo "[deb-test]   .deb file: $(stat -c %s "$DEB") bytes"
echo "[deb-test]   lintian output ($OUT/lintian.txt):"
if [ -s "$OUT/lintian.txt" ]; then sed 's/^/[deb-test]     /' "$OUT/lintian.txt"; else echo "[deb-test]     (none)"; fi
