#!/usr/bin/env bash
# A throw-away Asterisk that loads the INSTALLED module from the system module dir, and a call
# through it against the ConvAI simulator. Shared by tests/deb/in-root.sh (testbed/deb-test.sh)
# and the autopkgtest (debian/tests/install-and-call):
#
#   tests/deb/installed-call.sh start DIR SRC   Asterisk (config, logs, pid under DIR) and the
#                                               simulator (from SRC/python) up, module loaded
#   tests/deb/installed-call.sh call DIR        one Local-channel call; exit 0 when it COMPLETED
#   tests/deb/installed-call.sh healthy DIR     Asterisk answers and reports an uptime
#   tests/deb/installed-call.sh stop DIR        stop both
# Needs the installed package's files only; the simulator comes from the source tree.
set -euo pipefail

MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
MODDIR=/usr/lib/$MA/asterisk/modules
CONF=/etc/asterisk/elevenlabs.conf

ok() { printf '[installed-call]   ok  %s\n' "$*"; }
fail() {
  printf '[installed-call] FAIL: %s\n' "$*"
  [ ! -f "$T/log/messages.log" ] || tail -n 40 "$T/log/messages.log"
  [ ! -f "$T/sim.log" ] || tail -n 20 "$T/sim.log"
  exit 1
}
ast() { asterisk -C "$T/etc/asterisk.conf" -rx "$*" 2>&1 || true; }

healthy() {
  kill -0 "$(cat "$T/asterisk.pid")" 2>/dev/null || return 1
  grep -q "System uptime:" <<<"$(ast "core show uptime")" || return 1
  grep -q "active call" <<<"$(ast "core show channels count")" || return 1
}

start() {
  local src=$1
  rm -rf "$T"
  mkdir -p "$T"/{etc,run,log,lib,db,keys,spool,cache}
  cat >"$T/etc/asterisk.conf" <<EOF
[directories]
astetcdir => $T/etc
astmoddir => $MODDIR
astvarlibdir => $T/lib
astdbdir => $T/db
astkeydir => $T/keys
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => $T/spool
astrundir => $T/run
astlogdir => $T/log
astsbindir => /usr/sbin
astcachedir => $T/cache

[options]
verbose = 3
nocolor = yes
EOF
  cat >"$T/etc/modules.conf" <<'EOF'
[modules]
autoload = no
load => pbx_config.so
load => res_clioriginate.so
load => app_verbose.so
load => app_playback.so
load => format_wav.so
load => format_gsm.so
load => format_pcm.so
load => codec_ulaw.so
load => codec_gsm.so
load => codec_resample.so
; app_elevenlabs_convai.so is loaded by hand once Asterisk is up
EOF
  cat >"$T/etc/logger.conf" <<'EOF'
[general]
[logfiles]
messages.log => notice,warning,error,verbose(3)
EOF
  cat >"$T/etc/extensions.conf" <<'EOF'
[test]
; the agent leg: the installed module
exten => 100,1,Answer()
 same => n,ElevenLabsConvAI(sim,c)
 same => n,Verbose(0,DEBTEST-RESULT status=${ELEVENLABS_STATUS} reason=${ELEVENLABS_END_REASON} conversation=${ELEVENLABS_CONVERSATION_ID})
 same => n,Hangup()
exten => h,1,Verbose(0,DEBTEST-HANGUP ${CHANNEL} status=${ELEVENLABS_STATUS} reason=${ELEVENLABS_END_REASON})
; the caller leg: says something, then real silence (the agent hears a turn end), then hangs up
exten => 200,1,Answer()
 same => n,Playback(hello-world&silence/10&silence/10&silence/10)
 same => n,Hangup()
EOF

  # The simulator, from the source tree (the installed package is what is under test).
  PYTHONPATH=$src/python PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    setsid python3 -m convai.sim --port 0 --end-after-turns 1 --reply "Thank you for calling." \
    >"$T/sim.log" 2>&1 </dev/null &
  echo $! >"$T/sim.pid"
  local url="" _
  for _ in $(seq 100); do
    url=$(sed -n 's/^ *signed URL endpoint: *//p' "$T/sim.log" | head -n 1)
    [ -n "$url" ] && break
    kill -0 "$(cat "$T/sim.pid")" 2>/dev/null || fail "the simulator did not start"
    sleep 0.1
  done
  [ -n "$url" ] || fail "the simulator printed no endpoint"
  ok "simulator up: $url"

  # The instance's elevenlabs.conf: the installed one (so its example agents must parse) plus an
  # agent that talks to the simulator.
  cat "$CONF" >"$T/etc/elevenlabs.conf"
  printf '\n[sim]\nelevenlabs_api_key = sk-deb-test\nelevenlabs_get_signed_url_endpoint = %s\nelevenlabs_agent_id = agent_deb_test\n' \
    "$url" >>"$T/etc/elevenlabs.conf"
  chmod 0640 "$T/etc/elevenlabs.conf"

  setsid asterisk -C "$T/etc/asterisk.conf" -f -n -g -q >"$T/console.log" 2>&1 </dev/null &
  echo $! >"$T/asterisk.pid"
  local booted=0
  for _ in $(seq 150); do
    if grep -q "fully booted" <<<"$(ast "core waitfullybooted")"; then
      booted=1
      break
    fi
    kill -0 "$(cat "$T/asterisk.pid")" 2>/dev/null || fail "Asterisk exited while booting: $(cat "$T/console.log")"
    sleep 0.2
  done
  [ "$booted" = 1 ] || fail "Asterisk did not boot in 30 s"
  ok "Asterisk $(ast 'core show version' | sed -n 's/^Asterisk \([^ ]*\).*/\1/p') up (pid $(cat "$T/asterisk.pid")), module dir $MODDIR"
  ast "module load app_elevenlabs_convai.so" | sed 's/^/[installed-call]   /'
  grep -q "app_elevenlabs_convai.so.*Running" <<<"$(ast "module show like elevenlabs")" ||
    fail "app_elevenlabs_convai.so is not running: $(ast "module show like elevenlabs")"
  ok "app_elevenlabs_convai.so loaded from $MODDIR and running"
  grep -q "Python .* runtime up" "$T/log/messages.log" || fail "no 'Python runtime up' line in the log"
  ok "$(grep -o "ElevenLabsConvAI: Python .* runtime up.*\|elevenlabs: Python .* runtime up.*" "$T/log/messages.log" | tail -n 1)"
  grep -q "Talk to an ElevenLabs Conversational AI agent" <<<"$(ast "core show application ElevenLabsConvAI")" ||
    fail "core show application ElevenLabsConvAI lacks the installed XML docs"
  ok "core show application ElevenLabsConvAI shows the installed XML docs"
  if grep -E "ERROR.*(elevenlabs|convai)" "$T/log/messages.log"; then fail "errors from the module in the log"; fi
  healthy || fail "Asterisk is not healthy"
  ok "Asterisk healthy"
}

