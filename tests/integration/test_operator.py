"""The operator surface in a real Asterisk: the CLI (during real calls), the manager events, the
log lines and their levels, run-time debug, and redaction of keys and signed URLs everywhere.

Configuration and reload are in test_config.py.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from asterisk import AMI, Asterisk, Message
from convai_fixtures import (
    DIALPLAN_BY_AGENT,
    TEST_KEY,
    agent,
    call_agent,
    live_calls,
    wait_for_conversation,
    wait_result,
    wait_until,
)
from rtpcall import RtpCall

from convai.sim import Scenario, Simulator
from convai.sim.speech import synthesize

LONG_GREETING = (
    "Hello! You are talking to the ElevenLabs simulator. This greeting is long on purpose, so "
    "that the caller has plenty of time to talk over it and interrupt the agent in the middle "
    "of a sentence, which is what these tests need."
)
CALLER_SPEECH = "Hello, I would like to know where my parcel is, please."
EVENTS = ["Start", "Interruption", "ToolCall", "SystemTool", "Stats", "End"]
COMMON_FIELDS = ["Channel", "Uniqueid", "Agent", "AgentID", "ConversationID"]
# A SIP caller dials 100 (sales_agent) or 200 (support_agent).
DIALPLAN_SIP = """
[test]
exten => 100,1,Answer()
 same => n,ElevenLabsConvAI(sales_agent)
 same => n,Hangup()
exten => 200,1,Answer()
 same => n,ElevenLabsConvAI(support_agent)
 same => n,Hangup()
"""
# The harness's logger.conf plus everything on the console too (Asterisk's output, captured).
LOGGER_WITH_CONSOLE = """\
[general]
dateformat = %F %T.%3q

[logfiles]
messages.log => notice,warning,error,verbose(3)
full.log => notice,warning,error,debug,verbose,dtmf
console => notice,warning,error,debug,verbose
"""
LOG_LINE = re.compile(
    r"^\[[^\]]+\] (?P<level>[A-Z]+)\[\d+\](?P<callid>\[C-[0-9a-f]+\])? (?P<src>\S+): (?P<msg>.*)$"
)


def speech() -> bytes:
    return synthesize(CALLER_SPEECH, "ulaw_8000")


def module_lines(text: str) -> list[dict[str, str]]:
    """The module's own log lines (from its C files or its Python package)."""
    out = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m and m["src"].startswith("convai/"):  # convai/call.c, convai/session.py, ...
            out.append(m.groupdict())
    return out


class Recorder:
    """Every CLI and AMI output of a test, to grep for secrets at the end."""

    def __init__(self, ast: Asterisk) -> None:
        self.ast = ast
        self.outputs: list[str] = []

    def cli(self, cmd: str) -> str:
        out = self.ast.cli(cmd)
        self.outputs.append(f"$ {cmd}\n{out}")
        return out

    def ami_command(self, ami: AMI, cmd: str) -> str:
        out = ami.command(cmd)
        self.outputs.append(f"AMI Command {cmd}\n{out}")
        return out

    def events(self, ami: AMI, timeout: float) -> list[Message]:
        evs = list(ami.events(timeout))
        self.outputs += [json.dumps(e) for e in evs]
        return evs


@contextmanager
def sip_call(ast: Asterisk, exten: str = "100") -> Iterator[RtpCall]:
    with RtpCall(ast.sip_port, exten, codec="PCMU") as call:
        yield call
        call.hangup()


def ours(ev: Message, uniqueid: str | None = None) -> bool:
    return ev.get("Event", "").startswith("ElevenLabsConvAI") and uniqueid in (
        None,
        ev.get("Uniqueid"),
    )


# --- CLI ------------------------------------------------------------------------------------------


