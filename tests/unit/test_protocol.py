"""The sans-I/O protocol core against every server example, every builder, the
interruption rule and malformed frames."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from convai import protocol as p

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "convai-server-messages.jsonl"


def fixture_lines() -> list[str]:
    return [line for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line.strip()]


def fixture(mtype: str) -> dict[str, Any]:
    for line in fixture_lines():
        msg = json.loads(line)
        if msg["type"] == mtype:
            assert isinstance(msg, dict)
            return msg
    raise KeyError(mtype)


def one(proto: p.ClientProtocol, data: str | bytes) -> p.Event:
    events = proto.receive(data)
    assert len(events) == 1
    return events[0]


def audio_msg(event_id: int, payload: bytes = b"\xff\x7f", **extra: Any) -> str:
    ev = {"audio_base_64": base64.b64encode(payload).decode(), "event_id": event_id, **extra}
    return json.dumps({"audio_event": ev, "type": "audio"})


def interruption_msg(event_id: int) -> str:
    return json.dumps({"interruption_event": {"event_id": event_id}, "type": "interruption"})


# ---------------------------------------------------------------- every fixture line

TONE = base64.b64decode(fixture("audio")["audio_event"]["audio_base_64"])

EXPECTED: dict[str, p.Event] = {
    "conversation_initiation_metadata": p.ConversationInitiationMetadata(
        "conv_7801k2xq9v3fe6r8t4yd2mbz5hwa", "ulaw_8000", "ulaw_8000"
    ),
    "asr_initiation_metadata": p.Informational("asr_initiation_metadata", {}),
    "ping": p.Ping(1, None),
    "agent_response": p.AgentResponse(
        "Hi, thanks for calling Acme Deliveries. How can I help you today?", 1
    ),
    "audio": p.Audio(
        1,
        TONE,
        {
            "chars": ["H", "i", ",", " "],
            "char_start_times_ms": [0, 70, 160, 190],
            "char_durations_ms": [70, 90, 30, 40],
        },
        False,
    ),
    "agent_response_complete": p.AgentResponseComplete(1),
    "vad_score": p.VadScore(0.87),
    "tentative_user_transcript": p.UserTranscript("I need to change my deliv", 2, True),
    "user_transcript": p.UserTranscript("I need to change my delivery address.", 2, False),
    "internal_turn_probability": p.Informational(
        "internal_turn_probability", {"turn_probability": 0.93}
    ),
    "internal_tentative_agent_response": p.Informational(
        "internal_tentative_agent_response",
        {"tentative_agent_response": "Of course. Could you tell me your order"},
    ),
    "agent_chat_response_part": p.Informational(
        "agent_chat_response_part", {"text": "Of course.", "type": "delta", "event_id": 3}
    ),
    "agent_reasoning_response_part": p.Informational(
        "agent_reasoning_response_part",
        {
            "text": "User wants to update the address; need the order number first.",
            "type": "delta",
            "event_id": "3",
        },
    ),
    "interruption": p.Interruption(4, None),
    "agent_response_correction": p.AgentResponseCorrection(
        "Of course. Could you tell me your order number? It starts with the letters AC and is"
        " printed on your receipt.",
        "Of course. Could you tell me your order number?",
        3,
    ),
    "client_tool_call": p.ClientToolCall(
        "transfer_call",
        "call_Zx81kQ2pLm4Tn7Rv",
        {"destination": "+14155550199", "reason": "caller asked for a human"},
        5,
        True,
    ),
    "agent_tool_request": p.AgentToolRequest(
        "lookup_order", "toolu_01K2Y7MZ4QW8E3R5T6Y7U8I9", "webhook", 5, True
    ),
    "agent_tool_response": p.AgentToolResponse(
        tool_name="end_call",
        tool_call_id="toolu_01K2Y8B3N5M7Q9W2E4R6T8Y0",
        tool_type="system",
        is_error=False,
        event_id=9,
        is_called=True,
        is_blocked=False,
    ),
    "agent_tool_response_full_payload": p.AgentToolResponse(
        tool_name="lookup_order",
        tool_call_id="toolu_01K2Y7MZ4QW8E3R5T6Y7U8I9",
        tool_type="webhook",
        is_error=False,
        event_id=5,
        is_called=True,
        is_blocked=False,
        full_payload=True,
        full_tool_result='{"order_id":"AC-48213","status":"out_for_delivery"}',
        truncated=False,
    ),
    "mcp_connection_status": p.Informational(
        "mcp_connection_status",
        {
            "integrations": [
                {
                    "integration_id": "mcp_srv_01k2y6",
                    "integration_type": "mcp_server",
                    "is_connected": True,
                    "tool_count": 4,
                }
            ]
        },
    ),
    "mcp_tool_call": p.Informational("mcp_tool_call", fixture("mcp_tool_call")["mcp_tool_call"]),
    "agent_response_metadata": p.Informational(
        "agent_response_metadata",
        {"event_id": 7, "metadata": {"custom_llm_request_id": "req_8f2c1a7e"}},
    ),
    "context_usage": p.Informational(
        "context_usage",
        {
            "event_id": 7,
            "model": "gemini-2.5-flash",
            "context_tokens": 3412,
            "context_limit_tokens": 1048576,
        },
    ),
    "guardrail_triggered": p.Informational(
        "guardrail_triggered", {"guardrail_name": "no_financial_advice"}
    ),
    "rich_content": p.Informational("rich_content", fixture("rich_content")["rich_content"]),
    "agent_typing": p.Informational("agent_typing", {"is_typing": True, "duration_ms": 3000}),
    "external_agent_connected": p.Informational("external_agent_connected", {}),
    "external_agent_disconnected": p.Informational("external_agent_disconnected", {}),
    "error": p.ErrorEvent(
        1000,
        "max_duration_exceeded",
        "Maximum conversation duration of 600 seconds exceeded",
        reason="max_duration_exceeded",
        wire_type="error",
    ),
    "client_error": p.ErrorEvent(
        1002,
        "transport_receive_timeout",
        "No user input received for 60 seconds",
        wire_type="client_error",
    ),
}


def test_fixture_covers_every_expected_type() -> None:
    types = [json.loads(line)["type"] for line in fixture_lines()]
    assert len(types) == len(set(types)) == 30
    assert set(types) == set(EXPECTED)


@pytest.mark.parametrize("line", fixture_lines(), ids=lambda s: json.loads(s)["type"])
def test_fixture_line_decodes(line: str) -> None:
    proto = p.ClientProtocol()
    event = one(proto, line)
    assert event == EXPECTED[json.loads(line)["type"]]
    # bytes frames decode the same way
    assert p.ClientProtocol().receive(line.encode()) == [event]


def test_fixture_sequence_state() -> None:
    proto = p.ClientProtocol()
    events = [e for line in fixture_lines() for e in proto.receive(line)]
    assert len(events) == 30
    assert not any(isinstance(e, p.MalformedMessage | p.UnknownMessage) for e in events)
    assert proto.conversation_id == "conv_7801k2xq9v3fe6r8t4yd2mbz5hwa"
    assert proto.input_format == proto.output_format == "ulaw_8000"
    assert proto.last_interrupt_id == 4
    assert proto.last_event_id == 9
    assert proto.saw_end_call
    assert proto.last_error == EXPECTED["client_error"]
    assert proto.data_to_send() == ['{"type":"pong","event_id":1}']
    assert proto.data_to_send() == []


# ---------------------------------------------------------------- details of single types


def test_metadata_defaults_to_pcm_16000_when_formats_are_absent() -> None:
    proto = p.ClientProtocol()
    msg = {
        "conversation_initiation_metadata_event": {"conversation_id": "c"},
        "type": "conversation_initiation_metadata",
    }
    assert one(proto, json.dumps(msg)) == p.ConversationInitiationMetadata(
        "c", "pcm_16000", "pcm_16000"
    )


def test_ping_queues_pong_and_records_ping_ms() -> None:
    proto = p.ClientProtocol()
    assert one(proto, '{"ping_event":{"event_id":7,"ping_ms":48},"type":"ping"}') == p.Ping(7, 48)
    assert one(proto, '{"type":"ping","ping_event":{"event_id":8,"ping_ms":12.6}}') == p.Ping(8, 13)
    assert proto.last_ping_ms == 13
    assert [json.loads(t) for t in proto.data_to_send()] == [
        {"type": "pong", "event_id": 7},
        {"type": "pong", "event_id": 8},
    ]
    assert proto.last_event_id == 0  # ping ids are not turn ids


def test_audio_is_final_and_empty_payload() -> None:
    proto = p.ClientProtocol()
    assert one(proto, audio_msg(3, b"", is_final=True)) == p.Audio(3, b"", None, True)


def test_legacy_audio_shape_is_accepted() -> None:
    proto = p.ClientProtocol()
    proto.receive(audio_msg(5))
    ev = one(proto, json.dumps({"type": "audio", "audio": {"chunk": "AAE="}}))
    assert ev == p.Audio(5, b"\x00\x01", None, False)


def test_interruption_reason() -> None:
    msg = {"interruption_event": {"event_id": 2, "reason": "user_speech"}, "type": "interruption"}
    assert one(p.ClientProtocol(), json.dumps(msg)) == p.Interruption(2, "user_speech")


def test_client_tool_call_defaults() -> None:
    msg = {"client_tool_call": {"tool_name": "t", "tool_call_id": "c1"}, "type": "client_tool_call"}
    assert one(p.ClientProtocol(), json.dumps(msg)) == p.ClientToolCall("t", "c1", {}, None, True)
    msg["client_tool_call"]["expects_response"] = False  # type: ignore[index]
    ev = one(p.ClientProtocol(), json.dumps(msg))
    assert isinstance(ev, p.ClientToolCall) and not ev.expects_response


def test_error_event_is_lenient() -> None:
    proto = p.ClientProtocol()
    assert one(proto, '{"type":"error"}') == p.ErrorEvent(None, None, None, wire_type="error")
    ev = one(
        proto, '{"type":"client_error","error_event":{"code":"x","error_name":5,"message":[]}}'
    )
    assert ev == p.ErrorEvent(None, None, None, wire_type="client_error")
    assert proto.last_error == ev


def test_unknown_type_and_unknown_fields() -> None:
    proto = p.ClientProtocol()
    assert one(proto, '{"type":"brand_new_thing","x":{}}') == p.UnknownMessage("brand_new_thing")
    ev = one(proto, '{"vad_score_event":{"vad_score":1,"extra":true},"type":"vad_score","new":1}')
    assert ev == p.VadScore(1.0)


# ---------------------------------------------------------------- interruption rule


def test_audio_and_interruptions_pass_through_with_their_ids() -> None:
    """The rule is the down ring's (convai_ring_stale): the core reports every audio chunk
    and interruption as it came, so the ring sees late stale audio too."""
    proto = p.ClientProtocol()
    assert isinstance(one(proto, audio_msg(3)), p.Audio)
    assert one(proto, interruption_msg(5)) == p.Interruption(5, None)
    assert one(proto, audio_msg(4, b"abcd")) == p.Audio(4, b"abcd", None, False)  # late
    assert one(proto, audio_msg(5)) == p.Audio(5, b"\xff\x7f", None, False)
    assert one(proto, interruption_msg(4)) == p.Interruption(4, None)  # lower: reported
    assert proto.last_event_id == 5


def test_first_audio_with_id_zero_plays() -> None:
    assert isinstance(one(p.ClientProtocol(), audio_msg(0)), p.Audio)


# ---------------------------------------------------------------- malformed frames

MALFORMED = {
    "bad json": ("{not json", "invalid JSON"),
    "empty": ("", "invalid JSON"),
    "nan": ('{"type":"vad_score","vad_score_event":{"vad_score":NaN}}', "invalid JSON"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "invalid JSON"),
    "huge int": ('{"type":"ping","ping_event":{"event_id":' + "9" * 5000 + "}}", "invalid JSON"),
    "array": ("[1,2]", "expected a JSON object, got list"),
    "string": ('"ping"', "expected a JSON object, got str"),
    "null": ("null", "expected a JSON object, got null"),
    "no type": ('{"ping_event":{"event_id":1}}', "type: expected string, got null"),
    "type not str": ('{"type":5}', "type: expected string, got int"),
    "payload missing": ('{"type":"audio"}', "audio_event: expected object, got null"),
    "payload not object": (
        '{"type":"ping","ping_event":[1]}',
        "ping_event: expected object, got list",
    ),
    "event_id missing": (
        '{"type":"audio","audio_event":{"audio_base_64":"AA=="}}',
        "audio_event.event_id: expected integer, got null",
    ),
    "event_id string": (
        '{"type":"audio","audio_event":{"audio_base_64":"AA==","event_id":"3"}}',
        "audio_event.event_id: expected integer, got str",
    ),
    "event_id bool": (
        '{"type":"interruption","interruption_event":{"event_id":true}}',
        "interruption_event.event_id: expected integer, got bool",
    ),
    "event_id float": (
        '{"type":"ping","ping_event":{"event_id":1.5}}',
        "ping_event.event_id: expected integer, got float",
    ),
    "bad base64": (
        '{"type":"audio","audio_event":{"audio_base_64":"@@@@","event_id":1}}',
        "audio_event.audio_base_64: invalid base64",
    ),
    "bad base64 padding": (
        '{"type":"audio","audio_event":{"audio_base_64":"AAA","event_id":1}}',
        "audio_event.audio_base_64: invalid base64",
    ),
    "non-ascii base64": (
        '{"type":"audio","audio_event":{"audio_base_64":"AAé=","event_id":1}}',
        "audio_event.audio_base_64: invalid base64",
    ),
    "audio not string": (
        '{"type":"audio","audio_event":{"audio_base_64":5,"event_id":1}}',
        "audio_event.audio_base_64: expected string, got int",
    ),
    "alignment not object": (
        '{"type":"audio","audio_event":{"audio_base_64":"","event_id":1,"alignment":[]}}',
        "audio_event.alignment: expected object, got list",
    ),
    "is_final not bool": (
        '{"type":"audio","audio_event":{"audio_base_64":"","event_id":1,"is_final":"yes"}}',
        "audio_event.is_final: expected boolean, got str",
    ),
    "vad not number": (
        '{"type":"vad_score","vad_score_event":{"vad_score":"high"}}',
        "vad_score_event.vad_score: expected number, got str",
    ),
    "transcript missing": (
        '{"type":"user_transcript","user_transcription_event":{"event_id":1}}',
        "user_transcription_event.user_transcript: expected string, got null",
    ),
    "metadata without id": (
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{}}',
        "conversation_initiation_metadata_event.conversation_id: expected string, got null",
    ),
    "tool params not object": (
        '{"type":"client_tool_call","client_tool_call":{"tool_name":"t","tool_call_id":"c",'
        '"parameters":"x"}}',
        "client_tool_call.parameters: expected object, got str",
    ),
    "tool name missing": (
        '{"type":"agent_tool_response","agent_tool_response":{"tool_call_id":"c"}}',
        "agent_tool_response.tool_name: expected string, got null",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed(case: str) -> None:
    text, error = MALFORMED[case]
    proto = p.ClientProtocol()
    ev = one(proto, text)
    assert isinstance(ev, p.MalformedMessage), ev
    assert ev.error.startswith(error), ev.error
    assert len(ev.excerpt) <= p.EXCERPT_CHARS + 1
    assert proto.data_to_send() == []  # a malformed ping is not answered


def test_malformed_bytes_and_excerpt() -> None:
    ev = one(p.ClientProtocol(), b"\xff\xfe{")
    assert isinstance(ev, p.MalformedMessage) and ev.error.startswith("invalid UTF-8")
    long = "x" * 500
    ev = one(p.ClientProtocol(), long)
    assert isinstance(ev, p.MalformedMessage)
    assert ev.excerpt == "x" * 120 + "…"


# ---------------------------------------------------------------- hostile values (issue 11)


@pytest.mark.parametrize("bad", [2**63, 2**32, -1, -(2**63), 10**400])
def test_event_ids_outside_32_bits_are_malformed(bad: int) -> None:
    """Issue 11 (1): the ring holds uint32 ids; anything else is skipped, state untouched."""
    proto = p.ClientProtocol()
    for msg in (
        interruption_msg(bad),
        audio_msg(bad),
        json.dumps({"type": "ping", "ping_event": {"event_id": bad}}),
    ):
        ev = one(proto, msg)
        assert isinstance(ev, p.MalformedMessage) and not ev.internal, ev
        assert "event_id" in ev.error and "outside 0..4294967295" in ev.error, ev.error
    assert (proto.last_interrupt_id, proto.last_event_id) == (0, 0)
    assert proto.data_to_send() == []  # no pong for a ping we cannot echo faithfully
    assert one(proto, audio_msg(1)) == p.Audio(1, b"\xff\x7f", None, False)


def test_event_id_limits_decreasing_and_unseen_ids() -> None:
    """Issue 11 (1): 0 and 2**32-1 are valid and pass unchanged; ids that go down or were
    never seen are valid too (the ring's watermark then decides what plays: test_ring.py)."""
    proto = p.ClientProtocol()
    assert one(proto, audio_msg(p.EVENT_ID_MAX)) == p.Audio(
        p.EVENT_ID_MAX, b"\xff\x7f", None, False
    )
    assert one(proto, audio_msg(0)) == p.Audio(0, b"\xff\x7f", None, False)  # decreasing
    assert one(proto, interruption_msg(1000)) == p.Interruption(1000, None)  # never seen
    assert one(proto, interruption_msg(3)) == p.Interruption(3, None)  # decreasing
    assert proto.last_interrupt_id == 1000
    assert one(proto, interruption_msg(p.EVENT_ID_MAX)) == p.Interruption(p.EVENT_ID_MAX, None)


def _meta(conversation_id: object) -> str:
    ev = {"conversation_id": conversation_id, "agent_output_audio_format": "ulaw_8000"}
    return json.dumps(
        {"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": ev}
    )


def _tool(name: object, call_id: object) -> str:
    ev = {"tool_name": name, "tool_call_id": call_id, "parameters": {}, "event_id": 1}
    return json.dumps({"type": "client_tool_call", "client_tool_call": ev})


HOSTILE_IDS = [
    "conv\t1",  # breaks a tab-separated command
    "conv_1\r\nEvent: Forged",  # forges an AMI header or a log line
    "conv_1\n",
    "a b",
    "a\x00b",
    "",
    "x" * 129,
    "ünïcode",
    "conv;1",
]


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_hostile_identifiers_are_malformed(bad: str) -> None:
    """Issue 11 (3): conversation_id, tool_name and tool_call_id must match ID_PATTERN."""
    proto = p.ClientProtocol()
    for msg, field in (
        (_meta(bad), "conversation_id"),
        (_tool(bad, "call_1"), "tool_name"),
        (_tool("lookup", bad), "tool_call_id"),
    ):
        ev = one(proto, msg)
        assert isinstance(ev, p.MalformedMessage) and not ev.internal, ev
        assert f".{field}: " in ev.error and "not a valid identifier" in ev.error, ev.error
        assert not any(c in ev.error + ev.excerpt for c in "\t\r\n\x00")
    assert proto.conversation_id is None


def test_valid_identifiers_pass_unchanged() -> None:
    proto = p.ClientProtocol()
    ev = one(proto, _meta("conv_7801k2xq9v3fe6r8t4yd2mbz5hwa"))
    assert isinstance(ev, p.ConversationInitiationMetadata)
    assert ev.conversation_id == "conv_7801k2xq9v3fe6r8t4yd2mbz5hwa"
    ev = one(proto, _tool("transfer-to.human:v2", "x" * 128))
    assert isinstance(ev, p.ClientToolCall)
    assert (ev.tool_name, ev.tool_call_id) == ("transfer-to.human:v2", "x" * 128)


def test_malformed_carries_the_type_and_escapes_controls() -> None:
    ev = one(p.ClientProtocol(), '{"type":"interruption",\n"interruption_event":{}}')
    assert isinstance(ev, p.MalformedMessage) and ev.type == "interruption"
    assert "\n" not in ev.excerpt and "\\x0a" in ev.excerpt


@pytest.mark.parametrize("field", ["vad_score", "ping_ms"])
def test_integers_beyond_float_range(field: str) -> None:
    """Found by the strict fuzzing: float(10**400) raised OverflowError (an internal error)."""
    if field == "vad_score":
        ev = one(
            p.ClientProtocol(),
            json.dumps({"type": "vad_score", "vad_score_event": {"vad_score": 10**400}}),
        )
        assert isinstance(ev, p.MalformedMessage) and not ev.internal
        assert "beyond float range" in ev.error
    else:
        ev = one(
            p.ClientProtocol(),
            json.dumps({"type": "ping", "ping_event": {"event_id": 1, "ping_ms": 10**400}}),
        )
        assert ev == p.Ping(1, None)


def test_error_code_outside_close_codes_is_ignored() -> None:
    for code in (2**63, -1, 999, 5000):
        ev = one(
            p.ClientProtocol(),
            json.dumps({"type": "error", "error_event": {"code": code, "error_type": "x"}}),
        )
        assert isinstance(ev, p.ErrorEvent) and ev.code is None


def test_malformed_state_unchanged() -> None:
    proto = p.ClientProtocol()
    proto.receive('{"type":"interruption","interruption_event":{"event_id":"9"}}')
    assert proto.last_interrupt_id == 0


# ---------------------------------------------------------------- builders


def test_initiation_full() -> None:
    text = p.ClientProtocol().initiation(
        dynamic_variables={"caller_number": "+14155550123", "tier": "gold", "n": 3},
        overrides={"agent": {"first_message": "Hi", "language": "en"}},
        user_id="+14155550123",
        custom_llm_extra_body={"temperature": 0.7},
    )
    assert json.loads(text) == {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {"agent": {"first_message": "Hi", "language": "en"}},
        "custom_llm_extra_body": {"temperature": 0.7},
        "dynamic_variables": {"caller_number": "+14155550123", "tier": "gold", "n": 3},
        "user_id": "+14155550123",
    }


def test_initiation_minimal_and_unicode() -> None:
    proto = p.ClientProtocol()
    assert json.loads(proto.initiation()) == {"type": "conversation_initiation_client_data"}
    text = proto.initiation(dynamic_variables={"name": "Zoë"})
    assert "Zoë" in text
    with pytest.raises((TypeError, ValueError)):
        proto.initiation(dynamic_variables={"bad": object()})
    with pytest.raises(ValueError):
        proto.initiation(custom_llm_extra_body={"t": float("nan")})


def test_client_builders() -> None:
    c = p.ClientProtocol
    assert json.loads(c.audio_chunk(b"\x00\xff\x10")) == {"user_audio_chunk": "AP8Q"}
    assert json.loads(c.audio_chunk(b"")) == {"user_audio_chunk": ""}
    assert json.loads(c.pong(42)) == {"type": "pong", "event_id": 42}
    assert json.loads(c.tool_result("call_1", '{"ok":true}', False)) == {
        "type": "client_tool_result",
        "tool_call_id": "call_1",
        "result": '{"ok":true}',
        "is_error": False,
    }
    assert json.loads(c.tool_result("c", "no", True, error_type="client_timeout"))[
        "error_type"
    ] == ("client_timeout")
    assert json.loads(c.contextual_update("DTMF 1")) == {
        "type": "contextual_update",
        "text": "DTMF 1",
    }
    assert json.loads(c.contextual_update("x", context_id="ivr")) == {
        "type": "contextual_update",
        "text": "x",
        "context_id": "ivr",
    }
    assert json.loads(c.user_message('say "hi"\n')) == {
        "type": "user_message",
        "text": 'say "hi"\n',
    }
    assert json.loads(c.user_activity()) == {"type": "user_activity"}
    assert json.loads(c.feedback(43, "like")) == {
        "type": "feedback",
        "event_id": 43,
        "score": "like",
    }
    assert json.loads(c.mcp_tool_approval_result("t1", True)) == {
        "type": "mcp_tool_approval_result",
        "tool_call_id": "t1",
        "is_approved": True,
    }
    assert json.loads(c.multimodal_message("look", "f1")) == {
        "type": "multimodal_message",
        "text": {"type": "user_message", "text": "look"},
        "file": {"type": "file_input", "file_id": "f1"},
    }


# ---------------------------------------------------------------- end reasons


def err(error_type: str | None, code: int | None = None) -> p.ErrorEvent:
    return p.ErrorEvent(code, error_type, "m")


R = p.EndReason


@pytest.mark.parametrize(
    ("close_code", "error", "end_call", "expected"),
    [
        (1000, None, False, R.COMPLETED),
        (1000, None, True, R.AGENT_ENDED_CALL),
        (None, None, True, R.AGENT_ENDED_CALL),
        (1000, err("max_duration_exceeded", 1000), False, R.MAX_DURATION),
        (1000, err("max_duration_exceeded", 1000), True, R.MAX_DURATION),
        (1002, err("transport_receive_timeout", 1002), False, R.TIMEOUT),
        (1002, err("llm_timeout", 1002), False, R.TIMEOUT),
        (1002, err("asyncio_timeout", 1002), False, R.TIMEOUT),
        (1002, err("safety_violation", 1002), False, R.POLICY_VIOLATION),
        (1008, err("override_error", 1008), False, R.POLICY_VIOLATION),
        (1008, None, False, R.POLICY_VIOLATION),
        (1002, err("llm_error", 1002), False, R.SERVER_ERROR),
        (1002, None, False, R.SERVER_ERROR),
        (1011, None, False, R.SERVER_ERROR),
        (1011, err("unknown_websocket_crash", 1011), False, R.SERVER_ERROR),
        (1001, None, False, R.SERVER_ERROR),
        (None, None, False, R.NETWORK_LOSS),
        (1006, None, False, R.NETWORK_LOSS),
        (None, err("llm_error", 1002), False, R.SERVER_ERROR),
        (None, err(None), False, R.NETWORK_LOSS),
    ],
)
def test_end_reason(
    close_code: int | None, error: p.ErrorEvent | None, end_call: bool, expected: p.EndReason
) -> None:
    assert p.end_reason(close_code, error, end_call) is expected


def test_end_reason_values() -> None:
    assert [r.value for r in R] == [
        "completed",
        "agent_ended_call",
        "max_duration",
        "timeout",
        "policy_violation",
        "server_error",
        "network_loss",
        "caller_hangup",
        "signed_url_failed",
        "connect_failed",
        "unsupported_format",
        "shutdown",
        "message_too_big",
        "transfer",
    ]
    assert f"{R.TIMEOUT}" == "timeout"


# ---------------------------------------------------------------- formats and formatters


def test_audio_formats() -> None:
    assert {n: (f.encoding, f.sample_rate, f.frame_bytes) for n, f in p.AUDIO_FORMATS.items()} == {
        "ulaw_8000": ("ulaw", 8000, 160),
        "pcm_8000": ("pcm_s16le", 8000, 320),
        "pcm_16000": ("pcm_s16le", 16000, 640),
        "pcm_22050": ("pcm_s16le", 22050, 882),
        "pcm_24000": ("pcm_s16le", 24000, 960),
        "pcm_44100": ("pcm_s16le", 44100, 1764),
        "pcm_48000": ("pcm_s16le", 48000, 1920),
    }
    assert p.frame_bytes("ulaw_8000") == 160
    assert p.bytes_for_ms("ulaw_8000", 240) == 1920
    assert p.bytes_for_ms("pcm_16000", 240) == 7680
    assert p.bytes_for_ms("pcm_22050", 10) == 440  # whole samples only
    with pytest.raises(ValueError):
        p.frame_bytes("alaw_8000")
    with pytest.raises(ValueError):
        p.bytes_for_ms("mp3", 20)


def test_format_vad() -> None:
    ts = "2024-08-17T16:07:45.123Z"
    assert p.format_vad(0.847, ts) == [
        "=== VAD SCORE MESSAGE ===",
        "VAD Score: 0.847",
        "Timestamp: 2024-08-17T16:07:45.123Z",
        "HIGH voice activity detected (score=0.847)",
        "=== END VAD SCORE ===",
    ]
    assert p.format_vad(0.7, ts)[3].startswith("HIGH ")
    assert p.format_vad(0.3, ts)[3] == "MEDIUM voice activity detected (score=0.300)"
    assert p.format_vad(0.29, ts)[3] == "LOW voice activity detected (score=0.290)"


def test_format_interruption() -> None:
    assert p.format_interruption(46, [42, 45], 1) == [
        "=== INTERRUPTION MESSAGE ===",
        "Event ID: 46",
        "User interrupted AI speech - stopping playback",
        "Processing interruption for event_id=46 - clearing older audio",
        "Removing audio chunk with event_id=42 (<46)",
        "Removing audio chunk with event_id=45 (<46)",
        "Interruption processing complete: removed 2 audio chunks with event_id < 46",
        "Remaining audio chunks in queue: 1",
        "=== END INTERRUPTION ===",
    ]
    assert "removed 0 audio chunks" in p.format_interruption(3, [], 0)[4]


def test_builders_always_give_utf8() -> None:
    """A lone surrogate (from a server's "\\ud800" escape, echoed by a tool) comes out as an
    escape: the frame stays valid UTF-8 and decodes to the same string."""
    for frame in (
        p.ClientProtocol.user_message("a\ud800b"),
        p.ClientProtocol.contextual_update("\udfff"),
        p.ClientProtocol.tool_result("c1", "x\ud83d", False),
    ):
        frame.encode("utf-8")
        assert "\\ud" in frame or "\\udfff" in frame
    assert json.loads(p.ClientProtocol.user_message("a\ud800b"))["text"] == "a\ud800b"
    assert p.ClientProtocol.user_message("grüß") == '{"type":"user_message","text":"grüß"}'


def test_error_event_text_is_printable() -> None:
    """It is logged and becomes the call's result detail: no CR/LF can forge a line."""
    msg = {
        "type": "error",
        "error_event": {"error_type": "x\ny", "message": "bad\r\nWARNING: forged" + "z" * 400},
    }
    ev = one(p.ClientProtocol(), json.dumps(msg))
    assert isinstance(ev, p.ErrorEvent)
    assert ev.error_type == "x\\x0ay"
    assert ev.message is not None and ev.message.startswith("bad\\x0d\\x0aWARNING: forged")
    assert len(ev.message) == 301 and ev.message.endswith("…")
