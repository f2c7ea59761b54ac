#!/usr/bin/env bash
# Every test, from a fresh Debian 12 / Ubuntu machine, as root, from any directory, on every
# flavour of the support matrix (testbed/testbed.sh flavours):
#
#   host:        apt-get what is missing, a .venv with the Python tools, then ruff check,
#                ruff format --check, mypy and pytest tests/unit on the host's Python;
#   per flavour: testbed/testbed.sh provision (a cached Debian root with its Asterisk), then
#                scripts/build.sh and pytest against a real Asterisk in that root
#                (CONVAI_REQUIRE_INTEGRATION=1: integration tests fail, never skip; the
#                from-source flavours have no PJSIP, so they run the tests not marked `sip`);
#   source-md:   (from-source flavours) docs/INSTALL.md's "Building from source" run verbatim in a
#                throw-away overlay, then a call through the installed module;
#   cluster:     (sid) scripts/cluster-test.sh: Kamailio in front of three nodes, failover,
#                recovery, rolling reload, draining (docs/SCALING.md);
#   sanitize:    (sid) scripts/sanitize.sh: an ASan+UBSan build of the module, the integration
#                subset it names, with the ASan runtime preloaded into Asterisk; fails on any report;
#   deb:         (sid) testbed/deb-test.sh builds, lints, installs, calls, removes, purges.
#   pycompat:    scripts/pycompat.sh: a warning-free build with each Python 3.11-3.14 no root has
#                (3.12, pyenv's) against that flavour's Asterisk headers.
# It ends with a matrix: phase x flavour, PASS/FAIL/SKIP and seconds.
#
# Usage: scripts/test.sh [--host-only | --integration-only] [--flavour F[,F...]] [--phase P[,P...]]
#                        [--serial] [-k EXPR] [-- PYTEST_ARGS...]
#   --host-only         the host phases only
#   --integration-only  no host phases, and only tests/integration in the pytest phase
#   --flavour F,...     only these flavours (default: all; sid alone with --integration-only or -k)
#   --phase P,...       only these phases (and the ones they need), e.g. --phase source-md
#   -k EXPR             passed to every pytest run; phases marked `full` (cluster, source-md, deb) are not run
#   -- ARGS             passed to every pytest run; likewise
#   --serial            one phase at a time, in the foreground (default: the lanes of the table
#                       below side by side, each logging to out/test-logs/)
#   --list              print the phase table and exit
# Exits non-zero when anything fails.

# shellcheck disable=SC2317 # (shellcheck 0.9) functions called through eval and the EXIT trap
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}

HOST_APT=(python3 python3-venv python3-dev gcc libc6-dev ca-certificates debootstrap espeak-ng sox)
HOST_PIP=(pytest hypothesis websockets aiohttp cffi mypy ruff)
VENV=$REPO/.venv
TB=$REPO/testbed/testbed.sh

# ---- the phases ---------------------------------------------------------------------------------
# One line each:  NAME  FLAVOURS  NEEDS  WHEN  LANE  COMMAND...
#   FLAVOURS  host | all (every testbed flavour) | source (the from-source ones) | names, a,b
#   NEEDS     phases of the same flavour that must have passed first (a,b), or -
#   WHEN      always | full (not run when -k or pytest arguments select a subset)
#   LANE      - : first, in order (what every later phase of the column needs);
#             a, b: then both lanes of every column at once, each in order. The columns run side
#             by side too (after the host's `packages`: debootstrap comes from it). Each lane logs
#             to out/test-logs/COLUMN-LANE.log, printed whole when everything has ended.
#             z: last, alone, once every other lane has ended: the tests marked `timing`
#             (RTP pacing, barge-in cut latency) measure the machine, not only the module.
#             --serial runs it all in this order, in the foreground.
#   COMMAND   evaluated with $F (the flavour) set; `tb ARGS` is testbed/testbed.sh --flavour $F ARGS;
#             exit 77 means "cannot run on this machine" and shows as SKIP with the reason it printed
# Adding a phase is adding a line (e.g. "faults sid build full b bash tests/faults/run.sh").
# The split of sid's phases over its two lanes keeps them about even (~8 min each, cached).
PHASES=(
  "packages   host   -          always  -  host_packages"
  "venv       host   packages   always  a  host_venv"
  "ruff       host   venv       always  a  \$VENV/bin/ruff check"
  "format     host   venv       always  a  \$VENV/bin/ruff format --check"
  "mypy       host   venv       always  a  \$VENV/bin/mypy"
  "unit       host   venv       always  a  host_unit"
  "provision  all    -          always  -  tb provision"
  "build      all    provision  always  -  tb run bash /src/scripts/build.sh"
  "pytest     all    build      always  a  tb_pytest"
  "source-md  source provision  full    a  tb run --scratch bash /src/tests/install/source-install.sh"
  "deb        sid    provision  full    a  bash \$REPO/testbed/deb-test.sh"
  "cluster    sid    build      full    b  bash \$REPO/scripts/cluster-test.sh --built"
  "sanitize   sid    build      full    b  tb run bash /src/scripts/sanitize.sh"
  "pycompat   all    provision  full    b  bash \$REPO/scripts/pycompat.sh --flavour \$F"
  "timing     sid    build      always  z  tb_pytest timing"
)

