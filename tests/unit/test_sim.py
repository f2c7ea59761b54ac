"""The ConvAI simulator over real loopback sockets, driven by plain websockets/aiohttp clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from convai import audio
from convai.sim import Scenario, Simulator, SpeechUnavailableError, speech
from convai.sim.__main__ import build_parser, scenario_from_args

T = TypeVar("T")
Msg = dict[str, Any]
CALLER_TEXT = "Hello there, I would like to check on my order please."


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def caller_speech(fmt: str, seconds: float = 1.0) -> bytes:
    """seconds of real speech (espeak-ng) in fmt: what a caller's voice looks like to a VAD."""
    data = speech.synthesize(CALLER_TEXT, fmt)
    return data[: int(seconds * 1000 * audio.bytes_per_ms(fmt))]


def audio_msg(data: bytes) -> str:
    return json.dumps({"user_audio_chunk": base64.b64encode(data).decode()})


async def signed_url(sim: Simulator, agent_id: str = "agent_test") -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            sim.signed_url_endpoint, params={"agent_id": agent_id}, headers={"xi-api-key": "k"}
        ) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    return str(body["signed_url"])


class Client:
    """A websockets connection with a background reader that answers pings and keeps a log."""

    def __init__(self, ws: ClientConnection, pong: bool = True) -> None:
        self.ws = ws
        self.pong = pong
        self.msgs: list[Msg] = []
        self.raw: list[str | bytes] = []
        self.closed: BaseException | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.raw.append(frame)
                try:
                    msg = json.loads(frame)
                except ValueError:
                    msg = None
                if isinstance(msg, dict):
                    self.msgs.append(msg)
                    if self.pong and msg.get("type") == "ping":
                        ev = msg.get("ping_event")
                        if isinstance(ev, dict) and isinstance(ev.get("event_id"), int):
                            await self.ws.send(
                                json.dumps({"type": "pong", "event_id": ev["event_id"]})
                            )
                self._changed.set()
        except websockets.ConnectionClosed as exc:
            self.closed = exc
        self.closed = self.closed or websockets.ConnectionClosedOK(None, None)
        self._changed.set()

    def of(self, type_: str) -> list[Msg]:
        return [m for m in self.msgs if m.get("type") == type_]

    async def wait(self, pred: Callable[[], T], timeout: float = 5.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = pred()
            if value:
                return value
            if self.closed is not None or time.monotonic() > deadline:
                value = pred()
                if value:
                    return value
                raise AssertionError(f"timed out; got {[m.get('type') for m in self.msgs]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.05)

    async def wait_type(self, type_: str, n: int = 1, timeout: float = 5.0) -> list[Msg]:
        return await self.wait(lambda: self.of(type_) if len(self.of(type_)) >= n else [], timeout)

    async def wait_closed(self, timeout: float = 5.0) -> BaseException:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        assert self.closed is not None
        return self.closed

    def index(self, type_: str, start: int = 0) -> int:
        for i in range(start, len(self.msgs)):
            if self.msgs[i].get("type") == type_:
                return i
        raise AssertionError(f"no {type_} after {start}: {[m.get('type') for m in self.msgs]}")

    def audio_of(self, event_id: int) -> bytes:
        return b"".join(
            base64.b64decode(m["audio_event"]["audio_base_64"])
            for m in self.of("audio")
            if m["audio_event"]["event_id"] == event_id
        )


@contextlib.asynccontextmanager
async def conversation(
    sim: Simulator, init: Msg | None = None, send_init: bool = True, pong: bool = True
) -> AsyncIterator[Client]:
    url = await signed_url(sim)
    async with websockets.connect(url, max_size=16 * 1024 * 1024, open_timeout=5) as ws:
        client = Client(ws, pong)
        if send_init:
            await ws.send(json.dumps(init or {"type": "conversation_initiation_client_data"}))
        try:
            yield client
        finally:
            client._task.cancel()


def quick(**kw: Any) -> Scenario:
    """A scenario tuned for fast tests: audio sent at once, no pings unless asked."""
    base: dict[str, Any] = {"burst_factor": 0.0, "ping_interval": 0.0, "init_wait_s": 0.3}
    base.update(kw)
    return Scenario(**base)


# --- signed URL ---------------------------------------------------------------------------------
async def _get(
    sim: Simulator,
    params: dict[str, str],
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.get(sim.signed_url_endpoint, params=params, headers=headers or {}) as r,
    ):
        return r.status, await r.text()


def test_signed_url_ok() -> None:
    async def go() -> None:
        async with Simulator(quick(require_api_key="sk_right")) as sim:
            status, body = await _get(sim, {"agent_id": "agent_x"}, {"xi-api-key": "sk_right"})
            assert status == 200
            url = json.loads(body)["signed_url"]
            prefix = f"ws://127.0.0.1:{sim.port}/v1/convai/conversation?agent_id=agent_x&"
            assert url.startswith(prefix + "conversation_signature=")
            assert sim.signed_url_requests[-1].status == 200

    run(go())


def test_signed_url_401_and_422() -> None:
    async def go() -> None:
        async with Simulator(quick(require_api_key="sk_right")) as sim:
            status, body = await _get(sim, {"agent_id": "agent_x"}, {"xi-api-key": "sk_wrong"})
            assert status == 401
            assert json.loads(body)["detail"]["status"] == "invalid_api_key"
            status, body = await _get(sim, {"agent_id": "agent_x"})
            assert status == 401
            status, body = await _get(sim, {}, {"xi-api-key": "sk_right"})
            assert status == 422
            assert json.loads(body)["detail"][0]["loc"] == ["query", "agent_id"]

    run(go())


def test_signed_url_scripted_failures() -> None:
    async def go() -> None:
        async with Simulator(quick(signed_url_status=500)) as sim:
            status, body = await _get(sim, {"agent_id": "a"})
            assert status == 500
            assert "detail" in json.loads(body)
            sim.scenario.signed_url_status = 200
            sim.scenario.signed_url_body = '{"signed_url": '
            status, body = await _get(sim, {"agent_id": "a"})
            assert status == 200
            with pytest.raises(ValueError):
                json.loads(body)
            sim.scenario.signed_url_body = None
            sim.scenario.signed_url_delay = 0.5
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await _get(sim, {"agent_id": "a"}, timeout=0.1)
            sim.scenario.signed_url_delay = 0.2
            status, _ = await _get(sim, {"agent_id": "a"})
            assert status == 200
            assert time.monotonic() - t0 >= 0.3

    run(go())


def test_handshake_signature_checked() -> None:
    async def go() -> None:
        async with Simulator(quick()) as sim:
            url = await signed_url(sim, "agent_a")
            bad = [
                url.rsplit("=", 1)[0] + "=forged",  # unknown signature
                url.replace("agent_a", "agent_b"),  # issued for another agent
                sim.ws_url + "?agent_id=agent_a",  # none: a private agent
            ]
            for u in bad:
                with pytest.raises(websockets.InvalidStatus) as err:
                    async with websockets.connect(u, open_timeout=5):
                        pass
                assert err.value.response.status_code == 403
            sim.scenario.public_agent = True
            async with websockets.connect(sim.ws_url + "?agent_id=agent_a") as ws:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert msg["type"] == "conversation_initiation_metadata"

    run(go())


# --- conversation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("in_fmt", "out_fmt"),
    [("ulaw_8000", "ulaw_8000"), ("pcm_16000", "pcm_8000"), ("pcm_8000", "pcm_16000")],
)
def test_metadata_first_then_spoken_greeting(in_fmt: str, out_fmt: str) -> None:
    async def go() -> None:
        sc = quick(input_format=in_fmt, output_format=out_fmt)
        async with Simulator(sc) as sim, conversation(sim) as c:
            expected = speech.synthesize(sc.greeting, out_fmt)
            await c.wait(lambda: len(c.audio_of(1)) >= len(expected))
            assert c.audio_of(1) == expected
            first = json.loads(c.raw[0])
            assert list(first) == ["conversation_initiation_metadata_event", "type"]
            meta = first["conversation_initiation_metadata_event"]
            assert meta["conversation_id"].startswith("conv_")
            assert meta["user_input_audio_format"] == in_fmt
            assert meta["agent_output_audio_format"] == out_fmt
            assert sim.conversations[0].conversation_id == meta["conversation_id"]
            resp = c.of("agent_response")[0]["agent_response_event"]
            assert resp == {"agent_response": sc.greeting, "event_id": 1}
            assert c.index("agent_response") < c.index("audio")
            # Every chunk carries the turn's id; ~100 ms each.
            events = [m["audio_event"] for m in c.of("audio")]
            assert {e["event_id"] for e in events} == {1}
            assert all(list(json.loads(r)) == ["audio_event", "type"] for r in c.raw[2:4])
            chunk = len(base64.b64decode(events[0]["audio_base_64"]))
            assert chunk == 100 * audio.bytes_per_ms(out_fmt)
            # Real speech: plausible length for the text, loud, with pauses between words.
            pcm, rate = audio.to_pcm16(c.audio_of(1), out_fmt)
            seconds = len(pcm) / 2 / rate
            words = len(sc.greeting.split())
            assert words / 4.0 < seconds < words / 1.5, seconds  # 1.5-4 words per second
            frame = rate // 10 * 2
            levels = [audio.rms_dbfs(pcm[i : i + frame]) for i in range(0, len(pcm) - frame, frame)]
            assert max(levels) > -25
            assert min(levels) < -45
            assert statistics.pstdev(levels) > 8

    run(go())


def test_ping_pong_recorded_and_rtt_reported() -> None:
    async def go() -> None:
        async with Simulator(quick(ping_interval=0.05, greeting="")) as sim, conversation(sim) as c:
            rec = sim.conversations[0]
            await c.wait(lambda: len(rec.pongs) >= 4)
            pings = [m["ping_event"] for m in c.of("ping")]
            ids = [p["event_id"] for p in pings]
            assert ids == sorted(set(ids))
            assert pings[0]["ping_ms"] is None
            assert rec.pongs[:4] == ids[:4]
            assert any(isinstance(p["ping_ms"], int) for p in pings[1:])
            assert all(0 <= r < 1000 for r in rec.ping_rtts_ms)

    run(go())


def test_caller_turn_gets_vad_transcript_and_reply() -> None:
    async def go() -> None:
        sc = quick(greeting="", replies=["Sure, let me check."])
        async with Simulator(sc) as sim, conversation(sim) as c:
            rec = sim.conversations[0]
            speech_1s = caller_speech(sc.input_format, 1.0)
            assert audio.rms_dbfs(audio.ulaw_decode(speech_1s)) > sc.vad_threshold_dbfs + 10
            for i in range(0, len(speech_1s), 160):  # 20 ms frames, like a phone
                await c.ws.send(audio_msg(speech_1s[i : i + 160]))
            await c.wait_type("vad_score")
            assert not c.of("user_transcript")  # no silence yet: the turn is still open
            await c.ws.send(audio_msg(audio.silence(sc.input_format, 700)))
            await c.wait(lambda: c.of("audio"))
            scores = [m["vad_score_event"]["vad_score"] for m in c.of("vad_score")]
            assert all(0.0 <= s <= 1.0 for s in scores)
            assert max(scores) > 0.9 and min(scores) < 0.1
            assert len(scores) <= 1.7 / 0.1 + 3  # at most every 100 ms, plus state changes
            tr = c.of("user_transcript")[0]["user_transcription_event"]
            assert tr["user_transcript"].startswith("(caller spoke for ")
            reply = c.of("agent_response")[0]["agent_response_event"]
            assert reply["agent_response"] == "Sure, let me check."
            assert reply["event_id"] > tr["event_id"]
            assert c.index("user_transcript") < c.index("agent_response") < c.index("audio")
            assert {m["audio_event"]["event_id"] for m in c.of("audio")} == {reply["event_id"]}
            assert rec.caller_audio_bytes == len(speech_1s) + 5600
            assert bytes(rec.caller_audio[:160]) == speech_1s[:160]
            assert rec.user_transcripts == [(tr["event_id"], tr["user_transcript"])]

    run(go())


@pytest.mark.parametrize(("same_id", "late"), [(True, False), (False, True)])
def test_caller_speech_over_the_agent_interrupts(same_id: bool, late: bool) -> None:
    async def go() -> None:
        sc = quick(burst_factor=1.0, reply_event_id_equals_interrupt=same_id, late_stale_audio=late)
        async with Simulator(sc) as sim, conversation(sim) as c:
            await c.wait_type("audio", 2)
            await c.ws.send(audio_msg(caller_speech(sc.input_format, 1.0)))
            intr = (await c.wait_type("interruption"))[0]["interruption_event"]["event_id"]
            assert intr > 1
            await c.wait_type("agent_response_correction")
            greeting_chunks = len([m for m in c.of("audio") if m["audio_event"]["event_id"] == 1])
            await asyncio.sleep(0.4)  # the greeting would have sent ~4 more chunks by now
            after = c.msgs[c.index("interruption") :]
            stale = [m for m in after if m.get("type") == "audio"]
            assert len(stale) == (1 if late else 0)
            assert len([m for m in c.of("audio") if m["audio_event"]["event_id"] == 1]) == (
                greeting_chunks
            )
            corr = c.of("agent_response_correction")[0]["agent_response_correction_event"]
            assert corr["event_id"] == 1
            assert corr["original_agent_response"] == sc.greeting
            assert sc.greeting.startswith(corr["corrected_agent_response"])
            assert len(corr["corrected_agent_response"]) < len(sc.greeting)
            # The caller's turn ends; the reply answers it with the interruption's id (or above).
            await c.ws.send(audio_msg(audio.silence(sc.input_format, 700)))
            reply = (await c.wait_type("agent_response", 2))[1]["agent_response_event"]
            assert reply["event_id"] == intr if same_id else reply["event_id"] > intr
            tr = c.of("user_transcript")[0]["user_transcription_event"]
            assert tr["event_id"] == intr
            await c.wait(lambda: c.audio_of(reply["event_id"]))
            assert sim.conversations[0].interruptions == [intr]

    run(go())


def test_no_interrupt_on_speech_ignores_talk_over() -> None:
    async def go() -> None:
        sc = quick(burst_factor=1.0, interrupt_on_speech=False)
        async with Simulator(sc) as sim, conversation(sim) as c:
            await c.wait_type("audio", 2)
            await c.ws.send(audio_msg(caller_speech(sc.input_format, 1.0)))
            await c.ws.send(audio_msg(audio.silence(sc.input_format, 700)))
            await c.wait(lambda: len(sim.conversations[0].events_of("speech_end", "sim")) == 1)
            await asyncio.sleep(0.2)
            assert not c.of("interruption")
            assert not c.of("user_transcript")

    run(go())


def test_end_keyword_in_user_message_ends_with_1000() -> None:
    async def go() -> None:
        async with Simulator(quick(greeting="")) as sim, conversation(sim) as c:
            await c.wait_type("conversation_initiation_metadata")
            await c.ws.send(json.dumps({"type": "user_message", "text": "OK, Goodbye then"}))
            closed = await c.wait_closed()
            assert isinstance(closed, websockets.ConnectionClosedOK)
            assert c.ws.close_code == 1000
            farewell = c.of("agent_response")[0]["agent_response_event"]
            assert farewell["agent_response"] == "Goodbye!"
            tool = c.of("agent_tool_response")[0]["agent_tool_response"]
            assert tool["tool_name"] == "end_call"
            assert tool["event_id"] == farewell["event_id"]
            assert c.index("agent_tool_response") > c.index("audio")
            rec = sim.conversations[0]
            await sim.wait_for(lambda: rec.done)
            assert rec.end_reason == "end_call"
            assert rec.server_close_code == 1000
            assert rec.user_messages == ["OK, Goodbye then"]
            # The close waited for the farewell to play out.
            farewell_s = (
                rec.agent_audio_bytes(farewell["event_id"]) / audio.bytes_per_ms("ulaw_8000") / 1000
            )
            close_t = rec.events_of("close")[0].t
            assert close_t - rec.events_of("agent_response")[0].t >= farewell_s

    run(go())


def test_end_after_turns_and_contextual_update() -> None:
    async def go() -> None:
        sc = quick(greeting="", end_after_turns=2, replies=["One."])
        async with Simulator(sc) as sim, conversation(sim) as c:
            await c.wait_type("conversation_initiation_metadata")
            await c.ws.send(json.dumps({"type": "contextual_update", "text": "caller pressed 1"}))
            await c.ws.send(json.dumps({"type": "user_message", "text": "first"}))
            await c.wait_type("audio")
            await c.ws.send(json.dumps({"type": "user_message", "text": "second"}))
            await c.wait_closed()
            texts = [m["agent_response_event"]["agent_response"] for m in c.of("agent_response")]
            assert texts == ["One.", "Goodbye!"]
            assert c.ws.close_code == 1000
            assert sim.conversations[0].contextual_updates == [
                {"text": "caller pressed 1", "context_id": None}
            ]
        async with Simulator(quick(greeting="")) as sim, conversation(sim) as c:
            await c.ws.send(json.dumps({"type": "contextual_update", "text": "DTMF: goodbye"}))
            await c.wait_closed()
            assert c.of("agent_tool_response")
            assert c.ws.close_code == 1000

    run(go())


@pytest.mark.parametrize("code", [1002, 1008, 1011])
def test_scripted_close_codes_with_error_event(code: int) -> None:
    async def go() -> None:
        error = {"code": code, "message": "scripted", "error_type": "llm_timeout"}
        sc = quick(close_after_s=0.1, close_code=code, close_reason="scripted", error_event=error)
        async with Simulator(sc) as sim, conversation(sim) as c:
            closed = await c.wait_closed()
            assert isinstance(closed, websockets.ConnectionClosedError)
            assert c.ws.close_code == code
            assert c.ws.close_reason == "scripted"
            assert c.msgs[-1] == {"error_event": error, "type": "error"}
            rec = sim.conversations[0]
            await sim.wait_for(lambda: rec.done)
            assert (rec.end_reason, rec.server_close_code) == ("scripted_close", code)

    run(go())


def test_max_duration() -> None:
    async def go() -> None:
        async with Simulator(quick(max_duration_s=0.2)) as sim, conversation(sim) as c:
            await c.wait_closed()
            assert c.ws.close_code == 1000
            err = c.of("error")[-1]["error_event"]
            assert err["error_type"] == "max_duration_exceeded" and err["code"] == 1000

    run(go())


def test_drop_tcp_without_close_frame() -> None:
    async def go() -> None:
        async with Simulator(quick(drop_tcp_after_s=0.2)) as sim, conversation(sim) as c:
            closed = await c.wait_closed()
            assert isinstance(closed, websockets.ConnectionClosedError)
            assert closed.rcvd is None  # no close frame came
            rec = sim.conversations[0]
            await sim.wait_for(lambda: rec.done)
            assert rec.end_reason == "tcp_drop"

    run(go())


def test_garbage_then_carry_on() -> None:
    async def go() -> None:
        sc = quick(greeting="", garbage_after_s=0.05, ping_interval=0.1, replies=["Still here."])
        async with Simulator(sc) as sim, conversation(sim) as c:
            await c.wait(lambda: any(isinstance(r, bytes) for r in c.raw))
            assert any(isinstance(r, str) and r.startswith("this is not JSON") for r in c.raw)
            assert c.of("future_unknown_type")
            pings_before = len(c.of("ping"))
            await c.ws.send(json.dumps({"type": "user_message", "text": "hello?"}))
            await c.wait(lambda: c.of("agent_response") and len(c.of("ping")) > pings_before + 1)
            assert c.closed is None

    run(go())


def test_client_garbage_never_breaks_the_conversation() -> None:
    async def go() -> None:
        sc = quick(greeting="", replies=["Fine."])
        async with Simulator(sc) as sim, conversation(sim) as c:
            for frame in [
                "{oops",
                "[]",
                "null",
                json.dumps({"user_audio_chunk": "***"}),
                json.dumps({"user_audio_chunk": 5}),
                json.dumps({"type": "pong", "event_id": "x"}),
                json.dumps({"type": "from_the_future", "x": 1}),
                json.dumps({"type": "user_message", "text": None}),
                json.dumps({"type": "client_tool_result"}),
                json.dumps({"type": 7}),
            ]:
                await c.ws.send(frame)
            await c.ws.send(b"\x00binary")
            await c.ws.send(audio_msg(b"\xff" * 3))  # a chunk that is not whole frames
            await c.ws.send(json.dumps({"type": "user_message", "text": "still there?"}))
            rec = sim.conversations[0]
            # The agent still listens and answers. (Whether the reply to the first, empty
            # user_message survives the second depends on timing, so count only one.)
            await c.wait(
                lambda: "still there?" in rec.user_messages and bool(c.of("agent_response"))
            )
            assert len(rec.invalid_frames) >= 6
            assert rec.unknown_types == ["from_the_future", "7"]
            assert c.closed is None

    run(go())


def test_tool_calls_after_first_turn() -> None:
    async def go() -> None:
        call = {"tool_name": "transfer_call", "parameters": {"destination": "100"}}
        sc = quick(greeting="", tool_calls=[call], replies=["Transferring you now."])
        async with Simulator(sc) as sim, conversation(sim) as c:
            await c.ws.send(json.dumps({"type": "user_message", "text": "a human please"}))
            tc = (await c.wait_type("client_tool_call"))[0]["client_tool_call"]
            assert tc["tool_name"] == "transfer_call" and tc["parameters"] == {"destination": "100"}
            assert tc["expects_response"] is True
            await asyncio.sleep(0.1)
            assert not c.of("agent_response")  # waits for the result
            result = {
                "type": "client_tool_result",
                "tool_call_id": tc["tool_call_id"],
                "result": "ok",
                "is_error": False,
            }
            await c.ws.send(json.dumps(result))
            await c.wait_type("agent_response")
            assert sim.conversations[0].tool_results == [result]

    run(go())


def test_no_init_message_and_overrides() -> None:
    async def go() -> None:
        async with (
            Simulator(quick(init_wait_s=0.1)) as sim,
            conversation(sim, send_init=False) as c,
        ):
            await c.wait_type("agent_response")
            assert c.msgs[0]["type"] == "conversation_initiation_metadata"
            assert sim.conversations[0].init is None
        init = {
            "type": "conversation_initiation_client_data",
            "conversation_config_override": {"agent": {"first_message": "Hi {{name}}."}},
            "dynamic_variables": {"name": "Ann"},
        }
        async with Simulator(quick()) as sim, conversation(sim, init) as c:
            resp = (await c.wait_type("agent_response"))[0]["agent_response_event"]
            assert resp["agent_response"] == "Hi Ann."
            await c.wait(lambda: c.audio_of(1))
            assert sim.conversations[0].init == init

    run(go())


def test_concurrent_conversations_are_isolated() -> None:
    async def go() -> None:
        async with Simulator(quick(greeting="Hi.")) as sim:
            async with contextlib.AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(conversation(sim)) for _ in range(20)]
                await asyncio.gather(*(c.wait_type("audio") for c in clients))
                ids = {
                    c.msgs[0]["conversation_initiation_metadata_event"]["conversation_id"]
                    for c in clients
                }
                assert len(ids) == 20
                # One caller misbehaves and vanishes; the others carry on.
                await clients[0].ws.send("{garbage")
                clients[0].ws.transport.abort()
                await asyncio.sleep(0.1)
                await clients[1].ws.send(json.dumps({"type": "user_message", "text": "hi"}))
                await clients[1].wait_type("agent_response", 2)
            await sim.wait_for(lambda: all(r.done for r in sim.conversations))
            assert sim.conversations[0].end_reason == "connection_lost"

    run(go())


