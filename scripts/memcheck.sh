#!/usr/bin/env bash
# valgrind memcheck over a handful of real calls (not part of scripts/test.sh: it takes minutes).
#
#   bash scripts/memcheck.sh                  # from the host: runs itself inside the testbed
#
# Builds the module (its own build dir), boots Asterisk under memcheck with PYTHONMALLOC=malloc
# (and CONVAI_PYTHON_START_MS=600000: the interpreter starts far slower under valgrind),
# places the calls of tests/integration/memcheck_calls.py (barge-in, a hangup mid-audio, a TCP
# reset, a signed-URL 500, DTMF with a reload mid-call), stops Asterisk gracefully and prints
# the leak and error summary. Fails when any invalid access, uninitialised use, or definitely
# or indirectly lost block has a frame of the module's own code in its stack.
#
# Suppressions (each entry explains itself): Debian's /usr/lib/valgrind/python3.supp for the
# interpreter, and tests/valgrind/{cpython,asterisk}.supp for what is left of CPython's and
# Asterisk's own known noise. None of them names a function of ours.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd -P)
if [ ! -x /usr/sbin/asterisk ] && [ -z "${CONVAI_IN_TESTBED:-}" ]; then
  exec env CONVAI_IN_TESTBED=1 bash "$src/testbed/testbed.sh" run bash /src/scripts/memcheck.sh "$@"
fi
command -v valgrind >/dev/null || {
  echo "memcheck.sh: valgrind is not installed" >&2
  exit 1
}
export CONVAI_BUILD_DIR=${CONVAI_BUILD_DIR:-/var/tmp/convai-build}-memcheck
export CONVAI_STAGE_DIR=${CONVAI_STAGE_DIR:-/var/tmp/convai-stage}-memcheck
bash "$src/scripts/build.sh"
work=${CONVAI_MEMCHECK_WORKDIR:-$CONVAI_BUILD_DIR/run}
rm -rf "$work" && mkdir -p "$work"
supp=(/usr/lib/valgrind/python3.supp "$src"/tests/valgrind/*.supp)
exec python3 "$src/tests/integration/memcheck_calls.py" --module "$CONVAI_BUILD_DIR/app_elevenlabs_convai.so" \
  --python-dir "$CONVAI_STAGE_DIR/python" --workdir "$work" --suppressions "${supp[@]}"
