#!/usr/bin/env bash
# The integration tests once more against an AddressSanitizer + UndefinedBehaviorSanitizer build
# of the module (meson -Dsanitize=true), inside the testbed (scripts/test.sh runs it, or:
# testbed/testbed.sh run bash /src/scripts/sanitize.sh [PYTEST_ARGS...]).
#
# Asterisk and CPython are not instrumented; the module and its cffi extension are, and the
# ASan runtime they link is preloaded into Asterisk as the ASan docs require ("ASan runtime
# does not come first" otherwise). Reports go to files (ASan: log_path); the run fails on any
# report, even when every test passed. Leak detection is off here (scripts/memcheck.sh).
#
# The subset (the default PYTEST_ARGS): the real-call tests over Local channels, the fault
# matrix, the operator surface (config, reload, CLI, AMI), the module's load/unload tests and the
# config-parser property test;
# the SIP/RTP tests run the same media loop and are left out to keep this under 10 minutes.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
# Beside the normal build dirs (testbed.sh run makes those per worktree), never in them.
export CONVAI_BUILD_DIR=${CONVAI_BUILD_DIR:-/var/tmp/convai-build}-asan
export CONVAI_STAGE_DIR=${CONVAI_STAGE_DIR:-/var/tmp/convai-stage}-asan
CONVAI_SANITIZE=1 bash "$src/scripts/build.sh"

export CONVAI_MODULE=$CONVAI_BUILD_DIR/app_elevenlabs_convai.so
export CONVAI_PYTHON_DIR=$CONVAI_STAGE_DIR/python
CONVAI_ASAN_RUNTIME=$(ldd "$CONVAI_MODULE" | awk '/libasan/ { print $3 }')
[ -f "$CONVAI_ASAN_RUNTIME" ] || {
  echo "sanitize.sh: $CONVAI_MODULE does not link the ASan runtime" >&2
  exit 1
}
# grep reads it all: with -q it would stop at the first match, and nm, killed by SIGPIPE, would
# fail the pipeline (pipefail) on a module that is instrumented.
nm -D "$CONVAI_MODULE" | grep __asan_report >/dev/null || {
  echo "sanitize.sh: $CONVAI_MODULE is not instrumented" >&2
  exit 1
}
export CONVAI_ASAN_RUNTIME
export CONVAI_SANITIZER_LOGS=${CONVAI_SANITIZER_LOGS:-$CONVAI_BUILD_DIR/reports}
rm -rf "$CONVAI_SANITIZER_LOGS" && mkdir -p "$CONVAI_SANITIZER_LOGS"
export CONVAI_REQUIRE_INTEGRATION=1

if [ $# -eq 0 ]; then
  set -- tests/integration/test_calls_local.py tests/integration/test_faults.py \
    tests/integration/test_operator.py tests/integration/test_config.py \
    tests/integration/test_module.py tests/integration/test_config_fuzz.py
fi
echo "sanitizer build: $CONVAI_MODULE (runtime $CONVAI_ASAN_RUNTIME); reports: $CONVAI_SANITIZER_LOGS"
rc=0
cd "$src"
python3 -m pytest -q -ra -p no:cacheprovider "$@" || rc=$?

reports=$(find "$CONVAI_SANITIZER_LOGS" -type f -size +0 | sort)
if [ -n "$reports" ]; then
  echo "sanitize.sh: sanitizer reports:" >&2
  for f in $reports; do
    echo "--- $f" >&2
    head -n 60 "$f" >&2
  done
  exit 1
fi
echo "sanitize.sh: no ASan or UBSan report"
exit "$rc"