# ---- options ------------------------------------------------------------------------------------
host=1 testbed=1 unit_in_testbed=1 serial=0
pytest_args=()
kexpr="" only_flavours="" only_phases=""
need_arg() { [ "$2" -ge 2 ] || {
  echo "test.sh: $1 needs an argument" >&2
  exit 2
}; }
while [ $# -gt 0 ]; do
  case $1 in
    --host-only) testbed=0 ;;
    --serial) serial=1 ;;
    --integration-only) host=0 unit_in_testbed=0 ;;
    --flavour | --flavours)
      need_arg "$1" $#
      only_flavours=$2
      shift
      ;;
    --flavour=*) only_flavours=${1#*=} ;;
    --phase | --phases)
      need_arg "$1" $#
      only_phases=$2
      shift
      ;;
    --phase=*) only_phases=${1#*=} ;;
    -k)
      need_arg "$1" $#
      kexpr=$2
      shift
      ;;
    -k*) kexpr=${1#-k} ;;
    --list)
      printf '%s\n' "${PHASES[@]}"
      exit 0
      ;;
    --)
      shift
      pytest_args+=("$@")
      break
      ;;
    -h | --help)
      sed -n '2,/^# Exits/p' "$0" | sed 's/^# \{0,1\}//'
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
subset=0
[ ${#pytest_args[@]} -eq 0 ] || subset=1
# A focused run has no `full` phases, so nothing to run beside its pytest: live output instead.
[ "$subset" = 0 ] || serial=1

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run as root (it installs packages and builds chroots)" >&2
  exit 1
fi

mapfile -t ALL_FLAVOURS < <(bash "$TB" flavours | awk '{ print $1 }')
if [ -n "$only_flavours" ]; then
  IFS=, read -r -a FLAVOURS <<<"$only_flavours"
  for f in "${FLAVOURS[@]}"; do
    printf '%s\n' "${ALL_FLAVOURS[@]}" | grep -qxF -- "$f" || {
      echo "test.sh: unknown flavour '$f' (known: ${ALL_FLAVOURS[*]})" >&2
      exit 2
    }
  done
elif [ "$subset" = 1 ] || [ "$unit_in_testbed" = 0 ]; then
  FLAVOURS=(sid) # a focused run: the shared sid root, as before the flavours came
else
  FLAVOURS=("${ALL_FLAVOURS[@]}")
fi
[ "$testbed" = 1 ] || FLAVOURS=()
COLUMNS_=()
[ "$host" = 0 ] || COLUMNS_+=(host)
COLUMNS_+=("${FLAVOURS[@]}")

# ---- phase bodies -------------------------------------------------------------------------------
tb() { bash "$TB" --flavour "$F" "$@"; }

is_source() { [ "$1" != host ] && [ "$1" != sid ]; }

# pytest exits 5 when -k selects nothing in one of the runs: that is not a failure.
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

host_unit() {
  echo "host Python: $(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  run_pytest "$VENV/bin/python" -m pytest tests/unit -ra "${pytest_args[@]}"
}

# pytest in the flavour's root. The staged Python dir comes first on the path: it holds what the
# build bundled (websockets on Debian 12), as the module's own sys.path does.
tb_pytest() { # tb_pytest [timing]: every test but the `timing` ones, or only those
  local suites=(tests/integration) marks="not timing" suite rc=0
  if [ "${1:-}" = timing ]; then
    marks=timing
  elif [ "$unit_in_testbed" = 1 ]; then
    suites=(tests/unit tests/integration)
  fi
  # No pjproject in the from-source roots: the SIP/RTP tests are selected out by their marker
  # (a SIP test without the marker fails there: chan_pjsip does not load).
  is_source "$F" && marks="($marks) and not sip"
  local sel=(-m "$marks")
  # One pytest per suite: both have a test_tools.py, which pytest < 8 (Debian 12's 7.2) cannot
  # collect in one run in its default import mode.
  for suite in "${suites[@]}"; do
    echo "pytest $suite ${sel[*]} in the $F root"
    # shellcheck disable=SC2016 # $CONVAI_PYTHON_DIR is testbed.sh's, expanded in the root
    CONVAI_REQUIRE_INTEGRATION=1 run_pytest tb run sh -c 'PYTHONPATH=$CONVAI_PYTHON_DIR exec "$@"' pytest \
      python3 -m pytest "$suite" "${sel[@]}" -ra --durations=15 "${pytest_args[@]}" || rc=1
  done
  return "$rc"
}

# ---- the runner ---------------------------------------------------------------------------------
# Each phase's outcome is a line "COLUMN NAME RESULT SECONDS" in $RESULTS (lanes are subshells);
# RESULT and SECS are this shell's view of it.
declare -A RESULT=() SECS=()
failed=0
t_all=$(date +%s.%N)
LOGS=$REPO/out/test-logs
RESULTS=$LOGS/results
rm -rf "$LOGS" && mkdir -p "$LOGS" && : >"$RESULTS"
exec 3>&1 # progress lines reach the terminal from inside the lanes' redirected output

applies() { # applies FLAVOURS COLUMN
  case $1 in
    host) [ "$2" = host ] ;;
    all) [ "$2" != host ] ;;
    source) is_source "$2" ;;
    *) [ "$2" != host ] && [[ ,$1, == *,"$2",* ]] ;;
  esac
}