call() {
  ast "channel originate Local/100@test extension 200@test" | sed '/^$/d; s/^/[installed-call]   /'
  local result="" _
  for _ in $(seq 300); do
    result=$(grep -v "Executing \[" "$T/log/messages.log" | grep -o "DEBTEST-RESULT.*" | head -n 1 || true)
    [ -n "$result" ] && break
    # a conversation that ended with the caller's hangup does not reach the Verbose line
    result=$(grep -v "Executing \[" "$T/log/messages.log" | grep -o "DEBTEST-HANGUP .* status=[A-Z].*" | head -n 1 || true)
    [ -n "$result" ] && break
    sleep 0.2
  done
  [ -n "$result" ] || fail "the call did not end within 60 s"
  ok "$result"
  grep -E "app_elevenlabs_convai|ElevenLabsConvAI" "$T/log/messages.log" | sed 's/^/[installed-call]   log: /' | tail -n 15
  grep -E "^[0-9:]{8} " "$T/sim.log" | sed 's/^/[installed-call]   sim: /' | tail -n 15 || true
  case "$result" in
    *"status=COMPLETED "*) ok "ELEVENLABS_STATUS=COMPLETED" ;;
    *) fail "the call did not complete: $result" ;;
  esac
  case "$result" in *"conversation= "* | *"conversation=") fail "no ELEVENLABS_CONVERSATION_ID" ;; esac
  healthy || fail "Asterisk is not healthy after the call"
  ok "Asterisk healthy after the call"
}

stop() {
  local pid _
  if [ -f "$T/asterisk.pid" ] && pid=$(cat "$T/asterisk.pid") && kill -0 "$pid" 2>/dev/null; then
    ast "core stop now" >/dev/null
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [ -f "$T/sim.pid" ]; then kill "$(cat "$T/sim.pid")" 2>/dev/null || true; fi
  rm -f "$T/asterisk.pid" "$T/sim.pid"
}

cmd=${1:?usage: installed-call.sh start DIR SRC | call DIR | healthy DIR | stop DIR}
T=${2:?the instance directory}
case $cmd in
  start) start "${3:?the source tree}" ;;
  call) call ;;
  healthy) healthy ;;
  stop) stop ;;
  *) fail "unknown command $cmd" ;;
esac
