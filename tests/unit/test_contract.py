"""ElevenLabs' AsyncAPI contract in the simulator (convai.sim.contract): the JSON copy is the
YAML file, the validator enforces what the schemas say, and the simulator records every
message off the contract in either direction."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from test_sim import audio_msg, caller_speech, conversation, quick

from convai.sim import Simulator, contract


def test_the_json_copy_is_made_from_the_yaml_file_beside_it() -> None:
    doc = json.loads(contract.JSON_FILE.read_text())
    assert doc["x-convai-generated-from"]["sha256"] == contract.yaml_sha256(), (
        "agent.asyncapi.yaml changed: regenerate agent.asyncapi.json (see convai.sim.contract)"
    )
    assert "MIT License" in (contract.HERE / "LICENSE").read_text()


def test_every_message_type_of_both_sides_is_known() -> None:
    c = contract.load()
    assert {None, "pong", "conversation_initiation_client_data", "user_message"} <= set(
        c.client_types
    )
    assert {"audio", "ping", "interruption", "conversation_initiation_metadata"} <= set(
        c.server_types
    )


@pytest.mark.parametrize(
    ("side", "msg", "error"),
    [
        ("client", {"type": "pong", "event_id": "3"}, 'pong.event_id: "3" is not of type'),
        ("client", {"type": "pong"}, "required 'event_id' is missing"),
        ("client", {"type": "user_message", "text": 5}, "user_message.text: 5 is not of type"),
        ("client", {"type": "audio"}, "type 'audio' is not a client message"),
        ("client", {"text": "no type"}, "type None is not a client message"),
        ("client", [1, 2], "must be an object"),
        ("server", {"type": "audio", "audio_event": {"event_id": 1}}, "'audio_base_64'"),
        ("server", {"type": "ping", "ping_event": {"event_id": True}}, "is not of type integer"),
        ("server", {"type": "pong", "event_id": 1}, "type 'pong' is not a server message"),
        (
            "server",
            {"type": "vad_score", "vad_score_event": {"vad_score": 1.5}},
            "1.5 > maximum 1",
        ),
    ],
)
def test_the_validator_names_what_is_wrong(side: str, msg: Any, error: str) -> None:
    c = contract.load()
    errors = c.client_message(msg) if side == "client" else c.server_message(msg)
    assert any(error in e for e in errors), errors


def test_valid_messages_pass() -> None:
    c = contract.load()
    assert c.client_message({"user_audio_chunk": "AAAA"}) == []
    assert c.client_message({"type": "pong", "event_id": 7}) == []
    assert c.server_message({"type": "ping", "ping_event": {"event_id": 1, "ping_ms": None}}) == []


def test_an_unknown_schema_keyword_refuses_to_load() -> None:
    doc = json.loads(contract.JSON_FILE.read_text())
    doc["components"]["schemas"]["PongPayload"]["pattern"] = "^x$"
    with pytest.raises(ValueError, match="does not enforce: \\['pattern'\\]"):
        contract.Contract(doc)


def test_the_simulator_records_violations_both_ways() -> None:
    """A whole conversation (the caller's turn, a transcript, a reply, pings) is clean; a client
    message off the contract is recorded as an "in" violation."""

    async def go() -> list[str]:
        sc = quick(greeting="", replies=["Sure."], ping_interval=0.05)
        async with Simulator(sc) as sim, conversation(sim) as c:
            speech = caller_speech(sc.input_format, 1.0)
            for i in range(0, len(speech), 160):
                await c.ws.send(audio_msg(speech[i : i + 160]))
            await c.ws.send(audio_msg(b"\xff" * 5600))
            await c.wait(lambda: c.of("agent_response") and c.of("audio"))
            await c.wait_type("ping", 2)
            rec = sim.conversations[0]
            assert rec.contract_violations == [], rec.contract_violations
            await c.ws.send(json.dumps({"type": "pong", "event_id": "late"}))
            await c.ws.send(json.dumps({"type": "user_activity", "text": "x"}))
            await asyncio.sleep(0.2)
            return list(rec.contract_violations)

    violations = asyncio.run(go())
    assert violations and all(v.startswith("in: ") for v in violations), violations
    assert any('pong.event_id: "late" is not of type integer' in v for v in violations)


def test_the_check_can_be_switched_off() -> None:
    async def go() -> list[str]:
        async with Simulator(quick(greeting=""), check_contract=False) as sim:
            async with conversation(sim) as c:
                await c.ws.send(json.dumps({"type": "pong", "event_id": "x"}))
                await asyncio.sleep(0.2)
            return sim.conversations[0].contract_violations

    assert asyncio.run(go()) == []


def test_audio_chunks_are_checked_too() -> None:
    """_send_chunk builds its text by hand: it is checked all the same (one per chunk)."""

    async def go() -> int:
        async with Simulator(quick(greeting="Hello there.")) as sim, conversation(sim) as c:
            await c.wait(lambda: c.of("audio"))
            data = base64.b64decode(c.of("audio")[0]["audio_event"]["audio_base_64"])
            assert data
            return len(sim.conversations[0].contract_violations)

    assert asyncio.run(go()) == 0
