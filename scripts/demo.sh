#!/usr/bin/env bash
# The main job: provision the testbed (cached), build the module, and place one real call
# through Asterisk against the built-in ConvAI simulator. No API key, no network.
# The recording of the call lands in out/demo-call.wav.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
bash "$repo/testbed/testbed.sh" provision
bash "$repo/testbed/testbed.sh" run -- bash -c 'bash scripts/build.sh >/var/tmp/convai-build.log 2>&1 || { cat /var/tmp/convai-build.log; exit 1; }; python3 scripts/demo.py "$@"' demo "$@"
