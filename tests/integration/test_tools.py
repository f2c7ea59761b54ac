"""Client tools through real calls: a real Asterisk, the freshly built module, the simulator.

The simulator's agent makes scripted tool calls (``Scenario.tool_calls``); the module carries
them out on the real channel: blind and warm transfers to dialplan targets, DTMF out to a SIP
UA, variables, hangup; AMI clients answer ``ami`` tools. What is checked is what really
happened: RTP the caller received, AMI events, channel variables logged by the dialplan,
what the simulator received.
"""

from __future__ import annotations

import math
import re
import struct
import subprocess
import time
import urllib.request
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asterisk import Asterisk, free_port
from calls_util import (
    REALTIME,
    AmiEvents,
    arrival_wall,
    log_time,
    prompt,
    rtp_stream,
    sent_utterances,
    sim_event_time,
    wait_until,
)
from convai_fixtures import agent, write_elevenlabs_conf
from rtpcall import RtpCall
from sipp import SIPP

from convai import audio
from convai.sim import ConversationRecord, Scenario, Simulator

AsteriskMaker = Callable[..., Asterisk]
SimMaker = Callable[..., Simulator]
FMT, CHUNK_MS, FRAME = "ulaw_8000", 100, 160

TOOLS = {
    "tool": "transfer_call: transfer",
    "transfer_target": "sales: blind, targets,sales,1",
}

DIALPLAN = """
[caller]
exten => listen,1,Answer()
 same => n,Wait(60)

[test]
exten => 100,1,Answer()
 same => n,ElevenLabsConvAI(sim)
 same => n,Verbose(1,AFTER status=${ELEVENLABS_STATUS} reason=${ELEVENLABS_END_REASON})
 same => n,Hangup()
exten => h,1,Verbose(1,RESULT status=${ELEVENLABS_STATUS} reason=${ELEVENLABS_END_REASON} \
target=${ELEVENLABS_TRANSFER_TARGET} account=${ELEVENLABS_VAR_account} \
reason_var=${ELEVENLABS_VAR_reason})

exten => 110,1,Answer()
 same => n,MixMonitor(${RECDIR}/mix.wav,r(${RECDIR}/caller.wav)t(${RECDIR}/agent.wav))
 same => n,ElevenLabsConvAI(sim)
 same => n,Hangup()

[targets]
exten => sales,1,Verbose(1,TARGET sales status=${ELEVENLABS_STATUS} \
target=${ELEVENLABS_TRANSFER_TARGET})
 same => n,Playback(${TONE})
 same => n,Wait(5)
 same => n,Hangup()
exten => answer,1,Ringing()
 same => n,Verbose(1,TARGET ringing)
 same => n,Wait(1)
 same => n,Answer()
 same => n,Verbose(1,TARGET answered)
 same => n,Wait(20)
exten => answer_rec,1,Ringing()
 same => n,Wait(0.5)
 same => n,Answer()
 same => n,Record(${RECDIR}/answered.wav,0,4,qk)
 same => n,Wait(20)
exten => noanswer,1,Ringing()
 same => n,Verbose(1,TARGET ringing)
 same => n,Wait(60)
exten => busy,1,Busy(5)

; Outbound: the called party (what a trunk would reach) and the dialplan the originate enters.
[callee]
; A Local channel sends no frames while it waits, and AMD counts silence in frames: the
; person's silence is played (silence/N), as a phone line would carry it.
exten => human,1,Answer()
 same => n,Playback(silence/1&hello&silence/3)
 same => n,Wait(30)
exten => machine,1,Answer()
 same => n,Playback(demo-congrats)
 same => n,Wait(30)
exten => noanswer,1,Wait(30)
exten => busy,1,Busy(5)

[outbound]
exten => s,1,AMD()
 same => n,Verbose(1,AMD status=${AMDSTATUS} cause=${AMDCAUSE})
 same => n,GotoIf($["${AMDSTATUS}" = "MACHINE"]?vm)
 same => n,ElevenLabsConvAI(sim)
 same => n,Hangup()
 same => n(vm),Playback(${TONE})
 same => n,Verbose(1,VOICEMAIL DROP played)
 same => n,Hangup()
"""


def tone_file(ast: Asterisk) -> tuple[str, bytes]:
    """A 1 s two-tone μ-law file (440 Hz + 1234.5 Hz: many distinct codes per frame, so it
    cannot be mistaken for anything else in the stream); its path without extension."""
    pcm = b"".join(
        struct.pack(
            "<h",
            int(
                6000 * math.sin(2 * math.pi * 440 * i / 8000)
                + 6000 * math.sin(2 * math.pi * 1234.5 * i / 8000)
            ),
        )
        for i in range(8000)
    )
    data = audio.ulaw_encode(pcm)
    path = ast.base / "tone"
    path.with_suffix(".ulaw").write_bytes(data)
    return str(path), data


