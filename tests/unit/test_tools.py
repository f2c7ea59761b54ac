"""Client tools: the checks on what the LLM sends (pure), and the module's tools driven by the
project's simulator over real loopback sockets, with a stand-in for the channel thread.

The stand-in (``Port``) plays what c/call.c does: it accepts or refuses a transfer, reports a
warm transfer's progress, records DTMF and variables, and ends the conversation through the
real ``Session``. Everything between the simulator and the tools is the real code."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from convai import protocol as p
from convai.session import AgentConfig, CallInfo, Session, SessionResult, Started
from convai.sim import Scenario, Simulator
from convai.sim.server import ConversationRecord
from convai.tools import (
    Telephony,
    ToolError,
    ToolSpec,
    TransferTarget,
    check_dtmf,
    check_variables,
    clean_text,
    config_from_json,
    find_target,
)

TARGETS = [TransferTarget("sales", "blind"), TransferTarget("support", "warm", 25)]
SPECS = [
    ToolSpec("transfer_call", "transfer", param="destination"),
    ToolSpec("end_call_now", "hangup"),
    ToolSpec("press_keys", "dtmf", param="digits"),
    ToolSpec("remember", "set_variable", variables=("account", "reason")),
    ToolSpec("crm_lookup", "ami", timeout=0.5),
]
log = logging.getLogger("test.convai.tools")


# --- pure checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "digits"),
    [("123#", "123#"), ("1w2W*", "1w2W*"), (" 12-34 ", "1234"), (42, "42")],
)
def test_dtmf_accepted(value: object, digits: str) -> None:
    assert check_dtmf(value) == digits


@pytest.mark.parametrize(
    "value", ["12a", "1;Dial(PJSIP/x)", "\r\n", "", None, ["1"], "ww", "1" * 65, -1, True, "\uff11"]
)
def test_dtmf_refused(value: object) -> None:
    with pytest.raises(ToolError):
        check_dtmf(value)


def test_dtmf_error_shows_no_control_characters() -> None:
    with pytest.raises(ToolError) as exc:
        check_dtmf("1\r\nAction: Originate")
    assert "\r" not in str(exc.value) and "\n" not in str(exc.value)


def test_target_lookup_is_an_allow_list() -> None:
    assert find_target("Sales", TARGETS).name == "sales"
    assert find_target(" support ", TARGETS).mode == "warm"
    for hostile in ("PJSIP/evil", "sales,s,1", "default,100,1", "", "sales\r\nAction: x"):
        with pytest.raises(ToolError) as exc:
            find_target(hostile, TARGETS)
        text = str(exc.value)
        assert "valid destinations: sales, support" in text
        assert "\r" not in text and "\n" not in text
    with pytest.raises(ToolError, match="one of: sales, support"):
        find_target({"name": "sales"}, TARGETS)
    with pytest.raises(ToolError, match=r"\(none configured\)"):
        find_target("sales", [])


def test_variables_allow_listed_and_all_or_nothing() -> None:
    assert check_variables({"Account": "A-1\r\n2", "reason": 7}, ["account", "reason"]) == {
        "ELEVENLABS_VAR_account": "A-1  2",
        "ELEVENLABS_VAR_reason": "7",
    }
    with pytest.raises(ToolError, match=r"'PATH'.*allowed: account, reason"):
        check_variables({"account": "1", "PATH": "/tmp"}, ["account", "reason"])
    with pytest.raises(ToolError, match="no variable"):
        check_variables({}, ["account"])
    assert len(check_variables({"account": "x" * 1000}, ["account"])["ELEVENLABS_VAR_account"]) == (
        256
    )


def test_clean_text_strips_control_and_format_characters() -> None:
    assert clean_text("a\r\nb\x00c\u202ed\u2028e") == "a  b c d e"
    assert clean_text({"k": "v"}) == '{"k": "v"}'


def test_config_from_json_skips_what_makes_no_sense() -> None:
    specs, targets = config_from_json(
        {
            "tools": [
                {"name": "t", "action": "transfer"},
                {"name": "v", "action": "set_variable", "variables": ["ok", "bad name", "x;y"]},
                {"name": "a", "action": "ami", "timeout": 7},
                {"name": "z", "action": "rm -rf"},
                {"action": "hangup"},
                "junk",
            ],
            "transfer_targets": [
                {"name": "sales", "mode": "blind"},
                {"name": "s2", "mode": "warm", "timeout": 30},
                {"name": "x", "mode": "teleport"},
            ],
        }
    )
    assert [(s.name, s.action) for s in specs] == [
        ("t", "transfer"),
        ("v", "set_variable"),
        ("a", "ami"),
    ]
    assert specs[0].param == "destination" and specs[1].variables == ("ok",)
    assert specs[2].timeout == 7.0
    assert targets == [TransferTarget("sales", "blind"), TransferTarget("s2", "warm", 30)]


# --- through the simulator ------------------------------------------------------------------


class Port:
    """The channel thread's side, as c/call.c plays it."""

    def __init__(self, warm_outcome: tuple[str, str] | None = ("answered", "")) -> None:
        self.session: Session | None = None
        self.telephony: Telephony | None = None
        self.transfers: list[tuple[str, str]] = []
        self.dtmf: list[str] = []
        self.variables: dict[str, str] = {}
        self.ended: list[tuple[str, str]] = []
        self.told: list[str] = []
        self.warm_outcome = warm_outcome
        self.refuse: str | None = None

    def transfer(self, tool_call_id: str, target: TransferTarget) -> None:
        assert self.telephony is not None
        self.transfers.append((tool_call_id, target.name))
        tel = self.telephony
        loop = asyncio.get_running_loop()
        if self.refuse is not None:
            loop.call_soon(tel.on_transfer_state, tool_call_id, "failed", self.refuse)
        elif target.mode == "blind":
            loop.call_soon(tel.on_transfer_state, tool_call_id, "accepted", "")
        else:
            loop.call_soon(tel.on_transfer_state, tool_call_id, "dialing", "")
            loop.call_later(0.05, tel.on_transfer_state, tool_call_id, "ringing", "")
            if self.warm_outcome is not None:
                loop.call_later(0.3, tel.on_transfer_state, tool_call_id, *self.warm_outcome)

    def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    def set_variable(self, name: str, value: str) -> None:
        self.variables[name] = value

    def end_conversation(self, reason: str, detail: str) -> None:
        assert self.session is not None
        self.ended.append((reason, detail))
        self.session.end(p.EndReason(reason), detail)

    def tell_agent(self, text: str) -> None:
        assert self.session is not None
        self.told.append(text)
        self.session.send_contextual_update(text)