@pytest.mark.sip
def test_show_agents_calls_and_call_during_a_sip_call(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator(Scenario(greeting=LONG_GREETING))
    agents = {
        "sales_agent": agent(
            sim,
            elevenlabs_agent_id="agent_0301k2f1kzshe85t9w74t66vz1km",
            elevenlabs_audio_frames_buffer_ms="240",
        ),
        # A short key is not even shown by its last 4 characters; a query string is hidden.
        "support_agent": agent(
            sim,
            elevenlabs_api_key="sk-short",
            elevenlabs_agent_id="agent_another_agent_id_here",
            elevenlabs_get_signed_url_endpoint=sim.signed_url_endpoint + "?token=querysecret1",
            elevenlabs_send_caller_number="no",
            elevenlabs_audio_frames_buffer_ms="300",
            on_end="continue",
        ),
    }
    ast = convai_asterisk(agents=agents, dialplan=DIALPLAN_SIP)

    shown = ast.cli("elevenlabs show agents")
    print(shown)
    lines = shown.splitlines()
    assert lines[0].split() == [
        "Agent", "Agent", "ID", "API", "key", "Caller", "Buffer", "ms", "On", "end", "Max", "s",
        "Signed", "URL", "endpoint",
    ], lines[0]  # fmt: skip
    assert lines[1].split() == [
        "sales_agent", "agent_0301k2f1kzshe85t9w74t66vz1km", "****" + TEST_KEY[-4:], "Yes",
        "240", "hangup", "3600", sim.signed_url_endpoint,
    ], lines[1]  # fmt: skip
    assert lines[2].split() == [
        "support_agent", "agent_another_agent_id_here", "****", "No", "300", "continue", "3600",
        sim.signed_url_endpoint + "?<redacted>",
    ], lines[2]  # fmt: skip
    assert re.fullmatch(r"2 agent\(s\); debug off; Python 3\.\d+\.\d+.*", lines[3]), lines[3]
    for secret in (TEST_KEY, "sk-short", "querysecret1"):
        assert secret not in shown

    empty = ast.cli("elevenlabs show calls")
    assert empty.splitlines()[-1] == "0 active conversation(s)", empty

    with sip_call(ast, "100") as call:
        row = wait_for_conversation(ast, "sales_agent")
        chan = row["Channel"]
        # Talk over the greeting: an interruption, and audio both ways.
        time.sleep(1.0)
        call.send_audio(speech())
        row = wait_until(
            lambda: next(
                (r for r in live_calls(ast) if r["Channel"] == chan and int(r["Intr"]) >= 1),
                None,
            ),
            15,
            "the interruption in show calls",
        )

        # Then the agent's reply to it, with a ping measured: a snapshot mid-conversation. The
        # list and the call's detail are two commands, so both are taken until both show it
        # (the reply can end between them on a loaded machine).
        def snapshot() -> tuple[str, str] | None:
            playing = any(
                r["Channel"] == chan
                and float(r["RTT ms"]) > 0
                and int(r["Event ID"]) >= 2
                and int(r["Queued ms"]) > 0
                for r in live_calls(ast)
            )
            calls = ast.cli("elevenlabs show calls")
            detail = ast.cli(f"elevenlabs show call {chan}")
            return (calls, detail) if playing and "agent speaking" in detail else None

        calls, detail = wait_until(snapshot, 20, "the agent's reply playing, and a ping")
        print(calls)
        print(detail)
        conv = sim.conversations[0]

        row = next(r for r in live_calls(ast) if r["Channel"] == chan)
        assert re.fullmatch(r"PJSIP/sipp-[0-9a-f]{8}", chan), chan
        assert row["Agent"] == "sales_agent"
        assert row["Conversation"] == conv.conversation_id
        h, m, s = (int(x) for x in row["Duration"].split(":"))
        assert 1 <= h * 3600 + m * 60 + s <= 60, row
        assert row["Format"] == "ulaw_8000"
        assert int(row["Queued ms"]) % 20 == 0
        assert int(row["Event ID"]) >= 1
        assert int(row["Intr"]) == len(conv.interruptions) >= 1, (row, conv.interruptions)
        assert float(row["RTT ms"]) >= 0 and int(row["Under"]) >= 0
        assert int(row["Bytes up"]) > 8000 and int(row["Bytes down"]) > 8000, row
        assert calls.splitlines()[-1] == "1 active conversation(s)"

        fields = dict(
            (k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in detail.splitlines())
        )
        assert fields["Channel"] == chan
        assert re.fullmatch(r"ast\d+-\d+\.\d+", fields["Uniqueid"]), fields
        assert fields["Agent"] == "sales_agent (agent ID agent_0301k2f1kzshe85t9w74t66vz1km)"
        assert fields["Conversation ID"] == conv.conversation_id
        assert re.fullmatch(r"\d+\.\d s \(max_duration 3600 s\)", fields["Duration"]), fields
        assert fields["Audio in/out"] == "ulaw_8000 / ulaw_8000"
        assert fields["State"] == "agent speaking", fields
        assert re.fullmatch(r"\d+ ms \(ring \d+, backlog \d+ frames\)", fields["Queued audio"])
        assert re.fullmatch(r"\d+ \(frames dropped \d+\)", fields["Interruptions"]), fields
        assert int(fields["Interruptions"].split()[0]) >= 1
        assert re.fullmatch(r"\d+\.\d ms", fields["Ping RTT"]), fields
        assert float(row["RTT ms"]) > 0, row
        assert int(fields["Frames played"]) > 0
        for key in ("Underruns", "Late ticks", "Last event ID", "Ends of speech"):
            assert fields[key].isdigit(), fields
        assert re.fullmatch(r"\d+ \(lost 0\)", fields["Caller frames"]), fields
        up, down = (int(x) for x in fields["Bytes up/down"].split(" / "))
        assert up > 8000 and down > 8000, fields

        # Tab completion of the channel name, as `elevenlabs show call <TAB>` does it.
        matches = ast.cli('_command matchesarray "elevenlabs show call " ""').split()
        assert chan in matches and matches[-1] == "_EOF_", matches
        matches = ast.cli(f'_command matchesarray "elevenlabs show call {chan[:7]}" "{chan[:7]}"')
        assert chan in matches.split(), matches
        with ast.ami() as ami:  # the same through AMI, as a GUI would ask
            assert chan in ami.command('_command matchesarray "elevenlabs show call " ""')
            assert f"Channel:          {chan}" in ami.command(f"elevenlabs show call {chan}")
    ast.wait_no_channels()
    assert ast.cli("elevenlabs show calls").splitlines()[-1] == "0 active conversation(s)"
    assert "No conversation on channel" in ast.cli(f"elevenlabs show call {chan}")


def test_help_completion_and_usage(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator()
    ast = convai_asterisk(agents={"sim": agent(sim)})
    helps = ast.cli("core show help elevenlabs")
    print(helps)
    for cmd, summary in [
        ("elevenlabs debug", "Turn ElevenLabs protocol debugging on or off"),
        ("elevenlabs reload", "Reload elevenlabs.conf"),
        ("elevenlabs show agents", "List configured ElevenLabs agents"),
        ("elevenlabs show calls", "List ElevenLabs conversations under way"),
        ("elevenlabs show call", "Show one ElevenLabs conversation in detail"),
    ]:
        assert re.search(rf"^{cmd}\s+-- {summary}$", helps, re.M), (cmd, helps)
    assert "Usage: elevenlabs show call <channel>" in ast.cli("core show help elevenlabs show call")

    # Completion of the words, as the CLI's TAB does.
    words = set(ast.cli('_command matchesarray "elevenlabs " ""').split())
    assert {"debug", "reload", "show"} <= words, words
    assert {"on", "off"} <= set(ast.cli('_command matchesarray "elevenlabs debug " ""').split())
    assert "off" in ast.cli('_command matchesarray "elevenlabs debug of" "of"').split()
    assert {"agents", "calls", "call"} <= set(
        ast.cli('_command matchesarray "elevenlabs show " ""').split()
    )

    # Bad arguments print the usage.
    usage = {
        "elevenlabs debug": "Usage: elevenlabs debug {on|off}",
        "elevenlabs debug maybe": "Usage: elevenlabs debug {on|off}",
        "elevenlabs debug on now": "Usage: elevenlabs debug {on|off}",
        "elevenlabs show call": "Usage: elevenlabs show call <channel>",
        "elevenlabs show calls now": "Usage: elevenlabs show calls",
        "elevenlabs show agents all": "Usage: elevenlabs show agents",
        "elevenlabs reload now": "Usage: elevenlabs reload",
    }
    for cmd, text in usage.items():
        out = ast.cli(cmd)
        assert text in out, (cmd, out)
    out = ast.cli("elevenlabs show call PJSIP/nobody-00000000")
    assert out.startswith("No conversation on channel 'PJSIP/nobody-00000000'\n"), out
    assert ast.cli("elevenlabs debug ON").strip() == "ElevenLabs debug enabled"
    assert "debug on" in ast.cli("elevenlabs show agents")
    # A reload keeps the run-time setting while the file's debug= is unchanged.
    ast.cli("elevenlabs reload")
    assert "debug on" in ast.cli("elevenlabs show agents")
    assert ast.cli("elevenlabs debug off").strip() == "ElevenLabs debug disabled"
    assert "debug off" in ast.cli("elevenlabs show agents")


@pytest.mark.sip
def test_debug_on_off_switches_the_protocol_log_at_run_time(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator(Scenario(greeting=LONG_GREETING))
    ast = convai_asterisk(agents={"sales_agent": agent(sim)}, dialplan=DIALPLAN_SIP)
    vad = re.compile(r"^.*=== VAD SCORE MESSAGE ===$", re.M)
    with sip_call(ast, "100") as call:
        wait_for_conversation(ast, "sales_agent")
        conv = sim.conversations[0]
        wait_until(lambda: len(conv.vad_scores) >= 10, 10, "VAD scores from the simulator")
        assert not vad.search(ast.log_text(full=True)), "VAD detail with debug off"

        mark = ast.log_mark()
        assert ast.cli("elevenlabs debug on").strip() == "ElevenLabs debug enabled"
        ast.wait_for_log(r"=== END VAD SCORE ===", since=mark)
        call.send_audio(speech())  # over the greeting: an interruption
        ast.wait_for_log(r"=== END INTERRUPTION ===", since=mark, timeout=15)
        time.sleep(0.3)
        lines = module_lines(ast.log_text()[mark:])
        msgs = [ln["msg"] for ln in lines]
        print("\n".join(msgs[:60]))

        # The VAD block, as the original module printed it, at NOTICE, tagged with the call.
        i = next(i for i, m in enumerate(msgs) if m.endswith("=== VAD SCORE MESSAGE ==="))
        block = msgs[i : i + 5]
        tag = re.escape(block[0].removesuffix("=== VAD SCORE MESSAGE ==="))
        assert re.fullmatch(r"elevenlabs: PJSIP/sipp-[0-9a-f]{8} \[sales_agent\]: ", block[0][:-25])
        assert re.fullmatch(tag + r"VAD Score: [01]\.\d{3}", block[1]), block
        assert re.fullmatch(tag + r"Timestamp: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", block[2])
        assert re.fullmatch(
            tag + r"(HIGH|MEDIUM|LOW) voice activity detected \(score=[01]\.\d{3}\)", block[3]
        ), block
        assert block[4] == block[0].replace("=== VAD SCORE MESSAGE ===", "=== END VAD SCORE ===")
        assert all(ln["level"] == "NOTICE" and ln["callid"] for ln in lines[i : i + 5])

        # The interruption block: the original's format with the "<" rule.
        j = next(j for j, m in enumerate(msgs) if m.endswith("=== INTERRUPTION MESSAGE ==="))
        k = next(k for k in range(j, len(msgs)) if msgs[k].endswith("=== END INTERRUPTION ==="))
        body = [re.sub(r"^elevenlabs: (\S+ \[sales_agent\]: )?", "", m) for m in msgs[j : k + 1]]
        vad_lines = ("=== VAD", "VAD Score", "Timestamp", "HIGH ", "MEDIUM ", "LOW ", "=== END VAD")
        body = [b for b in body if not b.startswith(vad_lines)]
        eid = int(body[1].removeprefix("Event ID: "))
        assert body[:4] == [
            "=== INTERRUPTION MESSAGE ===",
            f"Event ID: {eid}",
            "User interrupted AI speech - stopping playback",
            f"Processing interruption for event_id={eid} - clearing older audio",
        ], body
        removed = [b for b in body[4:] if b.startswith("Removing audio chunk")]
        assert all(
            re.fullmatch(rf"Removing audio chunk with event_id=\d+ \(<{eid}\)", b) for b in removed
        )
        assert body[4 + len(removed) :] == [
            f"Interruption processing complete: removed {len(removed)} audio chunks with "
            f"event_id < {eid}",
            body[-2],
            "=== END INTERRUPTION ===",
        ]
        assert re.fullmatch(r"Remaining audio chunks in queue: \d+", body[-2])
        assert eid in conv.interruptions

        # Off again: the VAD scores keep coming, the log says nothing more about them.
        assert ast.cli("elevenlabs debug off").strip() == "ElevenLabs debug disabled"
        time.sleep(0.5)
        mark = ast.log_mark(full=True)
        before = len(conv.vad_scores)
        time.sleep(2.0)
        assert len(conv.vad_scores) >= before + 10
        tail = ast.log_text(full=True)[mark:]
        assert not vad.search(tail) and "INTERRUPTION" not in tail, tail


# --- AMI ------------------------------------------------------------------------------------------


def test_manager_events_are_documented(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator()
    ast = convai_asterisk(agents={"sim": agent(sim)})
    listing = ast.cli("manager show events")
    for name in EVENTS:
        assert f"ElevenLabsConvAI{name}" in listing, listing
        doc = ast.cli(f"manager show event ElevenLabsConvAI{name}")
        assert f"Event: ElevenLabsConvAI{name}" in doc, doc
        for field in COMMON_FIELDS:
            assert re.search(rf"^\s*{field}(:| -)", doc, re.M), (name, field, doc)
    end = ast.cli("manager show event ElevenLabsConvAIEnd")
    print(end)
    for field in ("Status", "Reason", "Duration"):
        assert re.search(rf"^\s*{field}(:| -)", end, re.M), end
    start = ast.cli("manager show event ElevenLabsConvAIStart")
    assert "InputFormat" in start and "OutputFormat" in start, start
    tool = ast.cli("manager show event ElevenLabsConvAIToolCall")
    assert all(f in tool for f in ("ToolName", "ToolCallID", "Parameters")), tool
    assert "EventID" in ast.cli("manager show event ElevenLabsConvAIInterruption")


@pytest.mark.sip
def test_manager_events_order(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    tool = {"tool_name": "transfer_call", "parameters": {"to": "100", "why": "a human"}}
    sim = simulator(Scenario(greeting=LONG_GREETING, tool_calls=[tool], end_after_turns=1))
    ast = convai_asterisk(
        agents={"sales_agent": agent(sim, elevenlabs_agent_id="agent_sales")},
        dialplan=DIALPLAN_SIP,
    )
    with ast.ami() as ami, sip_call(ast, "100") as call:
        evs: list[Message] = []
        deadline = time.monotonic() + 60
        sent = False
        while time.monotonic() < deadline and not any(
            e["Event"] == "ElevenLabsConvAIEnd" for e in evs
        ):
            evs += [e for e in ami.events(0.2) if ours(e)]
            if not sent and evs:
                time.sleep(1.0)
                call.send_audio(speech())
                sent = True
        assert call.wait_bye(10), "the agent ended the call, so Asterisk hangs up"
    names = [e["Event"].removeprefix("ElevenLabsConvAI") for e in evs]
    print(names)
    for e in evs:
        print(e)
    conv = sim.conversations[0]
    # One conversation, one channel: the same identity on every event.
    for e in evs:
        assert e["Uniqueid"] == evs[0]["Uniqueid"] and e["Channel"] == evs[0]["Channel"], e
        assert e["Agent"] == "sales_agent" and e["AgentID"] == "agent_sales", e
        assert e["ConversationID"] == conv.conversation_id, e
        assert e["Privilege"] == "call,all", e
    # Start first; End last, right after Stats; an interruption and the tool call between.
    assert names[0] == "Start" and names[-2:] == ["Stats", "End"], names
    assert "Interruption" in names and "ToolCall" in names, names
    assert set(names) == set(EVENTS) and names.count("Start") == 1, names
    by = {n: e for n, e in zip(names, evs, strict=True)}
    assert (by["Start"]["InputFormat"], by["Start"]["OutputFormat"]) == ("ulaw_8000", "ulaw_8000")
    assert int(by["Interruption"]["EventID"]) in conv.interruptions
    assert by["ToolCall"]["ToolName"] == "transfer_call"
    assert by["ToolCall"]["ToolCallID"] == conv.tool_calls[0]["tool_call_id"]
    assert json.loads(by["ToolCall"]["Parameters"]) == tool["parameters"]
    stats = by["Stats"]
    assert int(stats["FramesPlayed"]) > 50 and int(stats["Interruptions"]) >= 1, stats
    assert int(stats["BytesUp"]) > 8000 and int(stats["BytesDown"]) > 8000, stats
    assert int(stats["PlayoutCount"]) > 0 and "PlayoutP50Us" in stats, stats
    end = by["End"]
    assert (end["Status"], end["Reason"]) == ("COMPLETED", "agent_ended_call"), end
    assert 2.0 < float(end["Duration"]) < 60.0, end


def test_a_call_that_cannot_start_still_gets_an_end_event(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator()
    ast = convai_asterisk(agents={"sim": agent(sim)}, dialplan=DIALPLAN_BY_AGENT)
    with ast.ami() as ami:
        call_agent(ast, "nosuch")
        end = ami.wait_event("ElevenLabsConvAIEnd", timeout=10)
    assert end["Agent"] == "nosuch" and end["ConversationID"] == "" and end["AgentID"] == ""
    assert (end["Status"], end["Reason"], end["Duration"]) == ("FAILED", "unknown_agent", "0.000")
    assert end["Channel"].startswith("Local/nosuch@test-")


# --- logs -----------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_log_prefix_levels_and_no_secret_anywhere(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    ok = simulator(Scenario(greeting="Hello there.", close_after_s=2.5, require_api_key=TEST_KEY))
    wrong_key = simulator(Scenario(require_api_key="sk-the-right-key-is-another-one"))
    bad_signature = "SECRETSIGNATUREabcdef0123456789"
    forged = simulator(
        Scenario(
            signed_url_body=json.dumps(
                {
                    "signed_url": f"{ok.ws_url}?agent_id=agent_test"
                    f"&conversation_signature={bad_signature}"
                }
            )
        )
    )
    dead = f"http://127.0.0.1:{closed_port()}/v1/convai/conversation/get-signed-url"
    agents = {
        "good": agent(ok),
        "query": agent(
            ok, elevenlabs_get_signed_url_endpoint=f"{ok.signed_url_endpoint}?key={TEST_KEY}"
        ),
        "rejected": agent(wrong_key),
        "refused": agent(ok, elevenlabs_get_signed_url_endpoint=dead),
        "notfound": agent(ok, elevenlabs_get_signed_url_endpoint=ok.base_url + "/nope"),
        "forged": agent(forged),
    }
    ast = convai_asterisk(
        agents=agents,
        dialplan=DIALPLAN_BY_AGENT,
        debug=True,
        configs={"logger.conf": LOGGER_WITH_CONSOLE},
        options="verbose = 5\n",
    )
    rec = Recorder(ast)
    rec.cli("elevenlabs show agents")
    results = {}
    with ast.ami() as ami:
        mark = ast.log_mark()
        call_agent(ast, "good")
        row = wait_for_conversation(ast, "good")
        time.sleep(1.0)
        rec.cli("elevenlabs show calls")
        rec.cli(f"elevenlabs show call {row['Channel']}")
        rec.ami_command(ami, "elevenlabs show calls")
        rec.ami_command(ami, f"elevenlabs show call {row['Channel']}")
        rec.ami_command(ami, "elevenlabs show agents")
        results["good"] = wait_result(ast, "good", mark, timeout=20)
        for name in ("query", "rejected", "refused", "notfound", "forged"):
            call_agent(ast, name)
            results[name] = wait_result(ast, name, mark, timeout=20)
        ast.wait_no_channels()
        rec.events(ami, 1.0)
        rec.cli("elevenlabs show calls")
    print(results)
    assert results["good"]["status"] == "COMPLETED"
    assert results["query"]["status"] == "COMPLETED"
    expected = {
        "rejected": "signed_url_failed",
        "refused": "signed_url_failed",
        "notfound": "signed_url_failed",
        "forged": "connect_failed",
    }
    for name, reason in expected.items():
        assert (results[name]["status"], results[name]["reason"]) == ("FAILED", reason), results

    log = ast.log_text()
    lines = module_lines(log)
    # One prefix for every line of the module, from C and from Python alike.
    assert lines and all(ln["msg"].startswith("elevenlabs: ") for ln in lines), [
        ln for ln in lines if not ln["msg"].startswith("elevenlabs: ")
    ]
    call_lines = [ln for ln in lines if ln["callid"]]
    assert call_lines and all(
        re.match(
            r"elevenlabs: (Local/\w+@test-\w+;\d \[\w+\]: |=== |Event ID|User interr|"
            r"Processing interr|Removing audio|Interruption processing|Remaining audio)",
            ln["msg"],
        )
        for ln in call_lines
    ), [ln["msg"] for ln in call_lines][:20]

    def line(level: str, regex: str) -> str:
        for ln in lines:
            if ln["level"] == level and re.search(regex, ln["msg"]):
                return ln["msg"]
        raise AssertionError(
            f"no {level} /{regex}/ in\n"
            + "\n".join(f"{ln['level']} {ln['msg']}" for ln in lines if "VAD" not in ln["msg"])
        )

    # A call's start and end at VERBOSE/NOTICE; failures at WARNING with their cause.
    line("VERBOSE", r"\[good\]: connecting to agent \[good\] \(agent ID agent_test\)$")
    line(
        "VERBOSE",
        r"\[good\]: conversation conv_\w+ started with agent \[good\] "
        r"\(ulaw_8000 in, ulaw_8000 out\)$",
    )
    line(
        "NOTICE",
        r"\[good\]: conversation conv_\w+ with agent \[good\] ended: COMPLETED \(completed\) "
        r"after \d+\.\d+ s$",
    )
    for name, reason in expected.items():
        line(
            "WARNING",
            rf"\[{name}\]: conversation \(none\) with agent \[{name}\] failed: {reason} "
            r"after \d+\.\d+ s$",
        )
    line("WARNING", r"\[rejected\]: .*HTTP 401.*check elevenlabs_api_key in section \[rejected\]")
    line(
        "WARNING",
        r"\[refused\]: .*signed URL request to http://127\.0\.0\.1:\d+/v1/convai/"
        r"conversation/get-signed-url failed after \d attempt\(s\)",
    )
    line("WARNING", r"\[notfound\]: .*HTTP 404")
    line(
        "WARNING",
        r"\[forged\]: .*cannot connect to ws://127\.0\.0\.1:\d+/v1/convai/"
        r"conversation\?<redacted>: WebSocket upgrade refused with HTTP 4\d\d",
    )
    # Debug is on: the protocol detail is there, its URLs without their query.
    line(
        "NOTICE",
        r"\[good\]: connected to ws://127\.0\.0\.1:\d+/v1/convai/conversation\?<redacted>$",
    )
    line("NOTICE", r"\[good\]: === VAD SCORE MESSAGE ===$")

    # Redaction: no API key, no signature, in any log, the console, any CLI or AMI output.
    signatures = [*ok._signatures, *forged._signatures, bad_signature]
    assert len(signatures) >= 3  # the good and query calls' real ones, and the forged one
    texts = {
        "messages.log": log,
        "full.log": ast.log_text(full=True),
        "console": ast.console_log.read_text(errors="replace"),
        "CLI and AMI": "\n".join(rec.outputs),
    }
    for path in sorted(ast.logdir.rglob("*")):
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    assert "****" + TEST_KEY[-4:] in texts["CLI and AMI"]  # we did look at the agents
    assert "=== VAD SCORE MESSAGE ===" in texts["console"]  # the console did see it all
    assert "ElevenLabsConvAIEnd" in texts["CLI and AMI"]
    for where, text in texts.items():
        assert TEST_KEY not in text, f"the API key is in {where}"
        assert "conversation_signature=" not in text, f"a signed URL's query is in {where}"
        for sig in signatures:
            assert sig not in text, f"a signature is in {where}"


def test_protocol_detail_only_with_debug_on(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator(Scenario(greeting="Hello.", close_after_s=2.0))
    ast = convai_asterisk(agents={"good": agent(sim)}, dialplan=DIALPLAN_BY_AGENT, debug=False)
    mark = ast.log_mark(full=True)
    call_agent(ast, "good")
    assert wait_result(ast, "good")["status"] == "COMPLETED"
    ast.wait_no_channels()
    lines = module_lines(ast.log_text(full=True)[mark:])
    print("\n".join(f"{ln['level']} {ln['msg']}" for ln in lines))
    assert sim.conversations[0].vad_scores, "the simulator sent VAD scores"
    # Start and end only: no protocol detail, nothing at NOTICE but the end of the call.
    notices = [ln["msg"] for ln in lines if ln["level"] == "NOTICE"]
    assert len(notices) == 1 and " ended: COMPLETED (completed) after " in notices[0], notices
    assert not [ln for ln in lines if ln["level"] in ("WARNING", "ERROR")], lines
    assert not [ln for ln in lines if ln["level"] == "DEBUG"], lines
    assert any("connecting to agent [good]" in ln["msg"] for ln in lines)