def _asterisk(
    make: AsteriskMaker, sim: Simulator, tools: dict[str, Any], **kw: Any
) -> tuple[Asterisk, bytes]:
    """Asterisk with agent [sim] and its tool keys (repeatable, so written by hand and
    reloaded), the [targets] dialplan and a known tone for it to play."""
    section = agent(sim)
    ast = make(agents={"sim": section}, dialplan=DIALPLAN, options=REALTIME, **kw)
    lines = [f"{k} = {v}" for k, v in section.items()]
    for key, value in tools.items():
        lines += [f"{key} = {v}" for v in (value if isinstance(value, list) else [value])]
    conf = (ast.etc / "elevenlabs.conf").read_text().split("[sim]")[0]
    mark = ast.log_mark()
    write_elevenlabs_conf(ast, conf + "[sim]\n" + "\n".join(lines) + "\n")
    path, tone = tone_file(ast)
    ast.cli(f"dialplan set global TONE {path}")
    ast.cli("module reload app_elevenlabs_convai")
    ast.wait_for_log(r"elevenlabs\.conf reloaded", since=mark, timeout=10)
    return ast, tone


def _prometheus() -> tuple[int, dict[str, Any]]:
    """res_prometheus on a free port: (port, the Asterisk kwargs)."""
    port = free_port(udp=False, tcp=True)
    return port, {
        "more_modules": ["res_prometheus"],
        "configs": {
            "http.conf": f"[general]\nenabled = yes\nbindaddr = 127.0.0.1\nbindport = {port}\n",
            "prometheus.conf": (
                "[general]\nenabled = yes\nuri = metrics\ncore_metrics_enabled = no\n"
            ),
        },
    }


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in:\n{text}"
    return float(m.group(1))


def _conversation(sim: Simulator, timeout: float = 15.0) -> ConversationRecord:
    wait_until(lambda: bool(sim.conversations), timeout, "the simulator's conversation")
    return sim.conversations[0]


def _scenario(calls: list[dict[str, Any]], **kw: Any) -> Scenario:
    return Scenario(greeting="Hello.", tool_calls=[{"after_turn": 0, **c} for c in calls], **kw)


def _local_call(ast: Asterisk) -> None:
    ast.cli("channel originate Local/100@test extension listen@caller")


def _result(ast: Asterisk, timeout: float = 30) -> dict[str, str]:
    m = ast.wait_for_log(
        r"app_verbose\.c: RESULT status=(\S*) reason=(\S*) target=(\S*) account=(\S*)"
        r" reason_var=(.*)$",
        timeout=timeout,
    )
    return dict(
        zip(("status", "reason", "target", "account", "reason_var"), m.groups(), strict=True)
    )


# --- blind ---------------------------------------------------------------------------------------


