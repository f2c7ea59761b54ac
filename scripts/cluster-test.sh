#!/usr/bin/env bash
# The scale-out test (docs/SCALING.md): Kamailio in front of three Asterisk nodes running the
# module, on loopback addresses of their own, with sipp callers and the simulator, in the
# Debian sid testbed. As root, from any directory:
#
#   bash scripts/cluster-test.sh [--built] [-- PYTEST_ARGS...]
#
# 1. testbed/testbed.sh provision (cached); 2. scripts/build.sh in the testbed (--built: the
# caller, scripts/test.sh, has done both); 3. pytest tests/cluster in the testbed: calls spread
# over the nodes, a node killed mid-run (failover, detection, recovery), a node stopping
# gracefully, a rolling `elevenlabs reload`, draining a node. The figures (calls per node,
# detection times, calls lost, Kamailio CPU per call, wall time) are printed and written to
# out/cluster-results.json. scripts/test.sh runs this as its `cluster` phase.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}
TB=$REPO/testbed/testbed.sh

if [ "$(id -u)" != 0 ]; then
  echo "cluster-test.sh: run as root (the testbed is a chroot)" >&2
  exit 1
fi
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
built=0
if [ "${1:-}" = --built ]; then
  built=1
  shift
fi
[ "${1:-}" = -- ] && shift

t0=$(date +%s.%N)
if [ "$built" = 0 ]; then
  bash "$TB" provision
  bash "$TB" run bash /src/scripts/build.sh
fi
export CONVAI_REQUIRE_INTEGRATION=1 CONVAI_CLUSTER_RESULTS=/src/out/cluster-results.json
rc=0
bash "$TB" run python3 -m pytest tests/cluster -ra -p no:cacheprovider "$@" || rc=$?
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "cluster-test.sh: %.1f s in all\n", b - a }'
exit "$rc"
