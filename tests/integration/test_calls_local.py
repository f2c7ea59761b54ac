"""Real calls over Local channels: a real Asterisk, the freshly built module, the simulator.

The caller is the originated half of a Local channel pair (``;1``), running the [caller]
context below; the other half (``;2``) runs exten 100/101/... in [test], which calls the
application. The caller speaks with Asterisk's own prompts. Where a test needs the caller to
act at a given moment (speak during the greeting, press keys, hang up), it redirects the
caller leg to another extension or hangs it up, once the AMI events or the simulator's record
show that the moment has come: no fixed sleeps decide anything here.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path

from asterisk import Asterisk, free_port
from calls_util import (
    REALTIME,
    AmiEvents,
    assert_realtime,
    caller_leg,
    expected_frames,
    frames_of,
    percentile,
    result_lines,
    sent_utterances,
    sim_event_time,
    stat,
    wait_until,
)
from convai_fixtures import RESULT, TEST_KEY, agent

from convai.sim import ConversationRecord, Scenario, Simulator

CALLER_NUMBER = "15551230100"
FMT, CHUNK_MS, FRAME = "ulaw_8000", 100, 160  # the simulator's defaults; μ-law frames

# [caller]: the scripted caller legs. [test]: the agent side. The h extension logs the
# result, so it shows whether the app hung up (no CONTINUED) or returned (option c).
DIALPLAN = f"""
[caller]
exten => listen,1,Answer()
 same => n,Wait(60)
exten => speak,1,Playback(hello-world)
 same => n,Wait(60)
