#!/usr/bin/env bash
# docs/INSTALL.md's "Building from source", verbatim, as an admin of a source-built Asterisk
# would follow it; one phase of scripts/test.sh (source-md) on the from-source flavours:
#
#   bash testbed/testbed.sh --flavour bookworm-ast20 run --scratch bash /src/tests/install/source-install.sh
#
# In a throw-away overlay of the flavour's root (its prerequisites block already ran at
# provision time), with the repository at /src:
#   1. a copy of the source tree in /root/app-elevenlabs-convai, as a clone would be;
#   2. where this Python's websockets/aiohttp are too old (Debian 12), first a build with
#      -Dpython_deps=disabled: Asterisk runs, `module load` declines with one line naming the
#      package, the version found, the minimum and the fix;
#   3. the INSTALL.md blocks "build-source" then "load-source", verbatim: the same Asterisk
#      (no restart) now loads the module;
#   4. the XML docs, and a Local-channel call through the installed module against the
#      simulator, COMPLETED.
# Every process started here dies with the scratch run's PID namespace.
set -euo pipefail

SRC=/src
CLONE=/root/app-elevenlabs-convai
LOG=/var/log/asterisk/messages.log
T0=$(date +%s.%N)
log() { printf '[source-md] %s\n' "$*"; }
ok() { printf '[source-md]   ok  %s\n' "$*"; }
fail() {
  log "FAIL: $*"
  if [ -f "$LOG" ]; then
    log "---- last lines of $LOG"
    tail -n 30 "$LOG" || true
  fi
  exit 1
}
secs() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
block() { # block NAME: run INSTALL.md's block NAME verbatim, echoing each command
  log "---- INSTALL.md block '$1':"
  bash "$SRC/testbed/install-md.sh" "$1" "$CLONE/docs/INSTALL.md" | sed 's/^/[source-md]   | /'
  (cd "$CLONE" && bash -euo pipefail -c "$(bash "$SRC/testbed/install-md.sh" "$1" "$CLONE/docs/INSTALL.md")")
}
# The CLI's output, whole (grep -q on a pipe would kill asterisk -rx with SIGPIPE under pipefail).
cli() { asterisk -rx "$1" 2>&1 || true; }
module_state() { grep -o 'Not Running\|Running' <<<"$(cli 'module show like app_elevenlabs_convai')" | head -n 1; }

log "Asterisk $(asterisk -V | sed 's/^Asterisk //'), $(python3 --version), $(. /etc/os-release && echo "$PRETTY_NAME")"

# 1. the clone (the repository as git would check it out: no build trees, caches or .git)
rm -rf "$CLONE"
mkdir -p "$CLONE"
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./out --exclude=./build --exclude='./build-*' \
  --exclude='./obj-*' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
  --exclude=.ruff_cache --exclude=.hypothesis -cf - . | tar -C "$CLONE" -xf -
ok "source tree in $CLONE"

# An Asterisk as a source install leaves it (make install, no samples), configured by hand: every
# module autoloads except ours, which INSTALL.md loads with `module load`.
mkdir -p /etc/asterisk /var/log/asterisk /var/run/asterisk
printf '[options]\nverbose = 3\n' >/etc/asterisk/asterisk.conf
cat >/etc/asterisk/modules.conf <<'EOF'
[modules]
autoload = yes
noload => app_elevenlabs_convai.so
EOF
cat >/etc/asterisk/logger.conf <<'EOF'
[general]
[logfiles]
messages.log => notice,warning,error,verbose(3)
EOF
cat >/etc/asterisk/extensions.conf <<'EOF'
[test]
exten => 100,1,Answer()
 same => n,ElevenLabsConvAI(sim,c)
 same => n,Verbose(0,SOURCEMD-RESULT status=${ELEVENLABS_STATUS} reason=${ELEVENLABS_END_REASON} conversation=${ELEVENLABS_CONVERSATION_ID})
 same => n,Hangup()
exten => 200,1,Answer()
 same => n,Playback(hello-world&silence/10&silence/10&silence/10)
 same => n,Hangup()
EOF
# As `make samples` leaves it: res_prometheus loads (disabled). Without the file it declines, and
# Asterisk then refuses every module that names it optional ("app_elevenlabs_convai loaded
# before dependency res_prometheus!"; see INSTALL.md, "Troubleshooting").
printf '[general]\nenabled = no\n' >/etc/asterisk/prometheus.conf
: >/etc/asterisk/cdr.conf
printf '[general]\nenable = no\n' >/etc/asterisk/cel.conf

wait_booted() {
  for _ in $(seq 150); do
    grep -q 'fully booted' <<<"$(cli 'core waitfullybooted')" && return 0
    sleep 0.2
  done
  fail "Asterisk did not boot"
}
asterisk -g
wait_booted
ok "Asterisk up: $(asterisk -rx 'core show uptime' | head -n 1)"

