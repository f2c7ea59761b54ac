#!/usr/bin/env bash
# Print a code block of docs/INSTALL.md: the fenced block right after the line
# `<!-- tested: NAME -->`. The testbed runs these blocks verbatim (provision runs the
# prerequisites block of its Debian release, tests/install/source-install.sh the build block),
# so what an admin copies from INSTALL.md is what CI runs.
#
#   testbed/install-md.sh NAME [FILE]     exit 1 when there is no such block
#   testbed/install-md.sh --list [FILE]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
name=${1:?usage: install-md.sh NAME [FILE]}
file=${2:-$here/../docs/INSTALL.md}
if [ "$name" = --list ]; then
  sed -n 's/^<!-- tested: \([A-Za-z0-9_.-]*\) -->$/\1/p' "$file"
  exit 0
fi
awk -v want="$name" '
  $0 == "<!-- tested: " want " -->" { armed = 1; next }
  armed && !inside && /^```/ { inside = 1; next }
  inside && /^```/ { found = 1; exit }
  inside { print; next }
  armed && !/^[[:space:]]*$/ { armed = 0 }
  END { exit !found }
' "$file" || {
  echo "install-md.sh: no block '<!-- tested: $name -->' in $file" >&2
  exit 1
}
