#!/usr/bin/env bash
# Every test, from a fresh Debian 12 / Ubuntu machine, as root, from any directory:
#
#   1. host:    apt-get what is missing, a .venv with the Python tools, then ruff check,
#               ruff format --check, mypy and pytest tests/unit on the host's Python;
#   2. testbed: testbed/testbed.sh provision (a Debian sid root with Asterisk 22; cached);
#   3. inside the testbed: scripts/build.sh, then pytest tests/unit tests/integration against a
#               real Asterisk (CONVAI_REQUIRE_INTEGRATION=1: integration tests fail, never skip);
#   4. the Debian package: testbed/deb-test.sh builds, lints, installs, calls, removes, purges
#               (skipped when -k or pytest arguments select a subset).
#
# Usage: scripts/test.sh [--host-only | --integration-only] [-k EXPR] [-- PYTEST_ARGS...]
#   --host-only         phase 1 only
#   --integration-only  phases 2 and 3, and only tests/integration in phase 3
#   -k EXPR             passed to both pytest runs
#   -- ARGS             passed to both pytest runs
# Exits non-zero when anything fails; ends with a timing summary of each phase.

# shellcheck disable=SC2317 # (shellcheck 0.9) functions called through phase() and the EXIT trap
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}

HOST_APT=(python3 python3-venv python3-dev gcc libc6-dev ca-certificates debootstrap espeak-ng sox)
HOST_PIP=(pytest hypothesis websockets aiohttp cffi mypy ruff)
VENV=$REPO/.venv

host=1 testbed=1 unit_in_testbed=1
pytest_args=()
kexpr=""
while [ $# -gt 0 ]; do
  case $1 in
    --host-only) testbed=0 ;;
    --integration-only) host=0 unit_in_testbed=0 ;;
    -k)
      if [ $# -lt 2 ]; then
        echo "test.sh: -k needs an expression" >&2
        exit 2
      fi
      kexpr=$2
      shift
      ;;
    -k*) kexpr=${1#-k} ;;
    --)
      shift
      pytest_args+=("$@")
      break
      ;;
    -h | --help)
      sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "test.sh: unknown argument '$1' (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done
if [ -n "$kexpr" ]; then
  pytest_args=(-k "$kexpr" "${pytest_args[@]}")
fi

require_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "test.sh: run as root (it installs packages and builds a chroot)" >&2
    exit 1
  fi
}
require_root

phases=() results=() times=()
failed=0
t_all=$(date +%s.%N)

summary() {
  local i
  echo
  echo "==================================== timing summary ===================================="
  for i in "${!phases[@]}"; do
    printf '  %-60s %-5s %7.1f s\n' "${phases[$i]}" "${results[$i]}" "${times[$i]}"
  done
  printf '  %-60s %-5s %7.1f s\n' "total" "$([ "$failed" = 0 ] && echo PASS || echo FAIL)" \
    "$(awk -v a="$t_all" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"
  echo "========================================================================================"
}
trap summary EXIT

# phase NAME CMD...: run CMD, record PASS/FAIL and its duration; never exits.
phase() {
  local name=$1 t rc=0
  shift
  echo
  echo "==> $name"
  t=$(date +%s.%N)
  "$@" || rc=$?
  phases+=("$name")
  times+=("$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')")
  if [ "$rc" = 0 ]; then
    results+=(PASS)
  else
    results+=(FAIL)
    failed=1
    echo "==> $name: FAILED (exit $rc)" >&2
  fi
  return "$rc"
}

skipped() { # skipped NAME WHY
  phases+=("$1")
  results+=(SKIP)
  times+=(0)
  echo "==> $1: not run: $2" >&2
}

# pytest exits 5 when -k selects nothing in one of the two runs: that is not a failure.
run_pytest() {
  local rc=0
  "$@" || rc=$?
  if [ "$rc" = 5 ] && [ -n "$kexpr" ]; then
    echo "(no tests selected by -k here)"
    return 0
  fi
  return "$rc"
}

host_packages() {
  local missing=() p
  for p in "${HOST_APT[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "host packages present: ${HOST_APT[*]}"
    return 0
  fi
  echo "apt-get install ${missing[*]}"
  apt-get update -q >/dev/null || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

host_venv() {
  local want stamp=$VENV/.convai-deps
  want="$(python3 -c 'import sys; print(sys.version)' | head -n 1) | ${HOST_PIP[*]}"
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null ||
    [ "$("$VENV/bin/python" -c 'import sys; print(sys.version)' | head -n 1)" != "${want%% | *}" ]; then
    echo "creating $VENV"
    rm -rf "$VENV" && python3 -m venv "$VENV" || return 1
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "pip install ${HOST_PIP[*]}"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "${HOST_PIP[@]}" ||
      return 1
    printf '%s\n' "$want" >"$stamp"
  else
    echo "$VENV is up to date"
  fi
}

if [ "$host" = 1 ]; then
  if phase "host: packages" host_packages && phase "host: .venv" host_venv; then
    phase "host: ruff check" "$VENV/bin/ruff" check || true
    phase "host: ruff format --check" "$VENV/bin/ruff" format --check || true
    phase "host: mypy" "$VENV/bin/mypy" || true
    phase "host: pytest tests/unit ($(python3 -c 'import sys; print("Python %d.%d" % sys.version_info[:2])'))" \
      run_pytest "$VENV/bin/python" -m pytest tests/unit -ra "${pytest_args[@]}" || true
  else
    skipped "host: lint, types, unit tests" "the host setup failed"
  fi
fi

if [ "$testbed" = 1 ]; then
  TB=$REPO/testbed/testbed.sh
  if phase "testbed: provision" bash "$TB" provision; then
    if [ ! -f "$REPO/scripts/build.sh" ]; then
      phase "testbed: build (scripts/build.sh)" sh -c 'echo "scripts/build.sh is missing: nothing to build the module with" >&2; exit 1' || true
      skipped "testbed: pytest" "the build failed"
    elif phase "testbed: build (scripts/build.sh)" bash "$TB" run bash /src/scripts/build.sh; then
      suites=(tests/integration)
      [ "$unit_in_testbed" = 1 ] && suites=(tests/unit tests/integration)
      export CONVAI_REQUIRE_INTEGRATION=1
      phase "testbed: pytest ${suites[*]} (Asterisk 22)" \
        run_pytest bash "$TB" run python3 -m pytest "${suites[@]}" -ra --durations=15 "${pytest_args[@]}" || true
      if [ -z "$kexpr" ] && [ ${#pytest_args[@]} -eq 0 ]; then
        phase "testbed: Debian package (build, lintian, install, call, remove, purge)" \
          bash "$REPO/testbed/deb-test.sh" || true
      fi
    else
      skipped "testbed: pytest" "the build failed"
    fi
  else
    skipped "testbed: build and pytest" "provisioning failed"
  fi
fi

exit "$failed"