class Handler:
    def __init__(self, telephony: Telephony) -> None:
        self.telephony = telephony
        self.audio_ids: list[int] = []

    def on_started(self, started: Started) -> None:
        pass

    def on_audio(self, event_id: int, audio: bytes) -> None:
        self.audio_ids.append(event_id)
        self.telephony.on_agent_audio()

    def on_interruption(self, event_id: int) -> None:
        pass

    def on_event(self, event: p.Event) -> None:
        if isinstance(event, p.AgentToolResponse):
            self.telephony.on_system_tool(event)


Driver = Callable[[Session, Telephony, ConversationRecord], Awaitable[None]]


def converse(
    calls: list[dict[str, Any]],
    port: Port | None = None,
    driver: Driver | None = None,
    hang_up_when: Callable[[ConversationRecord], bool] | None = None,
    **scenario: Any,
) -> tuple[SessionResult, ConversationRecord, Port]:
    """One conversation with the simulator, whose agent makes ``calls`` after its greeting.
    Ends when the tools end it, or (the caller hangs up) once ``hang_up_when`` holds."""
    port = port or Port()

    async def main() -> tuple[SessionResult, ConversationRecord]:
        sc = Scenario(
            greeting="Hello.",
            tool_calls=[{"after_turn": 0, **c} for c in calls],
            burst_factor=0.0,
            ping_interval=0.0,
            init_wait_s=0.3,
            tool_result_timeout_s=2.0,
            **scenario,
        )
        async with asyncio.timeout(20), Simulator(sc) as sim:
            config = AgentConfig("sales", "sk_test_0123456789abcdef", sim.signed_url_endpoint, "a")
            tel = Telephony(port, SPECS, TARGETS, log, "test")
            session = Session(
                config, CallInfo("PJSIP/x-1"), Handler(tel), tools=tel.registry, log=log
            )
            port.session, port.telephony = session, tel
            run = asyncio.ensure_future(session.run())
            await sim.wait_for(lambda: bool(sim.conversations), 5)
            rec = sim.conversations[0]
            if driver is not None:
                await driver(session, tel, rec)
            if hang_up_when is not None:
                await sim.wait_for(lambda: hang_up_when(rec) or run.done(), 10)
                session.hangup()
            result = await run
            tel.close()
            await sim.wait_for(lambda: rec.done, 5)
            return result, rec

    result, rec = asyncio.run(main())
    return result, rec, port