exten => dtmf,1,SendDTMF(12#)
 same => n,Wait(60)
; talker speaks once the greeting is over, however long the agent took to connect: it hears
; the greeting start (noise) and end (silence) first, so it barges in only when the test wants.
exten => talker,1,Answer()
 same => n,WaitForNoise(100,1,10)
 same => n,WaitForSilence(300,1,10)
 same => n,Playback(hello-world)
 same => n,Wait(60)

[test]
exten => 100,1,Answer()
 same => n,Set(CALLERID(num)={CALLER_NUMBER})
 same => n,ElevenLabsConvAI(sim)
 same => n,Verbose(1,CONTINUED)
 same => n,Hangup()
exten => 101,1,Answer()
 same => n,ElevenLabsConvAI(sim,c)
 same => n,Verbose(1,CONTINUED status=${{ELEVENLABS_STATUS}} reason=${{ELEVENLABS_END_REASON}})
 same => n,Hangup()
exten => h,1,{RESULT}
"""

RESULT_RE = r"app_verbose\.c: RESULT status=(\S+) reason=(\S+) conv=(\w*)$"

AsteriskMaker = Callable[..., Asterisk]
SimMaker = Callable[..., Simulator]


def _asterisk(make: AsteriskMaker, agents: dict[str, dict[str, str]], dialplan: str) -> Asterisk:
    ast = make(agents=agents, dialplan=dialplan, options=REALTIME)
    assert_realtime(ast)
    return ast


def _call(ast: Asterisk, exten: str = "100", caller: str = "listen") -> None:
    ast.cli(f"channel originate Local/{exten}@test extension {caller}@caller")


def _conversation(sim: Simulator, timeout: float = 10.0, index: int = 0) -> ConversationRecord:
    wait_until(lambda: len(sim.conversations) > index, timeout, "the simulator's conversation")
    return sim.conversations[index]


def _stats_line(stats: dict[str, str]) -> str:
    keys = (
        "FramesPlayed",
        "Underruns",
        "LateTicks",
        "FramesDropped",
        "Interruptions",
        "PlayoutP50Us",
        "PlayoutP99Us",
        "PlayoutMaxUs",
        "FirstFrameP99Us",
        "BargeInP99Us",
        "UplinkP99Us",
    )
    return " ".join(f"{k}={stats.get(k)}" for k in keys)


def test_full_conversation_with_barge_in_completes(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """Greeting; the caller talks over it (Playback(hello-world)): interruption; the agent's
    reply to the interruption is its farewell and end_call: COMPLETED/agent_ended_call,
    hung up (no CONTINUED), AMI Start -> Interruption -> Stats -> End, caller number sent."""
    sim = simulator(Scenario(end_after_turns=1))
    ast = _asterisk(convai_asterisk, {"sim": agent(sim)}, DIALPLAN)
    mark = ast.log_mark()
    t0 = time.monotonic()
    with AmiEvents(ast) as ami:
        _call(ast)
        start = ami.wait("ElevenLabsConvAIStart", timeout=15)[0]
        rec = _conversation(sim)
        # The caller speaks while the greeting is playing.
        wait_until(lambda: len(rec.sent_audio) >= 3, 10, "greeting audio")
        ast.cli(f"channel redirect {caller_leg(start['Channel'])} caller,speak,1")
        uid = start["Uniqueid"]
        end = ami.wait("ElevenLabsConvAIEnd", lambda e: e["Uniqueid"] == uid, timeout=40)[0]
        stats = ami.of("ElevenLabsConvAIStats", lambda e: e["Uniqueid"] == uid)[0]
        line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
        sequence = ami.convai_sequence(uid)
        interruption = ami.of("ElevenLabsConvAIInterruption", lambda e: e["Uniqueid"] == uid)
    took = time.monotonic() - t0
    ast.wait_no_channels(timeout=10)
    wait_until(lambda: rec.done, 5, "the simulator's end of the conversation")

    utts = sent_utterances(sim, rec, FMT, CHUNK_MS)
    print(f"call took {took:.1f} s; End: {end['Status']}/{end['Reason']} in {end['Duration']} s")
    print(f"AMI sequence: {sequence}")
    print(f"Stats: {_stats_line(stats)}")
    print(f"utterances sent: {[(u.event_id, u.text[:24], len(u.audio)) for u in utts]}")

    status, reason, conv = line.groups()
    assert (status, reason) == ("COMPLETED", "agent_ended_call"), line.group(0)
    assert conv == rec.conversation_id == start["ConversationID"] == end["ConversationID"]
    assert "app_verbose.c: CONTINUED" not in ast.log_text()[mark:], (
        "the app returned instead of hanging up"
    )
    assert sequence == [
        "ElevenLabsConvAIStart",
        "ElevenLabsConvAIInterruption",
        "ElevenLabsConvAISystemTool",  # the agent's end_call
        "ElevenLabsConvAIStats",
        "ElevenLabsConvAIEnd",
    ], sequence
    assert [int(e["EventID"]) for e in interruption] == rec.interruptions
    assert rec.end_reason == "end_call" and rec.client_close_code is None, rec.end_reason
    # The caller was heard (a real turn from real speech), and the reply reused the
    # interruption's id, as the service does; it played in full.
    assert rec.user_transcripts, rec.events
    assert max(rec.vad_scores) > 0.9, max(rec.vad_scores)
    farewell = utts[-1]
    assert farewell.event_id == rec.interruptions[0] and farewell.text == "Goodbye!"
    played, dropped = stat(stats, "FramesPlayed"), stat(stats, "FramesDropped")
    assert stat(stats, "Interruptions") == 1 and dropped > 0, _stats_line(stats)
    assert frames_of(len(farewell.audio), FRAME) <= played
    assert played + dropped <= expected_frames(utts, FRAME), (played, dropped)
    assert stat(stats, "Underruns") == 0
    # The agent's dynamic variables carry the caller's number (and user_id groups calls).
    assert rec.init is not None
    variables = rec.init.get("dynamic_variables", {})
    print(f"dynamic_variables: {variables}; user_id: {rec.init.get('user_id')}")
    assert variables.get("caller_number") == CALLER_NUMBER, rec.init
    assert variables.get("caller_id") == CALLER_NUMBER, rec.init
    assert rec.init.get("user_id") == CALLER_NUMBER, rec.init
    assert not ast.errors(), ast.errors()


def test_option_c_returns_to_the_dialplan(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """ElevenLabsConvAI(sim,c): a completed conversation continues in the dialplan. No caller
    number on this call: the agent gets 'unknown' and no user_id."""
    sim = simulator(Scenario(greeting="Hello.", close_after_s=1.5))
    ast = _asterisk(convai_asterisk, {"sim": agent(sim)}, DIALPLAN)
    mark = ast.log_mark()
    _call(ast, exten="101")
    cont = ast.wait_for_log(
        r"app_verbose\.c: CONTINUED status=(\S+) reason=(\S+)$", timeout=20, since=mark
    )
    line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
    print(cont.group(0), "|", line.group(0))
    assert cont.groups() == ("COMPLETED", "completed"), cont.group(0)
    assert line.groups()[:2] == ("COMPLETED", "completed"), line.group(0)
    assert cont.start() < line.start()
    rec = _conversation(sim)
    assert line.group(3) == rec.conversation_id
    assert rec.init is not None
    variables = rec.init.get("dynamic_variables", {})
    print(f"dynamic_variables without a caller number: {variables}")
    assert variables.get("caller_number") == "unknown", rec.init
    assert "user_id" not in rec.init, rec.init
    ast.wait_no_channels(timeout=10)
    assert not ast.errors(), ast.errors()


def test_caller_hangup_mid_utterance_closes_the_websocket_at_once(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """The caller hangs up while the greeting plays: HANGUP/caller_hangup, and the agent sees
    a clean close (1000) within a second."""
    sim = simulator(Scenario())  # a 5.6 s greeting
    ast = _asterisk(convai_asterisk, {"sim": agent(sim)}, DIALPLAN)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami:
        _call(ast)
        start = ami.wait("ElevenLabsConvAIStart", timeout=15)[0]
        rec = _conversation(sim)
        wait_until(lambda: rec.sent_audio, 10, "greeting audio")
        first_audio = rec.started_at + rec.sent_audio[0].t
        # Let about half a second of the greeting play (this only picks the moment).
        wait_until(lambda: time.time() > first_audio + 0.5, 5, "mid-greeting")
        t_hangup = time.time()
        ast.cli(f"channel request hangup {caller_leg(start['Channel'])}")
        wait_until(lambda: rec.client_close_code is not None or rec.done, 5, "client close")
        uid = start["Uniqueid"]
        stats = ami.wait("ElevenLabsConvAIStats", lambda e: e["Uniqueid"] == uid, timeout=10)[0]
    line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
    wait_until(lambda: rec.done, 5, "the simulator's end of the conversation")
    close_at = sim_event_time(rec, "close", "in")[0]
    latency = close_at - t_hangup
    greeting = sent_utterances(sim, rec, FMT, CHUNK_MS)[0]
    print(
        f"hangup -> client close {rec.client_close_code} {rec.client_close_reason!r}: "
        f"{latency * 1000:.0f} ms (including the `asterisk -rx` round trip)"
    )
    print(f"greeting frames {frames_of(len(greeting.audio), FRAME)}; Stats: {_stats_line(stats)}")
    assert line.groups()[:2] == ("HANGUP", "caller_hangup"), line.group(0)
    assert rec.client_close_code == 1000, (rec.client_close_code, rec.end_reason)
    assert rec.end_reason == "client_closed"
    assert 0 < latency < 1.0, latency
    # It really was mid-utterance: part of the greeting played, not all of it.
    assert 0 < stat(stats, "FramesPlayed") < frames_of(len(greeting.audio), FRAME)
    ast.wait_no_channels(timeout=10)
    assert not ast.errors(), ast.errors()


def _one_call_to_its_end(
    sim: Simulator, convai_asterisk: AsteriskMaker
) -> tuple[Asterisk, float, dict[str, str], re.Match[str], ConversationRecord]:
    """One call to agent [sim]: (Asterisk, time of its one End event, its Stats event, the
    dialplan's RESULT line, the simulator's record once it is done)."""
    ast = _asterisk(convai_asterisk, {"sim": agent(sim)}, DIALPLAN)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami:
        _call(ast)
        start = ami.wait("ElevenLabsConvAIStart", timeout=15)[0]
        uid = start["Uniqueid"]
        ami.wait("ElevenLabsConvAIEnd", lambda e: e["Uniqueid"] == uid, timeout=30)
        timed_ends = ami.timed("ElevenLabsConvAIEnd")
        assert len(timed_ends) == 1, timed_ends
        stats = ami.of("ElevenLabsConvAIStats", lambda e: e["Uniqueid"] == uid)[0]
    line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
    rec = _conversation(sim)
    wait_until(lambda: rec.done, 5, "the simulator's end of the conversation")
    return ast, timed_ends[0][0], stats, line, rec


def test_server_close_plays_out_queued_audio_before_hanging_up(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """The agent sends its 5.6 s greeting 4x faster than real time and closes (1000) 2 s in:
    every frame it sent is played before the call hangs up (COMPLETED/completed)."""
    sim = simulator(Scenario(close_after_s=2.0))
    ast, end_at, stats, line, rec = _one_call_to_its_end(sim, convai_asterisk)
    utts = sent_utterances(sim, rec, FMT, CHUNK_MS)
    sent_frames = expected_frames(utts, FRAME)
    audio_s = sum(len(u.audio) for u in utts) / 8000
    first_audio = utts[0].first_sent
    close_at = sim_event_time(rec, "close", "out")[0]
    queued_at_close = first_audio + audio_s - close_at
    print(
        f"agent audio {audio_s:.2f} s sent in {rec.sent_audio[-1].t - rec.sent_audio[0].t:.2f} s;"
        f" server close {close_at - first_audio:.2f} s after the first chunk with"
        f" ~{queued_at_close:.2f} s still to play; End {end_at - close_at:.2f} s after the close"
    )
    print(f"frames sent {sent_frames}; Stats: {_stats_line(stats)}")
    assert line.groups()[:2] == ("COMPLETED", "completed"), line.group(0)
    assert rec.server_close_code == 1000
    assert queued_at_close > 2.0, "the test needs audio queued at the close"
    assert stat(stats, "FramesPlayed") == sent_frames, _stats_line(stats)
    assert stat(stats, "Underruns") == 0
    # The hangup waited for the audio, and not much longer.
    assert queued_at_close - 0.3 < end_at - close_at < queued_at_close + 1.0
    ast.wait_no_channels(timeout=10)
    assert not ast.errors(), ast.errors()


def test_tcp_reset_plays_out_the_received_audio_then_fails(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """Issue 11 (4): the agent sends its greeting 4x faster than real time and the TCP
    connection is reset (no close frame) 2 s in. Every frame the module had received plays
    before the call ends FAILED/network_loss, as at a normal close (lifecycle.py, play-out)."""
    sim = simulator(Scenario(drop_tcp_after_s=2.0))
    ast, end_at, stats, line, rec = _one_call_to_its_end(sim, convai_asterisk)
    drop_at = sim_event_time(rec, "tcp_drop", "sim")[0]
    first_audio = sent_utterances(sim, rec, FMT, CHUNK_MS)[0].first_sent
    received = stat(stats, "BytesDown")
    played = stat(stats, "FramesPlayed")
    queued_at_drop = first_audio + received / 8000 - drop_at
    print(
        f"received {received} bytes ({received / 8000:.2f} s), played {played} frames;"
        f" ~{queued_at_drop:.2f} s still to play at the reset, End {end_at - drop_at:.2f} s"
        f" after it; {_stats_line(stats)}"
    )
    assert line.groups()[:2] == ("FAILED", "network_loss"), line.group(0)
    assert queued_at_drop > 1.0, "the test needs audio queued at the reset"
    # Every received byte, in whole frames (each utterance's last frame padded).
    assert received // FRAME <= played <= frames_of(received, FRAME) + 4, _stats_line(stats)
    assert stat(stats, "Underruns") == 0
    # The end waited for the audio, and not much longer.
    assert queued_at_drop - 0.3 < end_at - drop_at < queued_at_drop + 1.0
    ast.wait_no_channels(timeout=10)
    assert not ast.errors(), ast.errors()


def test_max_duration_plays_out_queued_audio(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """The agent section's max_duration (2 s) ends a conversation whose 5.6 s greeting has
    already arrived: as for any other end, the queued audio plays out before the hangup (the
    app's own documentation and issue 4: "server close, end_call, max duration"),
    COMPLETED/max_duration, and no log line blames the caller."""
    sim = simulator(Scenario())
    ast = _asterisk(convai_asterisk, {"sim": agent(sim, max_duration="2")}, DIALPLAN)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami:
        _call(ast)
        start = ami.wait("ElevenLabsConvAIStart", timeout=15)[0]
        uid = start["Uniqueid"]
        stats = ami.wait("ElevenLabsConvAIStats", lambda e: e["Uniqueid"] == uid, timeout=30)[0]
    line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
    rec = _conversation(sim)
    wait_until(lambda: rec.done, 5, "the simulator's end of the conversation")
    utts = sent_utterances(sim, rec, FMT, CHUNK_MS)
    print(f"{line.group(0)}; frames sent {expected_frames(utts, FRAME)}; {_stats_line(stats)}")
    assert line.groups()[:2] == ("COMPLETED", "max_duration"), line.group(0)
    assert "caller hung up" not in ast.log_text()[mark:]
    assert stat(stats, "FramesPlayed") == expected_frames(utts, FRAME), (
        "max_duration cut the agent off instead of playing out what it had already said"
    )
    ast.wait_no_channels(timeout=10)


# --- failures ---------------------------------------------------------------------------------

# One extension per agent; AFTER shows the dialplan went on, and with what.
FAIL_DIALPLAN_EXTEN = (
    "exten => {name},1,Answer()\n"
    " same => n,ElevenLabsConvAI({name})\n"
    " same => n,Verbose(1,AFTER {name} status=${{ELEVENLABS_STATUS}}"
    " reason=${{ELEVENLABS_END_REASON}} conv=${{ELEVENLABS_CONVERSATION_ID}})\n"
    " same => n,Hangup()\n"
)


def _failure_dialplan(names: list[str]) -> str:
    return (
        DIALPLAN.split("[test]")[0]
        + "[test]\n"
        + "".join(FAIL_DIALPLAN_EXTEN.format(name=n) for n in names)
    )


def _python_end_line(ast: Asterisk, name: str) -> str:
    """The runtime's own line for an ended conversation of agent [name]."""
    rx = re.compile(rf"\[{name}\]: conversation \S+ ended: .*")
    m = rx.search(ast.log_text())
    return m.group(0) if m else ""


def test_setup_failures_set_failed_and_the_dialplan_goes_on(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """Every way the signed URL or the WebSocket can fail, as concurrent calls: FAILED, the
    reason, one clear log line naming the cause, no secret in the log, and the dialplan
    continues. The timeout case takes the session's full retry budget (3 x 10 s + backoff)."""
    closed = free_port(udp=False, tcp=True)  # nothing listens here
    sims = {
        "key401": simulator(Scenario(require_api_key="sk-another-key-0000000000000000")),
        "http500": simulator(Scenario(signed_url_status=500)),
        "badbody": simulator(Scenario(signed_url_body="<html>this is not JSON</html>")),
        "slow": simulator(Scenario(signed_url_delay=11.0)),
        "wsdown": simulator(
            Scenario(
                signed_url_body=f'{{"signed_url":"ws://127.0.0.1:{closed}/v1/convai/conversation'
                '?agent_id=agent_test&conversation_signature=sig-secret-123456"}'
            )
        ),
    }
    agents = {name: agent(sim) for name, sim in sims.items()}
    agents["noport"] = agent(
        sims["key401"],
        elevenlabs_get_signed_url_endpoint=f"http://127.0.0.1:{closed}/v1/convai/conversation/"
        "get-signed-url",
    )
    # reason, what the runtime's log line must say, signed-URL requests the endpoint saw
    expect: dict[str, tuple[str, list[str], int | None]] = {
        "key401": ("signed_url_failed", ["HTTP 401", "check elevenlabs_api_key"], 1),
        "http500": ("signed_url_failed", ["after 3 attempt(s)", "HTTP 500"], 3),
        "badbody": ("signed_url_failed", ["signed URL response is not JSON"], 1),
        "slow": ("signed_url_failed", ["after 3 attempt(s)", "no answer within 10 s"], 3),
        "noport": ("signed_url_failed", ["after 3 attempt(s)", "Cannot connect"], None),
        "wsdown": ("connect_failed", [f"cannot connect to ws://127.0.0.1:{closed}/"], 1),
    }
    ast = _asterisk(convai_asterisk, agents, _failure_dialplan(list(agents)))
    t0 = time.monotonic()
    with AmiEvents(ast) as ami:
        for name in agents:
            _call(ast, exten=name)
        ends = ami.wait("ElevenLabsConvAIEnd", timeout=50, count=len(agents))
    took = time.monotonic() - t0
    problems = []
    for name, (reason, phrases, requests) in expect.items():
        after = ast.wait_for_log(
            rf"app_verbose\.c: AFTER {name} status=(\S*) reason=(\S*) conv=(\w*)$", 5
        )
        end = next(e for e in ends if e["Agent"] == name)
        py_line = _python_end_line(ast, name)
        c_line = re.search(rf"with agent \[{name}\] failed: .*", ast.log_text())
        print(f"{name:8} {after.group(0)} after {end['Duration']} s")
        print(f"         log: {py_line}")
        if after.groups() != ("FAILED", reason, ""):
            problems.append(f"{name}: {after.group(0)} (want FAILED {reason})")
        if not py_line or not all(p in py_line for p in phrases):
            problems.append(f"{name}: runtime log line {py_line!r} lacks {phrases}")
        if not c_line or reason not in c_line.group(0):
            problems.append(f"{name}: no 'failed: {reason}' line from the app")
        if requests is not None:
            reqs = sims[name].signed_url_requests  # logged when answered: the slow one is late
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: len(reqs) >= requests, 3, "signed-URL requests")  # noqa: B023
            if len(reqs) != requests:
                problems.append(f"{name}: {len(reqs)} signed-URL requests, want {requests}")
    print(f"all {len(agents)} failed calls done in {took:.1f} s")
    text = ast.log_text()
    assert TEST_KEY not in text and "sig-secret-123456" not in text, "a secret was logged"
    assert not any(s.conversations for s in sims.values()), "a WebSocket was opened"
    assert not problems, "\n".join(problems)
    ast.wait_no_channels(timeout=10)


def test_server_errors_mid_call_set_failed(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """The service breaks off a conversation under way: close 1011 (with and without an error
    event) -> FAILED/server_error; close 1008 -> FAILED/policy_violation. The dialplan goes on,
    at once (a broken conversation has nothing to play out)."""
    error = {"code": 1011, "message": "Something went wrong", "error_type": "internal_error"}
    sims = {
        "err1011": simulator(Scenario(close_after_s=1.0, close_code=1011, close_reason="boom")),
        "errevent": simulator(Scenario(close_after_s=1.0, close_code=1011, error_event=error)),
        "pol1008": simulator(
            Scenario(close_after_s=1.0, close_code=1008, close_reason="Policy violation")
        ),
    }
    expect = {
        "err1011": ("server_error", "server closed the connection with 1011 (boom)"),
        "errevent": ("server_error", "internal_error: Something went wrong"),
        "pol1008": ("policy_violation", "server closed the connection with 1008"),
    }
    agents = {name: agent(sim) for name, sim in sims.items()}
    ast = _asterisk(convai_asterisk, agents, _failure_dialplan(list(agents)))
    with AmiEvents(ast) as ami:
        for name in agents:
            _call(ast, exten=name)
        ami.wait("ElevenLabsConvAIEnd", timeout=20, count=len(agents))
        timed_ends = ami.timed("ElevenLabsConvAIEnd")
        starts = ami.of("ElevenLabsConvAIStart")
    problems = []
    for name, (reason, phrase) in expect.items():
        rec = sims[name].conversations[0]
        after = ast.wait_for_log(
            rf"app_verbose\.c: AFTER {name} status=(\S*) reason=(\S*) conv=(\w*)$", 5
        )
        end_at = next(t for t, e in timed_ends if e["Agent"] == name)
        close_at = sim_event_time(rec, "close", "out")[0]
        py_line = _python_end_line(ast, name)
        print(f"{name:8} {after.group(0)}; End {1000 * (end_at - close_at):.0f} ms after close")
        print(f"         log: {py_line}")
        if after.groups() != ("FAILED", reason, rec.conversation_id):
            problems.append(f"{name}: {after.group(0)} (want FAILED {reason})")
        if phrase not in py_line or "WARNING" not in py_line_level(ast, name):
            problems.append(f"{name}: runtime log line {py_line!r} lacks {phrase!r}")
        if not rec.sent_audio or rec.server_close_code != sims[name].scenario.close_code:
            problems.append(f"{name}: not mid-call ({len(rec.sent_audio)} chunks)")
        if not 0 < end_at - close_at < 1.0:
            problems.append(f"{name}: End {end_at - close_at:.2f} s after the close")
    assert len(starts) == len(agents)
    assert not problems, "\n".join(problems)
    ast.wait_no_channels(timeout=10)


def py_line_level(ast: Asterisk, name: str) -> str:
    """The log level of the runtime's end line for agent [name]."""
    for line in ast.log_lines():
        if re.search(rf"\[{name}\]: conversation \S+ ended: ", line):
            m = re.search(r"\] (\w+)\[", line)
            return m.group(1) if m else ""
    return ""


# --- DTMF, concurrency ------------------------------------------------------------------------


def test_dtmf_reaches_the_agent_as_a_user_message(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """SendDTMF(12#) on the caller leg: the agent gets one user_message with the digits (the
    '#' sends at once), which is a turn: it answers with its farewell and ends the call."""
    sim = simulator(Scenario(greeting="Hello.", end_after_turns=1))
    ast = _asterisk(convai_asterisk, {"sim": agent(sim)}, DIALPLAN)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami:
        _call(ast)
        start = ami.wait("ElevenLabsConvAIStart", timeout=15)[0]
        t_keys = time.time()
        ast.cli(f"channel redirect {caller_leg(start['Channel'])} caller,dtmf,1")
        rec = _conversation(sim)
        wait_until(lambda: rec.user_messages, 10, "a user_message")
        got_at = sim_event_time(rec, "user_message", "in")[0]
    line = ast.wait_for_log(RESULT_RE, timeout=20, since=mark)
    print(f"user_messages: {rec.user_messages}; {got_at - t_keys:.2f} s after the redirect")
    assert rec.user_messages == ['The caller pressed "12#" on the phone keypad.']
    assert line.groups()[:2] == ("COMPLETED", "agent_ended_call"), line.group(0)
    assert not rec.user_transcripts, "the keys were taken for speech"
    ast.wait_no_channels(timeout=10)
    assert not ast.errors(), ast.errors()


def test_twenty_concurrent_calls_complete(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """20 calls at once, each a whole conversation (greeting, the caller speaks, farewell,
    end_call): all COMPLETED, one Stats event per call, no underruns, no ERROR line."""
    n = 20
    sim = simulator(Scenario(greeting="Hello.", end_after_turns=1))
    ast = _asterisk(convai_asterisk, {"sim": agent(sim)}, DIALPLAN)
    mark = ast.log_mark()
    t0 = time.monotonic()
    with AmiEvents(ast) as ami, ast.ami() as ctl:
        for _ in range(n):
            r = ctl.action(
                "Originate",
                Channel="Local/100@test",
                Context="caller",
                Exten="talker",
                Priority=1,
                Async="true",
            )
            assert r["Response"] == "Success", r
        ends = ami.wait("ElevenLabsConvAIEnd", timeout=60, count=n)
        stats = ami.wait("ElevenLabsConvAIStats", timeout=5, count=n)
    took = time.monotonic() - t0
    wait_until(lambda: len(result_lines(ast, mark)) >= n, 10, f"{n} RESULT lines")
    ast.wait_no_channels(timeout=20)
    results = [re.search(RESULT_RE, ln).groups() for ln in result_lines(ast, mark)]  # type: ignore[union-attr]
    p99 = [stat(s, "PlayoutP99Us") for s in stats]
    first = [stat(s, "FirstFrameP99Us") for s in stats]
    print(
        f"{n} calls in {took:.1f} s; per-call playout deviation p99 (µs): median "
        f"{percentile(p99, 50):.0f}, worst {max(p99)}; worst PlayoutMaxUs "
        f"{max(stat(s, 'PlayoutMaxUs') for s in stats)}; first frame p99 worst {max(first)} µs;"
        f" underruns {sum(stat(s, 'Underruns') for s in stats)};"
        f" late ticks {sum(stat(s, 'LateTicks') for s in stats)}"
    )
    assert len(results) == n
    assert all(r[:2] == ("COMPLETED", "agent_ended_call") for r in results), results
    assert len({s["Uniqueid"] for s in stats}) == n
    convs = {rec.conversation_id for rec in sim.conversations}
    assert {s["ConversationID"] for s in stats} == convs == {r[2] for r in results}
    assert all(e["Status"] == "COMPLETED" for e in ends)
    assert all(stat(s, "Underruns") == 0 for s in stats)
    # Every call played every frame its agent sent (where the caller did not barge in).
    by_conv = {rec.conversation_id: rec for rec in sim.conversations}
    whole = 0
    for s in stats:
        if stat(s, "Interruptions") == 0:
            utts = sent_utterances(sim, by_conv[s["ConversationID"]], FMT, CHUNK_MS)
            assert stat(s, "FramesPlayed") == expected_frames(utts, FRAME), _stats_line(s)
            whole += 1
    print(f"{whole} of {n} calls checked frame for frame (the rest were barged into)")
    assert whole >= n // 2
    assert all(rec.user_transcripts for rec in sim.conversations), "a caller was not heard"
    assert not ast.errors(), ast.errors()


def test_core_stop_now_ends_live_calls_as_shutdown_with_1001(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """`core stop now` hangs up every channel: a live call ends FAILED/shutdown (not as a
    caller's hangup) and the agent sees 1001 (going away), as docs/ARCHITECTURE.md says."""
    sim = simulator(Scenario())  # a 5.6 s greeting
    ast = _asterisk(convai_asterisk, {"sim": agent(sim)}, DIALPLAN)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami:
        _call(ast)
        ami.wait("ElevenLabsConvAIStart", timeout=15)
        rec = _conversation(sim)
        wait_until(lambda: rec.sent_audio, 10, "greeting audio")
    with contextlib.suppress(Exception):  # the CLI connection goes with Asterisk
        ast.cli("core stop now", timeout=5)
    assert ast.stop(timeout=10), "Asterisk had to be killed"
    wait_until(lambda: rec.client_close_code is not None or rec.done, 5, "client close")
    assert rec.client_close_code == 1001, (rec.client_close_code, rec.client_close_reason)
    log = ast.log_text()[mark:]
    assert re.search(r"failed: shutdown after", log), log[-3000:]
    assert "ended: HANGUP (caller_hangup)" not in log


def test_ulaw_agent_audio_is_bit_exact_over_local_channels(
    simulator: SimMaker, convai_asterisk: AsteriskMaker, tmp_path: Path
) -> None:
    """The end-to-end audio check that runs on every flavour (the SIP/RTP one needs PJSIP): a
    μ-law Local channel pair (AMI Originate with Codecs: ulaw), the caller leg records what it
    hears into a .ulaw file (no translation on either leg). The recording holds the agent's
    greeting byte for byte, contiguous, and nothing but μ-law silence around it."""
    greeting = "Hello! You are talking to the simulator."
    sim = simulator(Scenario(greeting=greeting, end_after_turns=1))
    heard = tmp_path / "heard"
    dialplan = DIALPLAN + (
        f"\n[recorder]\nexten => record,1,Answer()\n"
        f" same => n,Record({heard}.ulaw,0,30,qxk)\n same => n,Hangup()\n"
    )
    ast = _asterisk(convai_asterisk, {"sim": agent(sim)}, dialplan)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami, ast.ami(events=False) as action:
        reply = action.action(
            "Originate",
            Channel="Local/100@test",
            Context="recorder",
            Exten="record",
            Priority="1",
            Codecs="ulaw",
            Async="true",
        )
        assert reply.get("Response") == "Success", reply
        start = ami.wait("ElevenLabsConvAIStart", timeout=15)[0]
        rec = _conversation(sim)
        wait_until(lambda: rec.agent_responses, 10, "the greeting")
        path = heard.with_suffix(".ulaw")

        def greeting_recorded() -> bool:
            utts = sent_utterances(sim, rec, FMT, CHUNK_MS)
            data = path.read_bytes() if path.exists() else b""
            return bool(utts) and utts[0].audio in data

        wait_until(greeting_recorded, 20, "the whole greeting in the caller's recording")
        ast.cli(f"channel request hangup {caller_leg(start['Channel'])}")
        ami.wait("ElevenLabsConvAIEnd", lambda e: e["Uniqueid"] == start["Uniqueid"], timeout=15)
    ast.wait_no_channels(timeout=10)
    assert (start["InputFormat"], start["OutputFormat"]) == ("ulaw_8000", "ulaw_8000"), start
    utts = sent_utterances(sim, rec, FMT, CHUNK_MS)
    rx = path.read_bytes()
    audio = utts[0].audio
    at = rx.find(audio)
    print(f"recorded {len(rx)} bytes; greeting {len(audio)} bytes at {at}")
    assert utts[0].text == greeting and at >= 0, "the greeting was not heard bit-exact"
    assert rx.find(audio, at + 1) < 0, "the greeting was heard twice"
    outside = rx[:at] + rx[at + len(audio) :]
    assert set(outside) <= {0xFF}, f"{sum(b != 0xFF for b in outside)} non-silent bytes besides it"
    assert ast.log_text()[mark:].count("ElevenLabsConvAI(") == 1
    assert not ast.errors(), ast.errors()