# 2. where the distribution's Python packages are too old: what the admin sees without the bundle
lacking=$(python3 "$CLONE/python/convai/deps.py" missing)
if [ -n "$lacking" ]; then
  log "this Python lacks or has too old: $lacking (python/convai/deps.py)"
  (cd "$CLONE" && meson setup build-nodeps --prefix=/usr --libdir=lib -Dasterisk_moddir=/usr/lib/asterisk/modules \
    -Dasterisk_datadir=/var/lib/asterisk -Dpython_deps=disabled >/tmp/nodeps.log 2>&1 &&
    ninja -C build-nodeps >>/tmp/nodeps.log 2>&1 && meson install -C build-nodeps --quiet >>/tmp/nodeps.log 2>&1) ||
    { cat /tmp/nodeps.log; fail "the -Dpython_deps=disabled build failed"; }
  grep -A1 'WARNING' /tmp/nodeps.log | sed 's/^/[source-md]   meson: /' || true
  : >/etc/asterisk/elevenlabs.conf
  cli 'module load app_elevenlabs_convai.so' | sed 's/^/[source-md]   cli: /'
  [ "$(module_state)" != Running ] || fail "the module loaded with $lacking too old"
  line=$(grep 'ElevenLabsConvAI not loaded' "$LOG" | tail -n 1 || true)
  [ -n "$line" ] || fail "no 'ElevenLabsConvAI not loaded' line in $LOG"
  log "the decline line: ${line#*] }"
  for name in $lacking; do
    case $line in *"$name "*"too old"*"$name >= "*"fix: "*) ;; *) fail "the decline line does not name $name, found, minimum, fix" ;; esac
  done
  ok "declined with one line naming the package, the version found, the minimum and the fix"
  grep -q 'System uptime' <<<"$(cli 'core show uptime')" || fail "Asterisk is not running after the decline"
  ok "Asterisk runs on"
  rm -f /etc/asterisk/elevenlabs.conf
fi

# 3. INSTALL.md, verbatim
t=$(date +%s.%N)
block build-source >/tmp/build-source.log 2>&1 || { tail -n 40 /tmp/build-source.log; fail "the build-source block failed"; }
grep -E 'bundled from|bundling|ring_stress|^Ok:' /tmp/build-source.log | sed 's/^/[source-md]   /' || true
ok "build-source block ($(secs "$t") s)"
pydir=$(sed -n 's/^ *python dir *: *//p' /tmp/build-source.log | tail -n 1)
[ -f /usr/lib/asterisk/modules/app_elevenlabs_convai.so ] || fail "no module in /usr/lib/asterisk/modules"
[ -f "$pydir/convai/host.py" ] || fail "no Python package in '$pydir'"
ok "module in /usr/lib/asterisk/modules, Python package in $pydir"
problem=$(cd / && python3 -I -c 'import sys; sys.path.insert(0, sys.argv[1]); import convai.deps as d; print(d.check() or "")' "$pydir")
[ -z "$problem" ] || fail "the installed Python dir still fails the check: $problem"
ok "convai.deps.check() passes for $pydir"
[ "$(stat -c '%a %U' /etc/asterisk/elevenlabs.conf)" = "600 root" ] || fail "elevenlabs.conf is $(stat -c '%a %U' /etc/asterisk/elevenlabs.conf)"
ok "/etc/asterisk/elevenlabs.conf installed, 600 root"

# The agent the call talks to: the simulator (the example agents stay, so they must parse).
PYTHONPATH=$CLONE/python PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
  python3 -m convai.sim --port 0 --end-after-turns 1 --reply "Thank you for calling." >/tmp/sim.log 2>&1 &
url=""
for _ in $(seq 100); do
  url=$(sed -n 's/^ *signed URL endpoint: *//p' /tmp/sim.log | head -n 1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { cat /tmp/sim.log; fail "the simulator did not start"; }
printf '\n[sim]\nelevenlabs_api_key = sk-source-md\nelevenlabs_get_signed_url_endpoint = %s\nelevenlabs_agent_id = agent_source_md\n' \
  "$url" >>/etc/asterisk/elevenlabs.conf

block load-source | sed 's/^/[source-md]   cli: /'
[ "$(module_state)" = Running ] || fail "app_elevenlabs_convai is not running after INSTALL.md's load-source block"
ok "module running in the same Asterisk, no restart: $(grep -o 'Python .* runtime up.*' "$LOG" | tail -n 1)"
# The XML docs are read when Asterisk starts: restart it (and load the module again).
asterisk -rx 'core restart now' >/dev/null 2>&1 || true
sleep 1
wait_booted
block load-source | sed 's/^/[source-md]   cli: /'
[ "$(module_state)" = Running ] || fail "app_elevenlabs_convai is not running after the restart"
grep -q 'Talk to an ElevenLabs Conversational AI agent' <<<"$(cli 'core show application ElevenLabsConvAI')" ||
  fail "core show application ElevenLabsConvAI lacks the XML docs"
since=$(cli 'core show application ElevenLabsConvAI' | sed -n '/\[Since\]/{n;p}' | sed 's/^ *//')
[ -n "$since" ] && [ "$since" != "Not available" ] || fail "core show application: [Since] is '$since'"
ok "after a restart, core show application ElevenLabsConvAI shows the installed XML docs ([Since] $since)"

# 4. a call through the installed module
asterisk -rx 'channel originate Local/100@test extension 200@test' >/dev/null
result=""
for _ in $(seq 300); do
  result=$(grep -v 'Executing \[' "$LOG" | grep -o 'SOURCEMD-RESULT.*' | head -n 1 || true)
  [ -n "$result" ] && break
  sleep 0.2
done
[ -n "$result" ] || fail "the call did not end within 60 s"
log "$result"
case $result in *"status=COMPLETED "*) ok "the call COMPLETED" ;; *) fail "the call did not complete: $result" ;; esac
if grep -E 'ERROR.*(elevenlabs|convai)' "$LOG" | grep -v 'ElevenLabsConvAI not loaded'; then
  fail "errors from the module in the log"
fi
asterisk -rx 'core stop now' >/dev/null 2>&1 || true
log "PASS in $(secs "$T0") s"