def test_run_in_thread_with_a_sync_client() -> None:
    with Simulator(quick(greeting="Hi.")).run_in_thread() as sim:
        url = run(signed_url(sim))
        with sync_connect(url) as ws:
            ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            types = [json.loads(ws.recv(timeout=5))["type"] for _ in range(3)]
            assert types == ["conversation_initiation_metadata", "agent_response", "audio"]
            ws.close(1000)
        assert sim.wait_for_sync(lambda: sim.conversations[0].done)
        rec = sim.conversations[0]
        assert (rec.client_close_code, rec.end_reason) == (1000, "client_closed")


def test_stop_closes_live_conversations_with_1001() -> None:
    async def go() -> None:
        sim = Simulator(quick(burst_factor=1.0))
        await sim.start()
        async with conversation(sim) as c:
            await c.wait_type("audio")
            await sim.stop()
            await c.wait_closed()
            assert c.ws.close_code == 1001
        assert sim.conversations[0].end_reason == "server_stopped"

    run(go())


def test_missing_espeak_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(speech.ESPEAK_ENV, "/nonexistent/espeak-ng")
    with pytest.raises(SpeechUnavailableError, match="espeak-ng"):
        run(Simulator(quick()).start())


def test_cli() -> None:
    ns = build_parser().parse_args(
        [
            "--reply",
            "A",
            "--reply",
            "B",
            "--end-after-turns",
            "3",
            "--no-interrupt-on-speech",
            "--tool-call",
            '{"tool_name": "t"}',
            "--max-duration-s",
            "none",
            "--close-code",
            "1011",
        ]
    )
    sc = scenario_from_args(ns)
    assert sc.replies == ["A", "B"] and sc.end_after_turns == 3
    assert sc.interrupt_on_speech is False and sc.tool_calls == [{"tool_name": "t"}]
    assert sc.max_duration_s is None and sc.close_code == 1011
    assert scenario_from_args(build_parser().parse_args([])) == Scenario()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-m", "convai.sim", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    for option in ("--signed-url-status", "--drop-tcp-after-s", "--late-stale-audio", "--port"):
        assert option in out