def said(rec: ConversationRecord) -> list[str]:
    return [text for _, text in rec.agent_responses]


@pytest.mark.parametrize("expects", [True, False])
def test_blind_transfer_leaves_after_the_last_words(expects: bool) -> None:
    call = {
        "tool_name": "transfer_call",
        "parameters": {"destination": "sales"},
        "expects_response": expects,
        "say_before": "Let me put you through.",
        "on_result": "Transferring you now: {result}",
    }
    result, rec, port = converse([call])
    assert port.transfers == [(rec.tool_calls[0]["tool_call_id"], "sales")]
    assert port.ended == [("transfer", "sales")]
    assert result.status == "TRANSFER" and result.reason == p.EndReason.TRANSFER
    assert rec.client_close_code == 1000
    if expects:
        assert [r["is_error"] for r in rec.tool_results] == [False]
        # The agent's reply to the result was spoken before the module left.
        assert said(rec)[-1] == "Transferring you now: Transferring the caller to sales now."
    else:
        assert rec.tool_results == []  # the agent did not wait: nothing is sent


def test_unknown_target_is_an_error_listing_the_names_and_the_call_goes_on() -> None:
    call = {
        "tool_name": "transfer_call",
        "parameters": {"destination": "PJSIP/attacker"},
        "on_error": "Sorry: {result}",
    }
    result, rec, port = converse([call], hang_up_when=lambda r: len(r.agent_responses) >= 2)
    assert port.transfers == [] and port.ended == []
    (res,) = rec.tool_results
    assert res["is_error"] is True
    assert res["result"] == (
        "unknown transfer destination 'PJSIP/attacker'; valid destinations: sales, support"
    )
    assert said(rec)[-1].startswith("Sorry: unknown transfer destination")
    assert result.status == "HANGUP"


def test_transfer_refused_by_the_pbx_is_an_error() -> None:
    port = Port()
    port.refuse = "no such extension sales,s,1"
    call = {"tool_name": "transfer_call", "parameters": {"destination": "sales"}}
    _, rec, _ = converse([call], port, hang_up_when=lambda r: bool(r.tool_results))
    assert rec.tool_results[0]["is_error"] is True
    assert rec.tool_results[0]["result"] == (
        "transfer to sales failed: no such extension sales,s,1"
    )
    assert port.ended == []


def test_warm_transfer_answered_closes_with_1000() -> None:
    call = {"tool_name": "transfer_call", "parameters": {"destination": "support"}}
    result, rec, port = converse([call])
    assert rec.tool_results[0]["result"].startswith("ringing: calling support")
    assert rec.tool_results[0]["is_error"] is False
    assert port.ended == [("transfer", "support")]
    assert result.status == "TRANSFER" and rec.client_close_code == 1000


def test_warm_transfer_not_answered_the_agent_goes_on() -> None:
    port = Port(warm_outcome=("failed", "no answer after 25 s"))
    call = {"tool_name": "transfer_call", "parameters": {"destination": "support"}}
    result, rec, _ = converse(
        [call], port, hang_up_when=lambda r: bool(r.contextual_updates), end_keyword=None
    )
    assert rec.tool_results[0]["result"].startswith("ringing")
    assert port.ended == []
    assert [u["text"] for u in rec.contextual_updates] == [
        "The transfer to support did not go through: no answer after 25 s. "
        "The caller is still on the line with you."
    ]
    assert result.status == "HANGUP"  # the conversation went on until the caller left


def test_second_transfer_while_one_rings_is_refused() -> None:
    port = Port(warm_outcome=None)  # rings for ever
    calls = [
        {"tool_name": "transfer_call", "parameters": {"destination": "support"}},
        {"tool_name": "transfer_call", "parameters": {"destination": "sales"}},
    ]
    _, rec, _ = converse(calls, port, hang_up_when=lambda r: len(r.tool_results) >= 2)
    assert [r["is_error"] for r in rec.tool_results] == [False, True]
    assert rec.tool_results[1]["result"] == "a transfer is already under way"
    assert len(port.transfers) == 1


@pytest.mark.parametrize("expects", [True, False])
def test_hangup_tool_ends_after_the_goodbye(expects: bool) -> None:
    call = {
        "tool_name": "end_call_now",
        "expects_response": expects,
        "say_before": "Thanks for calling, goodbye.",
    }
    result, rec, port = converse([call])
    assert port.ended == [("agent_ended_call", "hangup tool")]
    assert result.status == "COMPLETED" and result.reason == p.EndReason.AGENT_ENDED_CALL
    assert rec.client_close_code == 1000
    assert said(rec)[-1] == "Thanks for calling, goodbye."
    assert len(rec.tool_results) == (1 if expects else 0)