# The phases --phase asks for, with what they need (transitively).
selected() { # selected NAME
  [ -z "$only_phases" ] && return 0
  local want=",$only_phases," line name flav needs changed=1
  while [ "$changed" = 1 ]; do
    changed=0
    for line in "${PHASES[@]}"; do
      read -r name flav needs _ <<<"$line"
      if [[ $want == *,"$name",* ]] && [ "$needs" != - ]; then
        local n
        for n in ${needs//,/ }; do
          [[ $want == *,"$n",* ]] || {
            want+="$n,"
            changed=1
          }
        done
      fi
    done
  done
  [[ $want == *,"$1",* ]]
}

run_phase() { # run_phase COLUMN NAME NEEDS COMMAND
  local col=$1 name=$2 needs=$3 cmd=$4 n t rc=0
  if [ "$needs" != - ]; then
    for n in ${needs//,/ }; do
      if [ "${RESULT[$col/$n]:-}" != PASS ]; then
        record "$col" "$name" SKIP 0
        echo "==> $col: $name: not run: $n did not pass" | tee /dev/fd/3 >&2
        return 0
      fi
    done
  fi
  echo
  echo "==> $col: $name"
  [ "$serial" = 1 ] || echo "$(date +%T) ==> $col: $name" >&3
  t=$(date +%s.%N)
  F=$col
  eval "$cmd" || rc=$?
  secs=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) record "$col" "$name" PASS "$secs" ;;
    77) record "$col" "$name" SKIP "$secs" ;;
    *)
      record "$col" "$name" FAIL "$secs"
      echo "==> $col: $name: FAILED (exit $rc)" >&2
      ;;
  esac
  [ "$serial" = 1 ] || echo "$(date +%T) <== $col: $name: ${RESULT[$col/$name]} in ${secs} s" >&3
}

