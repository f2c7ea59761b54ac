#!/usr/bin/env bash
# Compile-time compatibility with the Pythons no testbed root has. The roots cover Python 3.11
# (bookworm-ast20), 3.13 (trixie-ast23) and 3.14 (sid) with their own builds; this builds the
# module and its cffi extension with every other CPython from 3.11 to 3.14 found on the host
# (3.12 on this kind of machine, from pyenv) against the installed Asterisk headers of every
# flavour root, with meson --werror: -Wall -Wextra and implicit declarations as errors, so a
# function a Python release lacks (PyErr_GetRaisedException before 3.12) fails here, not at
# `module load`. Compile only: nothing is loaded or run.
#
# Usage: scripts/pycompat.sh [--flavour F] [PYTHON...]
#   --flavour F  only F's Asterisk headers (default: every flavour's; scripts/test.sh runs one a cell)
#   PYTHON       the interpreters (default: python3.N, N = 11..14, from PATH and pyenv, that no
#                flavour root carries)
# Exits 0 when every build passed, 1 on any failure, 77 when there is no such Python here.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
TB=$REPO/testbed/testbed.sh
# Outside the source tree (meson refuses include dirs inside it); the venvs are kept there.
WORK=${CONVAI_PYCOMPAT_DIR:-/var/tmp/convai-pycompat}

# The versions the roots carry: `testbed.sh flavours` prints name, suite, Python, Asterisk.
mapfile -t covered < <(bash "$TB" flavours | awk '{ print $3 }')
find_pythons() {
  local n cand
  for n in 11 12 13 14; do
    printf '%s\n' "${covered[@]}" | grep -qxF "3.$n" && continue
    # (pyenv's shims are on PATH but fail for a version not selected: try each for real)
    for cand in "$(command -v "python3.$n" || true)" /root/.pyenv/versions/3."$n".*/bin/python3."$n"; do
      [ -x "$cand" ] && "$cand" -c 'import sys' 2>/dev/null && {
        echo "$cand"
        break
      }
    done
  done
}
mapfile -t flavours < <(bash "$TB" flavours | awk '{ print $1 }')
if [ "${1:-}" = --flavour ]; then
  flavours=("${2:?--flavour needs a flavour}")
  shift 2
fi
if [ $# -gt 0 ]; then pythons=("$@"); else mapfile -t pythons < <(find_pythons); fi
if [ ${#pythons[@]} -eq 0 ]; then
  echo "pycompat: no CPython 3.11-3.14 beyond the roots' own (${covered[*]}) on this machine"
  exit 77
fi

# Only asterisk.h and asterisk/ from a root: its libc headers must not shadow the host's.
ast_headers() { # ast_headers FLAVOUR -> an include dir
  local root inc=$WORK/include-$1
  root=$(bash "$TB" --flavour "$1" status 2>/dev/null | awk '/^root:/ { print $2; exit }')
  [ -f "$root/usr/include/asterisk.h" ] || return 1
  rm -rf "$inc" && mkdir -p "$inc"
  cp -a "$root/usr/include/asterisk.h" "$root/usr/include/asterisk" "$inc/"
  echo "$inc"
}

rc=0
for py in "${pythons[@]}"; do
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  # Meson runs on this Python, so its find_installation('python3') is this one; cffi for the
  # extension's generator. The headers and libpython are the base interpreter's.
  # Locked: scripts/test.sh runs one flavour a lane, side by side.
  venv=$WORK/venv-$ver
  mkdir -p "$WORK"
  (
    flock 9
    [ -x "$venv/bin/meson" ] && "$venv/bin/python" -c 'import cffi' 2>/dev/null || {
      rm -rf "$venv" && "$py" -m venv "$venv" &&
        "$venv/bin/python" -m pip install -q --disable-pip-version-check cffi meson ninja
    }
  ) 9>"$WORK/venv-$ver.lock"
  for f in "${flavours[@]}"; do
    build=$WORK/build-$ver-$f
    if ! inc=$(ast_headers "$f"); then
      echo "pycompat: Python $ver x $f: FAIL (the $f root has no Asterisk headers: provision it)"
      rc=1
      continue
    fi
    rm -rf "$build"
    if PATH=$venv/bin:$PATH meson setup --werror -Dasterisk_includedir="$inc" \
      -Dpython_deps=disabled "$build" "$REPO" >"$build.log" 2>&1 &&
      PATH=$venv/bin:$PATH ninja -C "$build" >>"$build.log" 2>&1; then
      echo "pycompat: Python $ver ($py) x $f's Asterisk headers: PASS (warning-free)"
    else
      echo "pycompat: Python $ver ($py) x $f's Asterisk headers: FAIL; the end of $build.log:"
      tail -n 25 "$build.log"
      rc=1
    fi
  done
done
exit "$rc"