@pytest.mark.sip
def test_blind_transfer_over_sip_last_words_then_the_target_without_a_gap(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """The agent says it transfers, then calls the tool (post-speech, no result awaited): the
    SIP caller hears all of those words, then the target's tone, with no gap over 200 ms."""
    words = "Let me put you through to our sales team right away."
    call = {
        "tool_name": "transfer_call",
        "parameters": {"destination": "sales"},
        "expects_response": False,
        "say_before": words,
    }
    sim = simulator(_scenario([call]))
    prom, kw = _prometheus()
    ast, tone = _asterisk(convai_asterisk, sim, TOOLS, **kw)
    with AmiEvents(ast) as ami, RtpCall(ast.sip_port, "100", codec="PCMU") as rtp:
        started = ami.wait("ElevenLabsConvAITransferStarted", timeout=20)[0]
        m = ast.wait_for_log(r"app_verbose\.c: TARGET sales status=(\S+) target=(\S+)$", timeout=20)
        assert m.groups() == ("TRANSFER", "sales")
        wait_until(lambda: tone[:1600] in rtp.audio(), 10, "the target's tone at the caller")
        time.sleep(0.3)
    rec = sim.conversations[0]
    assert started["Target"] == "sales" and started["Mode"] == "blind", started
    assert started["ToolCallID"] == rec.tool_calls[0]["tool_call_id"]
    assert rec.tool_results == []  # the agent did not wait
    assert rec.client_close_code == 1000
    end = ami.of("ElevenLabsConvAIEnd")[0]
    assert (end["Status"], end["Reason"]) == ("TRANSFER", "transfer"), end
    assert _metric(prom, 'asterisk_elevenlabs_transfers_total{result="blind"}') == 1
    assert _metric(prom, 'asterisk_elevenlabs_transfers_total{result="failed"}') == 0
    assert _metric(prom, 'asterisk_elevenlabs_calls_total{status="TRANSFER"}') == 1

    utts = sent_utterances(sim, rec, FMT, CHUNK_MS)
    last = next(u for u in utts if u.text == words)
    stream = rtp_stream(rtp)
    at = stream.payload.find(last.audio)
    assert at >= 0, "the agent's last words did not reach the caller whole"
    tone_at = stream.payload.find(tone[:FRAME])
    assert tone_at > at
    # The gap the module adds: from the end of everything the agent sent (its TTS ends with
    # some silence of its own, which the module plays as it is) to the target's first frame.
    end_pkt = stream.packet_at(at + len(last.audio) - 1)
    first_tone = stream.packet_at(tone_at)
    gap_ms = (arrival_wall(first_tone) - arrival_wall(end_pkt)) * 1000 - 20
    tts_tail_ms = (len(last.audio) - len(last.audio.rstrip(b"\xff"))) / 8
    between = stream.payload[at + len(last.audio) : tone_at]
    print(
        f"blind transfer: the agent's audio ends -> the target's first frame: {gap_ms:.1f} ms "
        f"({len(between) // FRAME} frames between); the TTS's own trailing silence "
        f"{tts_tail_ms:.0f} ms"
    )
    assert gap_ms <= 200, gap_ms


@pytest.mark.sip  # PJSIP (or res_prometheus, which needs res_pjsip)
def test_blind_transfer_of_a_sip_caller_with_refer(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """A target with refer=: the PJSIP caller gets a SIP REFER to the configured URI (not to
    anything the agent said), accepts it, and Asterisk hangs up its leg."""
    call = {
        "tool_name": "transfer_call",
        "parameters": {"destination": "frontdesk"},
        "expects_response": False,
        "say_before": "Transferring you to the front desk.",
    }
    tools = {
        "tool": "transfer_call: transfer",
        "transfer_target": "frontdesk: blind, targets,sales,1, refer=sip:frontdesk@127.0.0.1:5999",
    }
    sim = simulator(_scenario([call]))
    ast, _ = _asterisk(convai_asterisk, sim, tools, more_modules=["res_pjsip_refer"])
    with AmiEvents(ast) as ami, RtpCall(ast.sip_port, "100", accept_refer=True) as rtp:
        answered = ami.wait("ElevenLabsConvAITransferAnswered", timeout=20)[0]
        assert rtp.wait_bye(10), "Asterisk hangs up its leg after the REFER"
    result = _result(ast)
    assert rtp.refers and "sip:frontdesk@127.0.0.1:5999" in rtp.refers[0], rtp.refers
    assert answered["Mode"] == "refer" and answered["Target"] == "frontdesk", answered
    assert (result["status"], result["target"]) == ("TRANSFER", "frontdesk"), result
    assert "TARGET sales" not in ast.log_text()  # the dialplan fallback was not needed
    assert sim.conversations[0].client_close_code == 1000


def test_unknown_target_is_an_error_and_the_call_goes_on(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    call = {
        "tool_name": "transfer_call",
        "parameters": {"destination": "PJSIP/evil,1"},
        "on_error": "Sorry, I cannot do that.",
    }
    sim = simulator(_scenario([call]))
    ast, _ = _asterisk(convai_asterisk, sim, TOOLS)
    with AmiEvents(ast) as ami:
        _local_call(ast)
        rec = _conversation(sim)
        wait_until(lambda: bool(rec.tool_results), 15, "the tool result")
        wait_until(lambda: len(rec.agent_responses) >= 2, 10, "the agent's reaction")
        res = rec.tool_results[0]
        assert res["is_error"] is True
        assert res["result"] == (
            "unknown transfer destination 'PJSIP/evil,1'; valid destinations: sales"
        )
        time.sleep(1.0)
        assert not rec.done, "the conversation goes on"
        assert not ami.of("ElevenLabsConvAITransferStarted")
        tc = ami.wait("ElevenLabsConvAIToolCall")[0]
        assert tc["Handler"] == "module" and tc["ToolName"] == "transfer_call", tc
        ast.cli("channel request hangup all")
    assert _result(ast)["status"] == "HANGUP"


def test_blind_target_missing_from_the_dialplan_is_refused_fail_closed(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    call = {"tool_name": "transfer_call", "parameters": {"destination": "gone"}}
    tools = {"tool": "transfer_call: transfer", "transfer_target": "gone: blind, nowhere,s,1"}
    sim = simulator(_scenario([call], end_keyword=None))
    ast, _ = _asterisk(convai_asterisk, sim, tools)
    _local_call(ast)
    rec = _conversation(sim)
    wait_until(lambda: bool(rec.tool_results), 15, "the result")
    time.sleep(0.5)
    assert not rec.done, "the conversation goes on"
    ast.cli("channel request hangup all")
    assert rec.tool_results[0]["is_error"] is True
    assert rec.tool_results[0]["result"] == (
        "transfer to gone failed: the target is not in the dialplan"
    )
    assert _result(ast)["status"] == "HANGUP"


# --- warm ----------------------------------------------------------------------------------------


def test_warm_transfer_answered_bridges_and_closes_1000(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    call = {"tool_name": "transfer_call", "parameters": {"destination": "support"}}
    tools = {
        "tool": "transfer_call: transfer",
        "transfer_target": "support: warm, Local/answer@targets, timeout=10",
    }
    sim = simulator(_scenario([call], end_keyword=None))
    ast, _ = _asterisk(convai_asterisk, sim, tools)
    with AmiEvents(ast) as ami:
        _local_call(ast)
        rec = _conversation(sim)
        answered = ami.wait("ElevenLabsConvAITransferAnswered", timeout=20)[0]
        wait_until(lambda: rec.done, 10, "the conversation closed")
        bridged = ami.wait("BridgeEnter", count=2, timeout=10)
        ast.wait_for_log(r"TARGET answered")
        ast.cli("channel request hangup all")
    t_call = sim_event_time(rec, "client_tool_call")[0]
    lines = ast.log_text().splitlines()
    ring_line = next(ln for ln in lines if "TARGET ringing" in ln)
    ans_line = next(ln for ln in lines if "TARGET answered" in ln)
    print(
        f"warm transfer: tool call -> target ringing {log_time(ring_line) - t_call:.3f} s, "
        f"-> answered {log_time(ans_line) - t_call:.3f} s (the target answers after 1 s), "
        f"AMI Answered Seconds={answered['Seconds']}"
    )
    res = rec.tool_results[0]
    assert res["is_error"] is False and res["result"].startswith("ringing: calling support"), res
    assert rec.client_close_code == 1000, (rec.client_close_code, rec.client_close_reason)
    started = ami.of("ElevenLabsConvAITransferStarted")[0]
    assert started["Mode"] == "warm" and started["Target"] == "support"
    chans = {e["Channel"] for e in bridged}
    assert any(c.startswith("Local/100@test") for c in chans), chans
    assert any(c.startswith("Local/answer@targets") for c in chans), chans
    end = ami.of("ElevenLabsConvAIEnd")[0]
    assert end["Status"] == "TRANSFER", end
    assert log_time(ring_line) - t_call < 1.0


@pytest.mark.sip
def test_warm_transfer_to_a_sip_phone_ringing_and_answer_times(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """The warm target is a SIP phone (SIPp's built-in UAS: 180 Ringing, then 200 OK): the
    time from the agent's tool call to the phone ringing, and to the answer, over real SIP."""
    uas_port = free_port(udp=True, tcp=False)
    desk = f"""
[desk]
type = endpoint
transport = transport-udp
context = test
disallow = all
allow = ulaw
direct_media = no
aors = desk

[desk]
type = aor
contact = sip:desk@127.0.0.1:{uas_port}
"""
    call = {"tool_name": "transfer_call", "parameters": {"destination": "desk"}}
    tools = {"tool": "transfer_call: transfer", "transfer_target": "desk: warm, PJSIP/desk"}
    sim = simulator(_scenario([call], end_keyword=None))
    uas = subprocess.Popen(
        [SIPP, "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1", "-nostdin"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ast, _ = _asterisk(
            convai_asterisk, sim, tools, configs={"pjsip.conf": lambda a: a.pjsip_conf(extra=desk)}
        )
        with AmiEvents(ast) as ami:
            _local_call(ast)
            rec = _conversation(sim)
            answered = ami.wait("ElevenLabsConvAITransferAnswered", timeout=20)[0]
            ami.wait("BridgeEnter", count=2, timeout=10)
            ast.cli("channel request hangup all")
    finally:
        uas.terminate()
        uas.wait(timeout=5)
    t_call = sim_event_time(rec, "client_tool_call")[0]
    t_started = next(t for t, e in ami.timed("ElevenLabsConvAITransferStarted"))
    ring, answer = float(answered["RingSeconds"]), float(answered["Seconds"])
    lead = t_started - t_call
    print(
        f"warm transfer to a SIP phone: tool call -> transfer started {lead:.3f} s, "
        f"-> ringing {lead + ring:.3f} s, -> answered {lead + answer:.3f} s"
    )
    assert answered["Mode"] == "warm" and rec.client_close_code == 1000
    assert 0 <= ring <= answer < 2.0, answered


def test_warm_transfer_whisper_is_heard_by_the_person_who_answers(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    call = {"tool_name": "transfer_call", "parameters": {"destination": "support"}}
    sim = simulator(_scenario([call], end_keyword=None))
    ast, tone = _asterisk(convai_asterisk, sim, {})
    recdir = ast.base / "rec"
    recdir.mkdir()
    ast.cli(f"dialplan set global RECDIR {recdir}")
    tools = {
        "tool": "transfer_call: transfer",
        "transfer_target": f"support: warm, Local/answer_rec@targets, whisper={ast.base}/tone",
    }
    conf = (ast.etc / "elevenlabs.conf").read_text()
    mark = ast.log_mark()
    write_elevenlabs_conf(ast, conf + "\n".join(f"{k} = {v}" for k, v in tools.items()) + "\n")
    ast.cli("module reload app_elevenlabs_convai")
    ast.wait_for_log(r"elevenlabs\.conf reloaded", since=mark, timeout=10)
    with AmiEvents(ast) as ami:
        _local_call(ast)
        answered = ami.wait("ElevenLabsConvAITransferAnswered", timeout=20)[0]
        ami.wait("BridgeEnter", count=2, timeout=10)
        time.sleep(0.5)
        ast.cli("channel request hangup all")
    wait_until(lambda: (recdir / "answered.wav").exists(), 10, "the target's recording")
    ast.wait_no_channels(10)
    heard = _samples(recdir / "answered.wav")
    assert heard.find(audio.ulaw_decode(tone[800:2400])) >= 0, "no whisper at the target"
    # The bridge waits for the whole 1 s whisper after the answer (0.5 s of ringing).
    assert float(answered["Seconds"]) >= 1.5, answered


@pytest.mark.sip  # PJSIP (or res_prometheus, which needs res_pjsip)
def test_warm_transfer_not_answered_the_agent_goes_on(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    call = {"tool_name": "transfer_call", "parameters": {"destination": "support"}}
    tools = {
        "tool": "transfer_call: transfer",
        "transfer_target": "support: warm, Local/noanswer@targets, timeout=5",
    }
    sim = simulator(_scenario([call], end_keyword=None))
    prom, kw = _prometheus()
    ast, _ = _asterisk(convai_asterisk, sim, tools, **kw)
    with AmiEvents(ast) as ami:
        _local_call(ast)
        rec = _conversation(sim)
        ami.wait("ElevenLabsConvAITransferStarted", timeout=20)
        ast.wait_for_log(r"TARGET ringing", timeout=5)
        chan = next(c for c in ast.channels() if c.startswith("Local/100@test") and c[-1] == "2")
        shown = ast.cli(f"elevenlabs show call {chan}")
        failed = ami.wait("ElevenLabsConvAITransferFailed", timeout=20)[0]
        wait_until(lambda: bool(rec.contextual_updates), 5, "the agent told")
        t_call = sim_event_time(rec, "client_tool_call")[0]
        t_update = sim_event_time(rec, "contextual_update", "in")[0]
        time.sleep(1.0)
        assert not rec.done, "the conversation goes on"
        assert "Local/100@test" in ast.cli("elevenlabs show calls")
        ast.cli("channel request hangup all")
    print(f"warm transfer not answered: tool call -> agent told {t_update - t_call:.3f} s")
    assert rec.tool_results[0]["result"].startswith("ringing")
    assert failed["Reason"] == "no answer after 5 s", failed
    assert rec.contextual_updates[0]["text"] == (
        "The transfer to support did not go through: no answer after 5 s. "
        "The caller is still on the line with you."
    )
    assert 5.0 <= t_update - t_call < 6.5
    assert not [c for c in ast.channels() if "noanswer" in c]
    assert re.search(
        r"^Transfer: +warm to support \(Local/noanswer@targets\): ringing for \d", shown, re.M
    ), shown
    assert "Transfer targets: support (warm)" in shown and "transfer_call (transfer)" in shown
    assert _metric(prom, 'asterisk_elevenlabs_transfers_total{result="failed"}') == 1
    assert _metric(prom, 'asterisk_elevenlabs_transfers_total{result="answered"}') == 0


def test_warm_transfer_busy_and_caller_leaving_while_it_rings(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """Busy: the agent hears why at once. The caller hangs up while the target rings: the
    target is hung up too (no channel left behind) and the transfer is reported failed."""
    calls = [
        {"tool_name": "transfer_call", "parameters": {"destination": "busy"}},
        {"tool_name": "transfer_call", "parameters": {"destination": "ringing"}},
    ]
    tools = {
        "tool": "transfer_call: transfer",
        "transfer_target": [
            "busy: warm, Local/busy@targets",
            "ringing: warm, Local/noanswer@targets, timeout=60",
        ],
    }
    sim = simulator(_scenario(calls, end_keyword=None))
    ast, _ = _asterisk(convai_asterisk, sim, tools)
    with AmiEvents(ast) as ami:
        _local_call(ast)
        rec = _conversation(sim)
        busy = ami.wait("ElevenLabsConvAITransferFailed", timeout=20)[0]
        wait_until(lambda: bool(rec.contextual_updates), 5, "the agent told")
        ami.wait("ElevenLabsConvAITransferStarted", count=2, timeout=20)
        ast.wait_for_log(r"TARGET ringing", timeout=10)
        caller = next(c for c in ast.channels() if c.startswith("Local/100@test") and c[-1] == "1")
        ast.cli(f"channel request hangup {caller}")
        left = ami.wait("ElevenLabsConvAITransferFailed", count=2, timeout=10)[1]
        ast.wait_no_channels(10)
    assert busy["Target"] == "busy" and busy["Reason"] == "the line is busy", busy
    assert "to busy did not go through: the line is busy" in rec.contextual_updates[0]["text"]
    assert left["Target"] == "ringing" and left["Reason"] == "the call ended first", left
    assert _result(ast)["status"] == "HANGUP"


# --- DTMF, variables, hangup ----------------------------------------------------------------------


def _dtmf_digits(rtp: RtpCall) -> list[tuple[str, float]]:
    """(digit, arrival of its first packet) for each RFC 4733 event the UA received."""
    names = "0123456789*#ABCD"
    out: list[tuple[str, float]] = []
    last_ts = None
    for p in rtp.dtmf_events():
        if p.timestamp != last_ts:
            last_ts = p.timestamp
            out.append((names[p.payload[0]], arrival_wall(p)))
    return out


@pytest.mark.sip
def test_dtmf_out_reaches_the_sip_far_end(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    calls = [
        {"tool_name": "press_keys", "parameters": {"digits": "12w#"}},
        {"tool_name": "press_keys", "parameters": {"digits": "9;Dial(x)"}},
    ]
    sim = simulator(_scenario(calls, end_keyword=None))
    ast, _ = _asterisk(convai_asterisk, sim, {"tool": "press_keys: dtmf"})
    with RtpCall(ast.sip_port, "100", codec="PCMU") as rtp:
        rec = _conversation(sim)
        wait_until(lambda: len(_dtmf_digits(rtp)) >= 3, 15, "three DTMF digits at the UA")
        time.sleep(0.5)
        digits = _dtmf_digits(rtp)
        out = ast.cli(f"elevenlabs show call {ast.channels()[0]}")
        rtp.hangup()
    assert "".join(d for d, _ in digits) == "12#", digits
    assert [(r["is_error"], r["result"]) for r in rec.tool_results] == [
        (False, "Sending DTMF 12w#."),
        (True, "invalid DTMF characters '();Dailx': only 0-9, *, #, w and W are allowed"),
    ]
    gap_2_hash = digits[2][1] - digits[1][1]
    assert 0.65 <= gap_2_hash < 1.2, gap_2_hash  # 100 ms tone, 100 ms gap, 500 ms w
    assert "DTMF sent:        3 digit(s)" in out, out


def test_set_variable_then_hangup_tool(simulator: SimMaker, convai_asterisk: AsteriskMaker) -> None:
    calls = [
        {"tool_name": "save", "parameters": {"account": "A-123", "reason": "late\r\nparcel"}},
        {"tool_name": "save", "parameters": {"PATH": "/tmp"}},
        {"tool_name": "bye", "say_before": "Thanks, goodbye.", "expects_response": False},
    ]
    tools = {"tool": ["save: set_variable, variables=account|reason", "bye: hangup"]}
    sim = simulator(_scenario(calls))
    ast, _ = _asterisk(convai_asterisk, sim, tools)
    _local_call(ast)
    result = _result(ast)
    rec = sim.conversations[0]
    assert result == {
        "status": "COMPLETED",
        "reason": "agent_ended_call",
        "target": "",
        "account": "A-123",
        "reason_var": "late  parcel",
    }
    assert rec.tool_results[1]["is_error"] is True
    assert rec.client_close_code == 1000


# --- AMI -----------------------------------------------------------------------------------------


def test_ami_handler_answers_and_timeout(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    calls = [
        {"tool_name": "crm_lookup", "tool_call_id": "call_answered", "parameters": {"q": "A1"}},
        {"tool_name": "crm_lookup", "tool_call_id": "call_ignored", "parameters": {"q": "B2"}},
    ]
    sim = simulator(_scenario(calls, end_keyword=None, tool_result_timeout_s=10))
    ast, _ = _asterisk(convai_asterisk, sim, {"tool": "crm_lookup: ami, timeout=2"})
    with AmiEvents(ast) as ami, ast.ami(events=False) as handler:
        _local_call(ast)
        ev = ami.wait(
            "ElevenLabsConvAIToolCall", lambda e: e.get("ToolCallID") == "call_answered", 20
        )[0]
        assert ev["Handler"] == "ami" and ev["Parameters"] == '{"q":"A1"}', ev
        bad = handler.action(
            "ElevenLabsConvAIToolResult", Channel="Local/nope", ToolCallID="x", Result="r"
        )
        assert bad["Response"] == "Error", bad
        ok = handler.action(
            "ElevenLabsConvAIToolResult",
            Channel=ev["Channel"],
            ToolCallID="call_answered",
            Result='{"tier":"gold"}',
            IsError="no",
        )
        assert ok["Response"] == "Success", ok
        rec = _conversation(sim)
        wait_until(lambda: len(rec.tool_results) >= 2, 15, "both results")
        ast.cli("channel request hangup all")
    by_id = {r["tool_call_id"]: r for r in rec.tool_results}
    assert by_id["call_answered"]["result"] == '{"tier":"gold"}'
    assert by_id["call_answered"]["is_error"] is False
    assert by_id["call_ignored"]["error_type"] == "client_timeout"
    assert by_id["call_ignored"]["result"] == "no answer from the crm_lookup handler within 2 s"
    t = {e.detail.split()[0]: e.t for e in rec.events if e.type == "client_tool_result"}
    t_calls = [e.t for e in rec.events if e.type == "client_tool_call"]
    assert 1.9 <= t["call_ignored"] - t_calls[1] < 3.0


def test_ami_injection_through_a_tool_call_adds_no_header(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """CR/LF in a tool name: the message is refused as malformed (no event at all); in the
    parameters: escaped inside the one Parameters field. Either way no header is added and
    nothing is originated."""
    evil = "\r\nAction: Originate\r\nChannel: Local/evil@test\r\nApplication: Wait"
    calls = [
        {"tool_name": "x" + evil, "tool_call_id": "c_name", "expects_response": False},
        {"tool_name": "transfer_call", "tool_call_id": "c_params", "parameters": {evil: evil}},
    ]
    sim = simulator(_scenario(calls, end_keyword=None))
    ast, _ = _asterisk(convai_asterisk, sim, TOOLS)
    with AmiEvents(ast) as ami:
        _local_call(ast)
        ev = ami.wait("ElevenLabsConvAIToolCall", timeout=20)[0]
        rec = _conversation(sim)
        wait_until(lambda: bool(rec.tool_results), 10, "the error result")
        ast.cli("channel request hangup all")
    print(ev)
    assert len(ami.of("ElevenLabsConvAIToolCall")) == 1  # the first call never became one
    assert ev["ToolCallID"] == "c_params", ev
    assert "Action" not in ev and "Application" not in ev, ev
    assert ev["Channel"].startswith("Local/100@test"), ev
    assert ev["Parameters"].count("Action: Originate") == 2 and "\\r\\n" in ev["Parameters"]
    assert not [c for c in ast.channels() if "evil" in c]
    assert rec.tool_results[0]["is_error"] is True
    assert any(
        "skipping malformed server message: client_tool_call" in ln for ln in ast.log_lines()
    )


def test_system_transfer_to_number_warns_and_raises_an_event(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    calls = [
        {"tool_name": "transfer_to_number", "system": True},
        {"tool_name": "transfer_to_number", "system": True},
    ]
    sim = simulator(_scenario(calls, end_keyword=None))
    ast, _ = _asterisk(convai_asterisk, sim, TOOLS)
    with AmiEvents(ast) as ami:
        _local_call(ast)
        evs = ami.wait("ElevenLabsConvAISystemTool", count=2, timeout=20)
        ast.cli("channel request hangup all")
    assert [e["ToolName"] for e in evs] == ["transfer_to_number"] * 2
    warnings = [ln for ln in ast.log_lines() if "WARNING" in ln and "transfer_to_number" in ln]
    assert len(warnings) == 1, warnings
    assert "(transfer_call) instead" in warnings[0]


def test_tool_config_errors_name_file_line_section_key(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    sim = simulator()
    bad = {
        "tool": ["t1: teleport", "t2: ami, timeout=999", "t3: set_variable"],
        "transfer_target": [
            "x: blind, ctx,100",
            "y: warm, PJSIP/a&PJSIP/b",
            "z: blind, ctx,s,1, refer=http://x",
        ],
    }
    ast, _ = _asterisk(convai_asterisk, sim, bad)
    wait_until(lambda: "agent disabled" in ast.log_text() or "keeping" in ast.log_text(), 10, "")
    text = ast.log_text()
    for key, what in [
        ("tool", "'teleport' is not an action"),
        ("tool", "timeout '999' is not 1 to 120 seconds"),
        ("tool", "set_variable needs variables="),
        ("transfer_target", "blind needs context,extension,priority"),
        ("transfer_target", "warm needs one dial string"),
        ("transfer_target", "refer 'http://x' is not a sip: URI"),
    ]:
        assert re.search(rf"elevenlabs\.conf line \d+: \[sim\] {key}: .*{re.escape(what)}", text), (
            key,
            what,
        )


def test_the_examples_in_elevenlabs_conf_example_load(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """Every commented tool and transfer_target line of the example file, uncommented, is a
    valid configuration (the documentation cannot drift from the parser)."""
    example = (Path(__file__).resolve().parents[2] / "elevenlabs.conf.example").read_text()
    lines = re.findall(r"^;((?:tool|transfer_target) = .*)$", example, re.M)
    assert len(lines) >= 8, lines
    keys: dict[str, list[str]] = {"tool": [], "transfer_target": []}
    for line in lines:
        key, _, value = line.partition(" = ")
        keys[key].append(value)
    sim = simulator()
    ast, _ = _asterisk(convai_asterisk, sim, dict(keys))
    text = ast.log_text()
    assert "elevenlabs.conf reloaded: 1 agent(s) configured" in text, text[-2000:]
    assert not re.search(r"\[sim\] (tool|transfer_target):", text), text[-2000:]


# --- outbound ------------------------------------------------------------------------------------


def test_outbound_originate_with_amd_human_machine_no_answer_busy(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """AMI Originate places the call; on answer AMD() decides: a person ("hello", then
    silence) talks to the agent, which gets the called number as {{called_number}}; an
    answering machine (a long greeting) gets the voicemail drop and no conversation. No answer
    and busy fail the originate: the app never runs."""
    sim = simulator(Scenario(end_keyword=None))
    ast, _ = _asterisk(
        convai_asterisk,
        sim,
        {"dynamic_variable": "called_number=${CALLED}"},
        more_modules=["app_amd"],
        configs={"amd.conf": "[general]\n"},  # app_amd's defaults (it refuses to load without)
    )

    def originate(ami_: Any, callee: str, number: str, timeout_ms: int = 10000) -> None:
        r = ami_.action(
            "Originate",
            Channel=f"Local/{callee}@callee",
            Context="outbound",
            Exten="s",
            Priority="1",
            Variable=f"CALLED={number}",
            Timeout=str(timeout_ms),
            Async="true",
        )
        assert r["Response"] == "Success", r

    with AmiEvents(ast) as ami, ast.ami(events=False) as client:
        originate(client, "human", "15551230199")
        m = ast.wait_for_log(r"app_verbose\.c: AMD status=(\S+) cause=(\S*)", timeout=20)
        assert m.group(1) == "HUMAN", m.group(0)
        rec = _conversation(sim)
        wait_until(lambda: bool(rec.sent_audio), 10, "the agent's greeting")
        ast.cli("channel request hangup all")
        mark = ast.log_mark()
        originate(client, "machine", "15551230200")
        m = ast.wait_for_log(
            r"app_verbose\.c: AMD status=(\S+) cause=(\S*)", since=mark, timeout=20
        )
        assert m.group(1) == "MACHINE", m.group(0)
        ast.wait_for_log(r"VOICEMAIL DROP played", since=mark, timeout=10)
        originate(client, "noanswer", "15551230201", timeout_ms=2000)
        originate(client, "busy", "15551230202")
        responses = ami.wait("OriginateResponse", count=4, timeout=20)
    init = rec.init or {}
    assert init.get("dynamic_variables", {}).get("called_number") == "15551230199", init
    assert len(sim.conversations) == 1, "only the person talked to the agent"
    by_channel = {r["Channel"].split(";")[0].split("-")[0]: r for r in responses}
    assert by_channel["Local/noanswer@callee"]["Response"] == "Failure", by_channel
    assert by_channel["Local/busy@callee"]["Response"] == "Failure", by_channel
    print({k: (v["Response"], v.get("Reason")) for k, v in by_channel.items()})


# --- recording -----------------------------------------------------------------------------------


def _samples(path: Any) -> bytes:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        return w.readframes(w.getnframes())


@pytest.mark.sip  # PJSIP (or res_prometheus, which needs res_pjsip)
def test_mixmonitor_records_caller_and_agent_aligned(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """MixMonitor on the agent's channel: the agent's words (t) and the caller's (r) are in
    the recording bit-exact (μ-law decoded), and where they sit in it matches when they were
    really heard and said, within 60 ms; the mix holds both."""
    greeting = "Hello, this call is recorded. Please say something after the beep."
    sim = simulator(Scenario(greeting=greeting, interrupt_on_speech=False, end_keyword=None))
    ast, _ = _asterisk(convai_asterisk, sim, {}, more_modules=["res_convert"])
    recdir = ast.base / "rec"
    recdir.mkdir()
    ast.cli(f"dialplan set global RECDIR {recdir}")
    speech = prompt(ast, "hello-world", "ulaw", ast.base)
    with RtpCall(ast.sip_port, "110", codec="PCMU") as rtp:
        rec = _conversation(sim)
        wait_until(lambda: len(rtp.audio().strip(b"\xff")) > 8000, 15, "1 s of the greeting")
        t_said = time.time()
        rtp.send_audio(speech, wait=True)
        time.sleep(0.5)
        rtp.hangup()
    wait_until(lambda: (recdir / "mix.wav").exists(), 10, "the recording")
    ast.wait_no_channels(10)
    agent_rec, caller_rec, mix = (
        _samples(recdir / n) for n in ("agent.wav", "caller.wav", "mix.wav")
    )
    utt = next(u for u in sent_utterances(sim, rec, FMT, CHUNK_MS) if u.text == greeting)
    # 200 ms of speech from inside each, decoded as Asterisk decodes μ-law
    agent_probe = audio.ulaw_decode(utt.audio[4000:5600])
    caller_probe = audio.ulaw_decode(speech[2400:4000])
    a_at = agent_rec.find(agent_probe)
    c_at = caller_rec.find(caller_probe)
    assert a_at >= 0 and a_at % 2 == 0, "the agent's words are not in the recording bit-exact"
    assert c_at >= 0 and c_at % 2 == 0, "the caller's words are not in the recording bit-exact"
    assert len(agent_rec) == len(caller_rec) or abs(len(agent_rec) - len(caller_rec)) < 3200
    # When the caller heard byte 4000 of the greeting, and when it said byte 2400 of its own.
    stream = rtp_stream(rtp)
    heard = arrival_wall(stream.packet_at(stream.payload.find(utt.audio) + 4000))
    said = t_said + 2400 / 8000
    rec_delta = (c_at - a_at) / 2 / 8000
    print(
        f"recording: caller's words {rec_delta * 1000:.0f} ms after the agent's in the file; "
        f"really {(said - heard) * 1000:.0f} ms"
    )
    assert abs(rec_delta - (said - heard)) < 0.06, (rec_delta, said - heard)
    # The mix is the two directions summed, on the same timeline: where the caller talks over
    # the agent, each mixed sample is the (saturated) sum of the two recorded ones.
    m_at = mix.find(agent_probe)
    assert m_at >= 0 and m_at % 2 == 0, "the agent's words are not in the mix"
    shift = m_at - a_at
    n = 800
    agent_part = struct.unpack(f"<{n}h", agent_rec[c_at : c_at + 2 * n])
    caller_part = struct.unpack(f"<{n}h", caller_rec[c_at : c_at + 2 * n])
    mixed = struct.unpack(f"<{n}h", mix[c_at + shift : c_at + shift + 2 * n])
    expected = [
        max(-32768, min(32767, x + y)) for x, y in zip(agent_part, caller_part, strict=True)
    ]
    assert mixed == tuple(expected)
    assert max(abs(x) for x in caller_part) > 1000 and max(abs(x) for x in agent_part) > 0