record() { # record COLUMN NAME RESULT SECONDS
  RESULT[$1/$2]=$3 SECS[$1/$2]=$4
  [ "$3" != FAIL ] || failed=1
  echo "$1 $2 $3 $4" >>"$RESULTS"
}

load_results() { # every lane's outcomes into RESULT/SECS
  local col name res secs
  while read -r col name res secs; do
    RESULT[$col/$name]=$res SECS[$col/$name]=$secs
    [ "$res" != FAIL ] || failed=1
  done <"$RESULTS"
}

matrix() {
  local line name flav cell col w=16
  load_results
  echo
  echo "================================ matrix: phase x flavour ================================"
  printf '  %-11s' phase
  for col in "${COLUMNS_[@]}"; do printf "%-${w}s" "$col"; done
  echo
  for line in "${PHASES[@]}"; do
    read -r name flav _ <<<"$line"
    local any=0
    for col in "${COLUMNS_[@]}"; do [ -z "${RESULT[$col/$name]:-}" ] || any=1; done
    [ "$any" = 1 ] || continue
    printf '  %-11s' "$name"
    for col in "${COLUMNS_[@]}"; do
      cell=${RESULT[$col/$name]:-}
      if [ -z "$cell" ]; then
        cell="-"
      elif [ "$cell" != SKIP ]; then
        cell=$(printf '%s %7.1fs' "$cell" "${SECS[$col/$name]}")
      fi
      printf "%-${w}s" "$cell"
    done
    echo
  done
  printf '  %-11s%s in %.1f s\n' total "$([ "$failed" = 0 ] && echo PASS || echo FAIL)" \
    "$(awk -v a="$t_all" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"
  echo "  (SKIP: a phase it needs did not pass; -: not run for that flavour or not selected)"
  echo "========================================================================================="
}
trap matrix EXIT

run_lane() { # run_lane COLUMN LANE: that lane's phases, in order
  local col=$1 line name flav needs when lane cmd
  for line in "${PHASES[@]}"; do
    read -r name flav needs when lane cmd <<<"$line"
    [ "$lane" = "$2" ] || continue
    applies "$flav" "$col" || continue
    selected "$name" || continue
    [ "$when" = full ] && [ "$subset" = 1 ] && continue
    [ "$col" != host ] || [ "$host" = 1 ] || continue
    run_phase "$col" "$name" "$needs" "$cmd"
  done
}

lane_job() { # lane_job COLUMN LANE...: in the background, logging to out/test-logs/COLUMN-LANE.log
  local col=$1 lane
  shift
  for lane in "$@"; do
    (
      trap - EXIT
      run_lane "$col" "$lane"
    ) >"$LOGS/$col-$lane.log" 2>&1 &
  done
}

column_job() { # column_job COLUMN: its first lane, then the others side by side
  local col=$1
  (
    trap - EXIT
    run_lane "$col" - >"$LOGS/$col--.log" 2>&1
    lane_job "$col" a b
    wait
  ) &
}

show_logs() {
  local f
  for f in "$LOGS"/*.log; do
    [ -s "$f" ] || continue
    echo
    echo "################################ ${f#"$REPO"/} ################################"
    cat "$f"
  done
}

run_all() {
  local col lane
  if [ "$serial" = 1 ]; then
    for col in "${COLUMNS_[@]}"; do
      for lane in - a b; do run_lane "$col" "$lane"; done
    done
    for col in "${COLUMNS_[@]}"; do run_lane "$col" z; done
    return
  fi
  trap 'kill 0' INT TERM
  [ "$host" = 0 ] || run_lane host - # debootstrap and the rest come from it
  [ "$host" = 0 ] || lane_job host a
  for col in "${COLUMNS_[@]}"; do
    [ "$col" = host ] || column_job "$col"
  done
  wait
  show_logs
  load_results # lane z's needs (build) passed in a lane's subshell
  serial=1     # in the foreground from here: no separate progress lines
  for col in "${COLUMNS_[@]}"; do run_lane "$col" z; done
}

# One line, parsed whole before it runs: editing this file during a run does no harm.
run_all; load_results; exit "$failed"