def test_dtmf_valid_sent_invalid_refused() -> None:
    calls = [
        {"tool_name": "press_keys", "parameters": {"digits": "1w23#"}},
        {"tool_name": "press_keys", "parameters": {"digits": "12,ABC"}},
        {"tool_name": "press_keys", "parameters": {"digits": "9"}, "expects_response": False},
        {"tool_name": "press_keys", "parameters": {"digits": "0"}},  # after the one above
    ]
    _, rec, port = converse(calls, hang_up_when=lambda r: len(r.tool_results) >= 3)
    assert port.dtmf == ["1w23#", "9", "0"]
    assert [(r["is_error"], r["result"]) for r in rec.tool_results] == [
        (False, "Sending DTMF 1w23#."),
        (True, "invalid DTMF characters ',ABC': only 0-9, *, #, w and W are allowed"),
        (False, "Sending DTMF 0."),
    ]


def test_set_variable_allow_listed() -> None:
    calls = [
        {"tool_name": "remember", "parameters": {"account": "12345", "reason": "refund"}},
        {"tool_name": "remember", "parameters": {"account": "1", "CHANNEL": "x"}},
    ]
    _, rec, port = converse(calls, hang_up_when=lambda r: len(r.tool_results) >= 2)
    assert port.variables == {"ELEVENLABS_VAR_account": "12345", "ELEVENLABS_VAR_reason": "refund"}
    assert rec.tool_results[0]["result"] == "Saved account, reason."
    assert rec.tool_results[1]["is_error"] is True and "'CHANNEL'" in rec.tool_results[1]["result"]


def test_ami_tool_answered_by_the_handler_and_timeout() -> None:
    calls = [
        {"tool_name": "crm_lookup", "tool_call_id": "c_answered", "parameters": {"q": "A1"}},
        {"tool_name": "crm_lookup", "tool_call_id": "c_silent", "parameters": {}},
    ]

    async def answer(session: Session, tel: Telephony, rec: ConversationRecord) -> None:
        while not rec.tool_calls:
            await asyncio.sleep(0.01)
        assert tel.on_tool_result("nonexistent", "x", False) is False
        while not tel.on_tool_result("c_answered", '{"tier":"gold"}', False):
            await asyncio.sleep(0.01)

    _, rec, _ = converse(calls, driver=answer, hang_up_when=lambda r: len(r.tool_results) >= 2)
    by_id = {r["tool_call_id"]: r for r in rec.tool_results}
    assert by_id["c_answered"]["result"] == '{"tier":"gold"}'
    assert by_id["c_answered"]["is_error"] is False
    assert by_id["c_silent"] == {
        "type": "client_tool_result",
        "tool_call_id": "c_silent",
        "result": "no answer from the crm_lookup handler within 0.5 s",
        "is_error": True,
        "error_type": "client_timeout",
    }


def test_unconfigured_tool_is_an_error_at_once() -> None:
    calls = [{"tool_name": "open_pod_bay_doors", "parameters": {}}]
    _, rec, _ = converse(calls, hang_up_when=lambda r: bool(r.tool_results))
    assert rec.tool_results[0]["is_error"] is True
    assert rec.tool_results[0]["result"] == "Client tool 'open_pod_bay_doors' is not available"
    # "at once": well before any handler timeout
    t_call = next(e.t for e in rec.events if e.type == "client_tool_call")
    t_res = next(e.t for e in rec.events if e.type == "client_tool_result")
    assert t_res - t_call < 0.5


def test_system_transfer_to_number_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    calls = [
        {"tool_name": "transfer_to_number", "system": True},
        {"tool_name": "transfer_to_number", "system": True},
        {"tool_name": "play_keypad_touch_tone", "system": True},
        {"tool_name": "marker"},  # its (error) result means the three above were handled
    ]
    with caplog.at_level(logging.DEBUG, logger=log.name):
        converse(calls, hang_up_when=lambda r: bool(r.tool_results))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "transfer_to_number" in w]) == 1
    assert "configured for transfers (transfer_call)" in next(
        w for w in warnings if "transfer_to_number" in w
    )
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("system tool play_keypad_touch_tone ran" in d for d in debug)
