"""Session tests against a small in-test ConvAI service on real loopback sockets: an
aiohttp signed-URL endpoint and a websockets agent whose behaviour each test scripts.

No sleeps decide an outcome: the scripted agent waits for the client's frames, and the
test side waits for conditions (``until``) with a deadline."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from convai import protocol as p
from convai.session import (
    MAX_QUEUED_PONGS,
    MAX_TOOL_CALLS,
    AgentConfig,
    CallInfo,
    Phase,
    Session,
    SessionResult,
    Started,
)
from convai.sim.server import shutdown_timeout
from convai.tools import ToolRegistry

API_KEY = "sk_test_0123456789abcdefSECRETKEY"
SIGNATURE = "sigZZ_9f8e7d6c5b4a39281706"
AGENT_ID = "agent_7801k2test"
LOG_NAME = "test.convai.session"
TEST_TIMEOUT = 5.0

Json = dict[str, Any]
AgentScript = Callable[[ServerConnection, "FakeService"], Awaitable[None]]
HttpScript = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------- server-side messages


def meta(fmt_in: str = "ulaw_8000", fmt_out: str = "ulaw_8000") -> str:
    return json.dumps(
        {
            "conversation_initiation_metadata_event": {
                "conversation_id": "conv_test_1",
                "agent_output_audio_format": fmt_out,
                "user_input_audio_format": fmt_in,
            },
            "type": "conversation_initiation_metadata",
        }
    )


def audio(event_id: int, data: bytes) -> str:
    ev = {"audio_base_64": base64.b64encode(data).decode(), "event_id": event_id}
    return json.dumps({"audio_event": ev, "type": "audio"})


def interruption(event_id: int) -> str:
    return json.dumps({"interruption_event": {"event_id": event_id}, "type": "interruption"})


def ping(event_id: int, ping_ms: int | None) -> str:
    return json.dumps({"ping_event": {"event_id": event_id, "ping_ms": ping_ms}, "type": "ping"})


def tool_call(name: str, call_id: str, params: Json, expects: bool = True) -> str:
    ev = {"tool_name": name, "tool_call_id": call_id, "parameters": params}
    return json.dumps(
        {"client_tool_call": {**ev, "expects_response": expects}, "type": "client_tool_call"}
    )


def error(error_type: str, code: int, message: str = "m") -> str:
    ev = {"code": code, "message": message, "error_type": error_type}
    return json.dumps({"error_event": ev, "type": "error"})


END_CALL = json.dumps(
    {
        "agent_tool_response": {
            "tool_name": "end_call",
            "tool_call_id": "t1",
            "tool_type": "system",
            "is_error": False,
        },
        "type": "agent_tool_response",
    }
)


# ---------------------------------------------------------------- the fake service


@dataclass
class FakeService:
    agent: AgentScript
    http: list[HttpScript] = field(default_factory=list)  # one per request, then default
    http_requests: list[web.Request] = field(default_factory=list)
    frames: list[Json] = field(default_factory=list)  # every frame the client sent
    client_close_code: int | None = None
    connections: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    ws_port: int = 0
    http_port: int = 0
    signed_url_override: str | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/convai/conversation/get-signed-url"

    @property
    def signed_url(self) -> str:
        if self.signed_url_override is not None:
            return self.signed_url_override
        return (
            f"ws://127.0.0.1:{self.ws_port}/v1/convai/conversation"
            f"?agent_id={AGENT_ID}&conversation_signature={SIGNATURE}"
        )

    async def _http(self, request: web.Request) -> web.StreamResponse:
        self.http_requests.append(request)
        if len(self.http_requests) <= len(self.http):
            return await self.http[len(self.http_requests) - 1](request)
        return web.json_response({"signed_url": self.signed_url})

    async def _ws(self, conn: ServerConnection) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionClosed):
            await self.agent(conn, self)
        rcvd = conn.protocol.close_rcvd
        if rcvd is not None:
            self.client_close_code = rcvd.code

    async def recv(self, conn: ServerConnection, *, audio_ok: bool = True) -> Json:
        """The client's next frame (recorded); with ``audio_ok=False``, skip audio chunks."""
        while True:
            msg: Json = json.loads(await conn.recv())
            self.frames.append(msg)
            if audio_ok or "user_audio_chunk" not in msg:
                return msg

    async def drain(self, conn: ServerConnection) -> None:
        """Record frames until the client closes."""
        try:
            while True:
                await self.recv(conn)
        except ConnectionClosed:
            pass

    async def __aenter__(self) -> FakeService:
        app = web.Application()
        app.router.add_get("/v1/convai/conversation/get-signed-url", self._http)
        on_runner, on_site = shutdown_timeout(0.1)
        self._runner = web.AppRunner(app, access_log=None, **on_runner)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, **on_site)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        ws_log = logging.getLogger("test.fake.ws")
        self._ws_server = await serve(self._ws, "127.0.0.1", 0, logger=ws_log, compression=None)
        self.ws_port = next(iter(self._ws_server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        self._ws_server.close()
        await self._ws_server.wait_closed()
        await self._runner.cleanup()

    def audio_frames(self) -> list[bytes]:
        return [
            base64.b64decode(f["user_audio_chunk"]) for f in self.frames if "user_audio_chunk" in f
        ]

    def control_frames(self) -> list[Json]:
        return [f for f in self.frames if "user_audio_chunk" not in f]


class Recorder:
    def __init__(self) -> None:
        self.started: list[Started] = []
        self.audio: list[tuple[int, bytes]] = []
        self.interrupts: list[int] = []
        self.events: list[p.Event] = []
        self.on_started_hook: Callable[[], None] | None = None

    def on_started(self, started: Started) -> None:
        self.started.append(started)
        if self.on_started_hook:
            self.on_started_hook()

    def on_audio(self, event_id: int, audio: bytes) -> None:
        self.audio.append((event_id, audio))

    def on_interruption(self, event_id: int) -> None:
        self.interrupts.append(event_id)

    def on_event(self, event: p.Event) -> None:
        self.events.append(event)


async def until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait for a condition (a wait, never an assertion by itself)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.002)


@dataclass
class Outcome:
    result: SessionResult
    rec: Recorder
    svc: FakeService
    session: Session


Driver = Callable[[Session, Recorder, FakeService], Awaitable[None]]


def run_session(
    agent: AgentScript,
    *,
    http: list[HttpScript] | None = None,
    driver: Driver | None = None,
    tools: ToolRegistry | None = None,
    call: CallInfo | None = None,
    prepare: Callable[[FakeService], None] | None = None,
    session_kw: dict[str, Any] | None = None,
    **config_kw: Any,
) -> Outcome:
    async def main() -> Outcome:
        async with asyncio.timeout(TEST_TIMEOUT), FakeService(agent, http or []) as svc:
            if prepare:
                prepare(svc)
            config = AgentConfig(
                name="sales",
                api_key=API_KEY,
                signed_url_endpoint=svc.endpoint,
                agent_id=AGENT_ID,
                http_retry_backoff=0.01,
            )
            config = replace(config, **config_kw)
            rec = Recorder()
            session = Session(
                config,
                call or CallInfo("PJSIP/trunk-00000001", caller_number="+14155550123"),
                rec,
                tools=tools,
                log=logging.getLogger(LOG_NAME),
                **(session_kw or {}),
            )
            run = asyncio.ensure_future(session.run())
            if driver is not None:
                await driver(session, rec, svc)
            result = await run
            return Outcome(result, rec, svc, session)

    return asyncio.run(main())


# ---------------------------------------------------------------- agent scripts


async def greet_and_close(conn: ServerConnection, svc: FakeService) -> None:
    await svc.recv(conn)
    await conn.send(meta())
    await conn.close(1000)


async def wait_for_client_close(conn: ServerConnection, svc: FakeService) -> None:
    await svc.recv(conn)
    await conn.send(meta())
    await svc.drain(conn)


def closing_with(*frames: str, code: int | None, reason: str = "") -> AgentScript:
    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        for frame in frames:
            await conn.send(frame)
        if code is None:
            conn.transport.abort()  # TCP drop: no close frame
        else:
            await conn.close(code, reason)

    return agent


def never_called(conn: ServerConnection, svc: FakeService) -> Awaitable[None]:
    raise AssertionError("the WebSocket must not be reached")


# ---------------------------------------------------------------- signed URL


def status_reply(status: int, body: Any) -> HttpScript:
    async def reply(request: web.Request) -> web.StreamResponse:
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    return reply


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}},
            "HTTP 401 (invalid_api_key: Invalid API key); the API key was rejected",
        ),
        (403, {"detail": {"status": "missing_permissions"}}, "HTTP 403 (missing_permissions)"),
        (404, {"detail": "Agent not found"}, "HTTP 404 (Agent not found); agent not found"),
        (
            422,
            {
                "detail": [
                    {"loc": ["query", "agent_id"], "msg": "Field required", "type": "missing"}
                ]
            },
            "HTTP 422 (query.agent_id: Field required)",
        ),
        (400, "plain text oops", "HTTP 400 (plain text oops)"),
    ],
)
def test_signed_url_client_errors_fail_without_retry(status: int, body: Any, expected: str) -> None:
    out = run_session(never_called, http=[status_reply(status, body)])
    assert out.result.status == "FAILED"
    assert out.result.reason is p.EndReason.SIGNED_URL_FAILED
    assert expected in out.result.detail
    assert "agent [sales]" in out.result.detail and "section [sales]" in out.result.detail
    assert len(out.svc.http_requests) == 1
    assert out.svc.connections == 0
    assert out.rec.started == []


def test_signed_url_request_shape_and_retry_on_500() -> None:
    out = run_session(greet_and_close, http=[status_reply(500, {"detail": "boom"})])
    assert out.result.status == "COMPLETED", out.result
    assert len(out.svc.http_requests) == 2
    for req in out.svc.http_requests:
        assert req.headers["xi-api-key"] == API_KEY
        assert req.query["agent_id"] == AGENT_ID


def test_signed_url_gives_up_after_retries() -> None:
    out = run_session(never_called, http=[status_reply(503, "busy")] * 3)
    assert out.result.reason is p.EndReason.SIGNED_URL_FAILED
    assert "after 3 attempt(s): HTTP 503" in out.result.detail
    assert len(out.svc.http_requests) == 3


def test_signed_url_timeout() -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(TEST_TIMEOUT)
        return web.json_response({})

    out = run_session(never_called, http=[slow, slow], http_timeout=0.1, http_retries=1)
    assert out.result.reason is p.EndReason.SIGNED_URL_FAILED
    assert "no answer within 0.1 s" in out.result.detail
    assert len(out.svc.http_requests) == 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("not json{", "not JSON"),
        ({"url": "x"}, "has no signed_url"),
        ({"signed_url": 5}, "has no signed_url"),
        ({"signed_url": "ftp://example.com/x"}, "not a WebSocket URL"),
    ],
)
def test_signed_url_bad_body(body: Any, expected: str) -> None:
    out = run_session(never_called, http=[status_reply(200, body)])
    assert out.result.reason is p.EndReason.SIGNED_URL_FAILED
    assert expected in out.result.detail


def test_signed_url_network_error_is_retried() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/get-signed-url"
    out = run_session(never_called, signed_url_endpoint=dead, http_retries=1)
    assert out.result.reason is p.EndReason.SIGNED_URL_FAILED
    assert "after 2 attempt(s)" in out.result.detail


def test_missing_api_key() -> None:
    out = run_session(never_called, api_key="")
    assert out.result.reason is p.EndReason.SIGNED_URL_FAILED
    assert "elevenlabs_api_key is not set" in out.result.detail


def test_redirect_is_not_followed() -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://127.0.0.1:1/steal")

    out = run_session(never_called, http=[redirect])
    assert out.result.reason is p.EndReason.SIGNED_URL_FAILED
    assert "HTTP 302" in out.result.detail


# ---------------------------------------------------------------- connect


def test_connect_refused_upgrade() -> None:
    def prepare(svc: FakeService) -> None:
        svc.signed_url_override = (
            f"ws://127.0.0.1:{svc.http_port}/nope?conversation_signature={SIGNATURE}"
        )

    out = run_session(never_called, prepare=prepare)
    assert out.result.reason is p.EndReason.CONNECT_FAILED
    assert "cannot connect to ws://127.0.0.1" in out.result.detail
    assert SIGNATURE not in out.result.detail


def test_connect_to_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def prepare(svc: FakeService) -> None:
        svc.signed_url_override = f"ws://127.0.0.1:{port}/c?conversation_signature={SIGNATURE}"

    out = run_session(never_called, prepare=prepare)
    assert out.result.status == "FAILED"
    assert out.result.reason is p.EndReason.CONNECT_FAILED


def test_no_metadata_times_out() -> None:
    async def silent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.drain(conn)

    out = run_session(silent, connect_timeout=0.2)
    assert out.result.reason is p.EndReason.CONNECT_FAILED
    assert "no conversation_initiation_metadata within 0.2 s" in out.result.detail
    assert out.svc.client_close_code == 1000


def test_unsupported_format() -> None:
    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta("pcm_44100", "ulaw_8000"))
        await svc.drain(conn)

    out = run_session(agent, session_kw={"supported_formats": ["ulaw_8000", "pcm_16000"]})
    assert out.result.status == "FAILED"
    assert out.result.reason is p.EndReason.UNSUPPORTED_FORMAT
    assert "pcm_44100" in out.result.detail
    assert out.rec.started == []
    assert out.svc.client_close_code == 1000


# ---------------------------------------------------------------- the conversation


def test_initiation_first_with_dynamic_variables_and_overrides() -> None:
    out = run_session(
        greet_and_close,
        send_caller_number=True,
        dynamic_variables={"tier": "gold", "system__caller_id": "x"},
        overrides={"agent": {"first_message": "Hello"}},
    )
    assert out.result.status == "COMPLETED"
    assert out.result.reason is p.EndReason.COMPLETED
    assert out.result.conversation_id == "conv_test_1"
    assert out.svc.frames[0] == {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {"agent": {"first_message": "Hello"}},
        "dynamic_variables": {
            "tier": "gold",
            "caller_number": "+14155550123",
            "caller_id": "+14155550123",
        },
        "user_id": "+14155550123",
    }
    assert out.rec.started == [Started("conv_test_1", "ulaw_8000", "ulaw_8000")]
    assert out.session.started_at is not None


def test_initiation_without_caller_number() -> None:
    out = run_session(greet_and_close, call=CallInfo("PJSIP/x-1", caller_number="+1555"))
    assert out.svc.frames[0] == {"type": "conversation_initiation_client_data"}


def test_withheld_caller_number_is_unknown() -> None:
    out = run_session(greet_and_close, send_caller_number=True, call=CallInfo("PJSIP/x-1"))
    assert out.svc.frames[0]["dynamic_variables"] == {
        "caller_number": "unknown",
        "caller_id": "unknown",
    }
    assert "user_id" not in out.svc.frames[0]


def test_ping_pong_echo() -> None:
    pongs: list[Json] = []

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        for event_id, ms in ((7, None), (8, 42), (1234567, 5)):
            await conn.send(ping(event_id, ms))
            pongs.append(await svc.recv(conn, audio_ok=False))
        await conn.close(1000)

    out = run_session(agent)
    assert pongs == [
        {"type": "pong", "event_id": 7},
        {"type": "pong", "event_id": 8},
        {"type": "pong", "event_id": 1234567},
    ]
    assert out.session.ping_rtt_ms == 5.0
    assert out.result.reason is p.EndReason.COMPLETED


def test_audio_and_interruption_equal_older_late_ids() -> None:
    """The session hands over every chunk and interruption in order, with its id: which of
    them plays is the down ring's decision (test_ring.py: the rule, as a property)."""
    frames = [
        audio(1, b"\x01" * 160),  # plays (before any interruption)
        audio(2, b"\x02" * 160),  # plays
        interruption(3),
        audio(2, b"\x22" * 160),  # late and older than 3: stale
        audio(3, b"\x03" * 160),  # equal to the interruption's id: plays
        audio(4, b"\x04" * 80),  # newer: plays
        interruption(2),  # a lower id never lowers the rule
        audio(2, b"\x2f" * 160),  # still stale
        audio(5, b""),  # empty: nothing to play
    ]
    out = run_session(closing_with(*frames, END_CALL, code=1000))
    assert out.rec.audio == [
        (1, b"\x01" * 160),
        (2, b"\x02" * 160),
        (2, b"\x22" * 160),
        (3, b"\x03" * 160),
        (4, b"\x04" * 80),
        (2, b"\x2f" * 160),
    ]
    assert out.rec.interrupts == [3, 2]
    assert out.session.interruptions == 2
    assert out.session.bytes_down == 160 * 5 + 80
    assert out.result.status == "COMPLETED"
    assert out.result.reason is p.EndReason.AGENT_ENDED_CALL
    assert out.result.detail == "the agent ended the call"


def test_caller_audio_is_chunked_at_buffer_ms() -> None:
    frame = bytes(range(160))  # one 20 ms ulaw frame

    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        await until(lambda: bool(rec.started))
        for _ in range(11):
            session.feed_caller_audio(frame)
        assert session.bytes_up == 0  # 220 ms < 240 ms: nothing sent yet
        session.feed_caller_audio(frame)  # 240 ms: one chunk
        for _ in range(23):  # 460 ms more: one more chunk, 220 ms left over
            session.feed_caller_audio(frame)
        await until(lambda: session.bytes_up == 2 * 1920)
        session.hangup()

    out = run_session(wait_for_client_close, driver=driver)
    assert out.svc.audio_frames() == [frame * 12, frame * 12]
    assert out.result.status == "HANGUP"


def test_flush_sends_the_partial_chunk_at_once_then_chunks_count_afresh() -> None:
    """The end of the caller's speech (flush, from c/call.c's energy check) sends what is
    left over as a short chunk at once; the next chunks are whole buffer_ms ones again."""
    frames = [bytes([i]) * 160 for i in range(40)]

    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        await until(lambda: bool(rec.started))
        for f in frames[:17]:  # one 240 ms chunk, 100 ms over
            session.feed_caller_audio(f)
        session.feed_caller_audio(frames[17], flush=True)  # 120 ms left: sent now
        await until(lambda: session.bytes_up == 1920 + 960)
        session.feed_caller_audio(b"", flush=True)  # nothing held: nothing sent
        for f in frames[18:30]:  # a whole chunk from the flush on
            session.feed_caller_audio(f)
        await until(lambda: session.bytes_up == 2 * 1920 + 960)
        session.hangup()

    out = run_session(wait_for_client_close, driver=driver)
    assert out.svc.audio_frames() == [
        b"".join(frames[:12]),
        b"".join(frames[12:18]),
        b"".join(frames[18:30]),
    ]


def test_caller_audio_chunking_pcm_16000_100ms() -> None:
    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta("pcm_16000", "pcm_16000"))
        await svc.drain(conn)

    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        await until(lambda: bool(rec.started))
        session.feed_caller_audio(b"\x01\x00" * 4000)  # 250 ms
        await until(lambda: session.bytes_up == 2 * 3200)
        session.hangup()

    out = run_session(agent, driver=driver, audio_frames_buffer_ms=100)
    assert [len(c) for c in out.svc.audio_frames()] == [3200, 3200]


def test_audio_before_start_is_buffered_newest_second_kept() -> None:
    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        for i in range(150):  # 3 s of 20 ms frames before the conversation starts
            session.feed_caller_audio(bytes([i]) * 160)
        await until(lambda: session.bytes_up == 4 * 1920)
        session.hangup()

    out = run_session(wait_for_client_close, driver=driver)
    sent = b"".join(out.svc.audio_frames())
    newest_second = b"".join(bytes([i]) * 160 for i in range(100, 150))
    assert sent == newest_second[: 4 * 1920]


def test_client_tools_known_unknown_and_fire_and_forget() -> None:
    tools = ToolRegistry()
    seen: list[p.ClientToolCall] = []

    @tools.tool("transfer_call")
    async def transfer(call: p.ClientToolCall) -> object:
        seen.append(call)
        return {"status": "transferred", "to": call.parameters["destination"]}

    @tools.tool("broken")
    def broken(call: p.ClientToolCall) -> object:
        raise RuntimeError("no trunk")

    @tools.tool("note")
    def note(call: p.ClientToolCall) -> object:
        seen.append(call)
        return None

    results: list[Json] = []

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        await conn.send(tool_call("note", "c0", {}, expects=False))
        await conn.send(tool_call("transfer_call", "c1", {"destination": "+1555"}))
        await conn.send(tool_call("open_pod_bay_doors", "c2", {}))
        await conn.send(tool_call("broken", "c3", {}))
        for _ in range(3):
            results.append(await svc.recv(conn, audio_ok=False))
        await conn.close(1000)

    out = run_session(agent, tools=tools)
    by_id = {r["tool_call_id"]: r for r in results}
    assert by_id["c1"] == {
        "type": "client_tool_result",
        "tool_call_id": "c1",
        "result": '{"status": "transferred", "to": "+1555"}',
        "is_error": False,
    }
    assert by_id["c2"]["is_error"] is True and "not available" in by_id["c2"]["result"]
    assert by_id["c3"] == {
        "type": "client_tool_result",
        "tool_call_id": "c3",
        "result": "RuntimeError: no trunk",
        "is_error": True,
    }
    assert [c.tool_name for c in seen] == ["note", "transfer_call"]
    assert "c0" not in by_id
    assert out.result.status == "COMPLETED"


def test_unknown_tool_without_registry() -> None:
    got: list[Json] = []

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        await conn.send(tool_call("anything", "c9", {"a": 1}))
        got.append(await svc.recv(conn, audio_ok=False))
        await conn.close(1000)

    run_session(agent)
    assert got[0]["tool_call_id"] == "c9" and got[0]["is_error"] is True


def _dtmf_messages(keys_before: str, keys_after: str, timeout: float, count: int) -> list[Json]:
    messages: list[Json] = []

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        for _ in range(count):
            messages.append(await svc.recv(conn, audio_ok=False))
        await conn.close(1000)

    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        for d in keys_before:
            session.send_dtmf(d)  # before the start: kept until the conversation starts
        await until(lambda: bool(rec.started))
        for d in keys_after:
            session.send_dtmf(d)

    out = run_session(agent, driver=driver, session_kw={"dtmf_interdigit_timeout": timeout})
    assert out.result.status == "COMPLETED"
    return messages


def test_dtmf_digits_grouped_into_one_user_message() -> None:
    # A long inter-digit timeout, so only "#" can end the entry: no race with the scheduler.
    assert _dtmf_messages("9", "12x#", timeout=30.0, count=1) == [
        {"type": "user_message", "text": 'The caller pressed "912#" on the phone keypad.'},
    ]


def test_dtmf_entry_ends_after_the_interdigit_timeout() -> None:
    assert _dtmf_messages("", "5", timeout=0.05, count=1) == [
        {"type": "user_message", "text": 'The caller pressed "5" on the phone keypad.'},
    ]


# ---------------------------------------------------------------- endings


def test_abrupt_tcp_drop_is_network_loss() -> None:
    out = run_session(closing_with(audio(1, b"\xff" * 160), code=None))
    assert out.result.status == "FAILED"
    assert out.result.reason is p.EndReason.NETWORK_LOSS
    assert out.result.close_code is None
    assert out.result.detail == "connection lost without a close frame"
    assert out.rec.audio == [(1, b"\xff" * 160)]


def test_oversize_message_names_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11 (2): a message over max_message_bytes is closed with 1009 by websockets; the
    result and the log name that, not a network loss."""

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        await conn.send(audio(1, b"\xff" * 160))
        await conn.send(audio(2, b"\xff" * 8000))  # ~10.7 kB of JSON, over the 8 KiB limit
        await svc.drain(conn)

    caplog.set_level(logging.DEBUG, logger=LOG_NAME)
    out = run_session(agent, max_message_bytes=8192)
    assert (out.result.status, out.result.reason) == ("FAILED", p.EndReason.MESSAGE_TOO_BIG)
    assert out.result.close_code == 1009
    assert out.result.detail.startswith("the server sent a message over the 8192-byte limit")
    assert out.svc.client_close_code == 1009
    assert out.rec.audio == [(1, b"\xff" * 160)]
    (end,) = [r.getMessage() for r in caplog.records if "ended:" in r.getMessage()]
    assert "FAILED/message_too_big (close code 1009)" in end and "8192-byte limit" in end
    assert "without a close frame" not in caplog.text


@pytest.mark.parametrize(
    ("frames", "code", "status", "reason"),
    [
        ((), 1000, "COMPLETED", p.EndReason.COMPLETED),
        ((), 1002, "FAILED", p.EndReason.SERVER_ERROR),
        ((), 1008, "FAILED", p.EndReason.POLICY_VIOLATION),
        ((), 1011, "FAILED", p.EndReason.SERVER_ERROR),
        ((error("max_duration_exceeded", 1000),), 1000, "COMPLETED", p.EndReason.MAX_DURATION),
        ((error("transport_receive_timeout", 1002),), 1002, "FAILED", p.EndReason.TIMEOUT),
        ((error("override_error", 1008),), 1008, "FAILED", p.EndReason.POLICY_VIOLATION),
        ((error("llm_error", 1002),), 1002, "FAILED", p.EndReason.SERVER_ERROR),
    ],
)
def test_close_codes(frames: tuple[str, ...], code: int, status: str, reason: p.EndReason) -> None:
    out = run_session(closing_with(*frames, code=code, reason="bye"))
    assert (out.result.status, out.result.reason, out.result.close_code) == (status, reason, code)
    assert out.result.conversation_id == "conv_test_1"
    if not frames:
        assert out.result.detail == f"server closed the connection with {code} (bye)"
    else:
        assert out.result.detail.startswith(json.loads(frames[0])["error_event"]["error_type"])


def test_error_before_metadata() -> None:
    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(error("missing_dynamic_variable", 1008, "caller_number is required"))
        await conn.close(1008)

    out = run_session(agent)
    assert out.result.reason is p.EndReason.POLICY_VIOLATION
    assert out.result.detail == "missing_dynamic_variable: caller_number is required"
    assert out.rec.started == []


def test_hangup_closes_with_1000() -> None:
    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        await until(lambda: bool(rec.started))
        session.hangup()
        session.hangup()  # idempotent
        session.feed_caller_audio(b"\xff" * 4000)  # ignored after hangup

    out = run_session(wait_for_client_close, driver=driver)
    assert out.result.status == "HANGUP"
    assert out.result.reason is p.EndReason.CALLER_HANGUP
    assert out.result.close_code == 1000
    assert out.svc.client_close_code == 1000
    assert out.svc.audio_frames() == []


def test_hangup_from_on_started() -> None:
    def prepare_hook(session: Session, rec: Recorder) -> None:
        rec.on_started_hook = session.hangup

    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        prepare_hook(session, rec)

    out = run_session(wait_for_client_close, driver=driver)
    assert out.result.status == "HANGUP"
    assert out.svc.client_close_code == 1000


def test_hangup_during_signed_url_request() -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(TEST_TIMEOUT)
        return web.json_response({})

    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        await until(lambda: bool(svc.http_requests))
        session.hangup()

    out = run_session(never_called, http=[hang], driver=driver)
    assert (out.result.status, out.result.reason) == ("HANGUP", p.EndReason.CALLER_HANGUP)
    assert out.svc.connections == 0


def test_hangup_before_run() -> None:
    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        pass

    async def main() -> SessionResult:
        config = AgentConfig("sales", API_KEY, "http://127.0.0.1:1/x", AGENT_ID)
        session = Session(config, CallInfo("PJSIP/x-1"), Recorder())
        session.hangup()
        return await session.run()

    result = asyncio.run(main())
    assert (result.status, result.reason, result.close_code) == (
        "HANGUP",
        p.EndReason.CALLER_HANGUP,
        None,
    )


def test_shutdown_closes_with_1001() -> None:
    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        await until(lambda: bool(rec.started))
        session.shutdown()

    out = run_session(wait_for_client_close, driver=driver)
    assert (out.result.status, out.result.reason) == ("FAILED", p.EndReason.SHUTDOWN)
    assert out.svc.client_close_code == 1001


def test_cancel_closes_the_socket_then_raises() -> None:
    closed: list[int | None] = []

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        await svc.drain(conn)
        closed.append(
            svc.client_close_code
            if conn.protocol.close_rcvd is None
            else conn.protocol.close_rcvd.code
        )

    async def main() -> None:
        async with asyncio.timeout(TEST_TIMEOUT), FakeService(agent) as svc:
            config = AgentConfig("sales", API_KEY, svc.endpoint, AGENT_ID)
            rec = Recorder()
            session = Session(config, CallInfo("PJSIP/x-1"), rec)
            task = asyncio.ensure_future(session.run())
            await until(lambda: bool(rec.started))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await until(lambda: bool(closed))

    asyncio.run(main())
    assert closed == [1001]


def test_malformed_frames_and_handler_errors_do_not_end_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    class Fragile(Recorder):
        def on_audio(self, event_id: int, audio: bytes) -> None:
            super().on_audio(event_id, audio)
            raise ValueError("host bug")

    frames = [
        "{nope",
        '{"type":"audio","audio_event":{"audio_base_64":"@@","event_id":1}}',
        audio(1, b"ok"),
    ]
    out_holder: list[Recorder] = []

    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        out_holder.append(rec)

    fragile = Fragile()

    async def main() -> SessionResult:
        async with (
            asyncio.timeout(TEST_TIMEOUT),
            FakeService(closing_with(*frames, code=1000)) as svc,
        ):
            config = AgentConfig("sales", API_KEY, svc.endpoint, AGENT_ID)
            session = Session(
                config, CallInfo("PJSIP/x-1"), fragile, log=logging.getLogger(LOG_NAME)
            )
            return await session.run()

    result = asyncio.run(main())
    assert result.reason is p.EndReason.COMPLETED
    assert fragile.audio == [(1, b"ok")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("skipping malformed server message" in w for w in warnings) == 2
    assert any(
        "error in on_audio" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
    )


# ---------------------------------------------------------------- logs and secrets


def test_debug_logs_and_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    vad = json.dumps({"vad_score_event": {"vad_score": 0.847}, "type": "vad_score"})
    frames = [
        vad,
        audio(42, b"a"),
        audio(45, b"b"),
        audio(46, b"c"),
        interruption(46),
        audio(45, b"d"),
    ]
    out = run_session(closing_with(*frames, code=1000), send_caller_number=True)
    assert out.result.status == "COMPLETED"
    lines = [r.getMessage() for r in caplog.records if r.name == LOG_NAME]
    text = "\n".join(lines)
    assert "PJSIP/trunk-00000001 [sales]: VAD Score: 0.847" in text
    assert "HIGH voice activity detected (score=0.847)" in text
    assert "PJSIP/trunk-00000001 [sales]: interruption, event_id=46" in text
    assert "conversation conv_test_1 started (input ulaw_8000, output ulaw_8000)" in text
    assert "conversation conv_test_1 ended: COMPLETED/completed (close code 1000)" in text
    assert "<redacted>" in text  # the connected-to line shows the URL, redacted
    client_side = [r for r in caplog.records if not r.name.startswith(("test.fake", "aiohttp"))]
    everything = "\n".join(r.getMessage() for r in client_side)
    assert API_KEY not in everything and SIGNATURE not in everything


def test_secrets_never_in_logs_or_results_on_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    results: list[SessionResult] = []
    # An unparseable port makes websockets raise InvalidURI, whose text quotes the URL.
    for url in (
        f"ws://127.0.0.1:notaport/c?conversation_signature={SIGNATURE}",
        f"ws://127.0.0.1:1/c?token={SIGNATURE}",
    ):

        def prepare(svc: FakeService, url: str = url) -> None:
            svc.signed_url_override = url

        results.append(run_session(never_called, prepare=prepare).result)
    leak = json.dumps({"detail": {"status": "invalid_api_key", "message": f"bad key {API_KEY}"}})
    results.append(run_session(never_called, http=[status_reply(401, leak)]).result)
    assert [r.reason for r in results] == [
        p.EndReason.CONNECT_FAILED,
        p.EndReason.CONNECT_FAILED,
        p.EndReason.SIGNED_URL_FAILED,
    ]
    everything = "\n".join(r.getMessage() for r in caplog.records) + "\n".join(
        r.detail for r in results
    )
    assert SIGNATURE not in everything
    assert API_KEY not in everything
    assert "<redacted>" in results[0].detail


def test_config_repr_hides_the_key() -> None:
    config = AgentConfig("sales", API_KEY, "https://api.elevenlabs.io/x", AGENT_ID)
    assert API_KEY not in repr(config) and API_KEY not in str(config)
    assert "api_key='****TKEY'" in repr(config)
    assert "api_key='****'," in repr(AgentConfig("s", "short", "e", "a"))


def test_redact_url() -> None:
    from convai.session import redact_url

    assert redact_url(
        f"wss://api.elevenlabs.io/v1/c?agent_id=a&conversation_signature={SIGNATURE}"
    ) == ("wss://api.elevenlabs.io/v1/c?<redacted>")
    assert redact_url("wss://user:pw@[::1]:8443/c") == "wss://[::1]:8443/c"
    assert redact_url("ws://h:notaport/c?x=1") == "<redacted>"


def test_tool_registry_results_and_timeout() -> None:
    tools = ToolRegistry(timeout=0.05)

    async def slow(call: p.ClientToolCall) -> object:
        await asyncio.sleep(TEST_TIMEOUT)
        return "late"

    tools.register("slow", slow)
    tools.register("text", lambda call: "plain")
    tools.register("obj", lambda call: {"n": 1, "é": "ü"})

    def call(name: str) -> p.ClientToolCall:
        return p.ClientToolCall(name, "c", {}, None, True)

    async def main() -> list[tuple[str, bool]]:
        outs = [await tools.call(call(n)) for n in ("slow", "text", "obj", "none")]
        return [(o.result, o.is_error) for o in outs]

    assert asyncio.run(main()) == [
        ("Client tool 'slow' timed out", True),
        ("plain", False),
        ('{"n": 1, "é": "ü"}', False),
        ("Client tool 'none' is not available", True),
    ]
    assert tools.names() == ["obj", "slow", "text"] and "text" in tools


# ---------------------------------------------------------------- phases (lifecycle.py)


def test_phases_of_a_conversation(caplog: pytest.LogCaptureFixture) -> None:
    """CONNECTING until the metadata, TALKING while it lasts, DONE when run() returns; each
    move is logged once, and the end is decided once."""
    caplog.set_level(logging.DEBUG, logger=LOG_NAME)
    seen: list[Phase] = []

    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        seen.append(session.phase)
        rec.on_started_hook = lambda: seen.append(session.phase)

    out = run_session(closing_with(audio(1, b"\xff" * 160), code=1000), driver=driver)
    assert seen == [Phase.CONNECTING, Phase.TALKING]
    assert out.session.phase is Phase.DONE
    moves = [r.getMessage() for r in caplog.records if " -> " in r.getMessage()]
    assert [m.split(": ", 1)[1] for m in moves] == [
        "connecting -> talking",
        "talking -> closing (completed)",
        "closing -> done",
    ]
    out.session.hangup()  # after the end: changes nothing
    assert out.session.phase is Phase.DONE


def test_tcp_reset_after_audio_plays_it_out() -> None:
    """Issue 11 (4): the words received before a reset are played (play_out), then FAILED."""
    words = [audio(1, b"\xff" * 8000), audio(1, b"\x7f" * 8000)]
    out = run_session(closing_with(*words, code=None))
    assert (out.result.status, out.result.reason) == ("FAILED", p.EndReason.NETWORK_LOSS)
    assert out.result.play_out is True
    assert out.rec.audio == [(1, b"\xff" * 8000), (1, b"\x7f" * 8000)]


def test_no_play_out_after_a_hangup_or_before_the_start() -> None:
    async def driver(session: Session, rec: Recorder, svc: FakeService) -> None:
        await until(lambda: bool(rec.started))
        session.hangup()

    assert run_session(wait_for_client_close, driver=driver).result.play_out is False

    async def refuse(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.close(1008)

    out = run_session(refuse)
    assert (out.result.reason, out.result.play_out) == (p.EndReason.POLICY_VIOLATION, False)


def test_malformed_metadata_fails_at_once() -> None:
    """Issue 11 (3): a conversation_id with CR/LF never reaches the host, and the call does
    not wait for the metadata timeout."""
    hostile = json.loads(meta())
    hostile["conversation_initiation_metadata_event"]["conversation_id"] = "c1\r\nEvent: Forged"

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(json.dumps(hostile))
        await svc.drain(conn)

    out = run_session(agent, connect_timeout=TEST_TIMEOUT)
    assert (out.result.status, out.result.reason) == ("FAILED", p.EndReason.CONNECT_FAILED)
    assert "malformed conversation metadata" in out.result.detail
    assert "conversation_id" in out.result.detail and "\n" not in out.result.detail
    assert out.result.conversation_id is None
    assert out.rec.started == []
    assert out.svc.client_close_code == 1000
    assert not any(isinstance(e, p.ConversationInitiationMetadata) for e in out.rec.events)


def test_hostile_tool_ids_never_reach_the_tools() -> None:
    """Issue 11 (3): a tool call whose name or id fails ID_PATTERN is skipped as malformed:
    no handler runs, no result goes back, the call goes on."""
    tools = ToolRegistry()
    ran: list[str] = []
    tools.register("lookup", lambda call: ran.append(call.tool_call_id))
    results: list[Json] = []

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        await conn.send(tool_call("lookup", "c1\r\nEvent: Forged", {}))
        await conn.send(tool_call("look up", "c2", {}))
        await conn.send(tool_call("lookup", "c3", {}))
        results.append(await svc.recv(conn, audio_ok=False))
        await conn.close(1000)

    out = run_session(agent, tools=tools)
    assert ran == ["c3"]
    assert [r["tool_call_id"] for r in results] == ["c3"]
    bad = [e for e in out.rec.events if isinstance(e, p.MalformedMessage)]
    assert len(bad) == 2 and all(e.type == "client_tool_call" for e in bad)
    assert out.result.status == "COMPLETED"


def test_a_lone_surrogate_from_the_server_cannot_break_the_writer() -> None:
    """JSON lets a server send "\\ud800", a lone surrogate that UTF-8 cannot encode; a tool
    that echoes it must not crash the only sender (found while testing the writer's end)."""
    tools = ToolRegistry()
    tools.register("echo", lambda call: call.parameters["text"])
    results: list[Json] = []

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        await conn.send(tool_call("echo", "c1", {"text": "a\ud800b"}))
        results.append(await svc.recv(conn, audio_ok=False))
        await conn.send(tool_call("echo", "c2", {"text": "ok"}))
        results.append(await svc.recv(conn, audio_ok=False))
        await conn.close(1000)

    out = run_session(agent, tools=tools)
    assert [(r["tool_call_id"], r["result"]) for r in results] == [("c1", "a\ud800b"), ("c2", "ok")]
    assert (out.result.status, out.result.reason) == ("COMPLETED", p.EndReason.COMPLETED)


def test_a_tool_call_flood_is_bounded() -> None:
    """A hostile server cannot start tasks without bound: beyond MAX_TOOL_CALLS at once, a
    tool call is answered with an error at once; the running ones finish normally."""
    tools = ToolRegistry()
    release = asyncio.Event()
    started: list[str] = []

    async def slow(call: p.ClientToolCall) -> str:
        started.append(call.tool_call_id)
        await release.wait()
        return "done"

    tools.register("slow", slow)
    n = MAX_TOOL_CALLS + 4
    results: list[Json] = []

    async def agent(conn: ServerConnection, svc: FakeService) -> None:
        await svc.recv(conn)
        await conn.send(meta())
        for i in range(n):
            await conn.send(tool_call("slow", f"c{i}", {}))
        for _ in range(4):  # the refused ones come back first
            results.append(await svc.recv(conn, audio_ok=False))
        release.set()
        for _ in range(MAX_TOOL_CALLS):
            results.append(await svc.recv(conn, audio_ok=False))
        await conn.close(1000)

    out = run_session(agent, tools=tools)
    refused = [r["tool_call_id"] for r in results[:4]]
    assert refused == [f"c{i}" for i in range(MAX_TOOL_CALLS, n)]
    assert all(r["is_error"] and "Too many" in r["result"] for r in results[:4])
    assert sorted(started) == sorted(f"c{i}" for i in range(MAX_TOOL_CALLS))
    assert [r["result"] for r in results[4:]] == ["done"] * MAX_TOOL_CALLS
    assert out.result.status == "COMPLETED"


def test_pongs_for_a_stalled_socket_are_bounded() -> None:
    """A ping flood while nothing can be sent keeps only the newest MAX_QUEUED_PONGS pongs."""

    async def main() -> list[str]:
        config = AgentConfig("sales", API_KEY, "http://127.0.0.1:1/x", AGENT_ID)
        session = Session(config, CallInfo("PJSIP/x-1"), Recorder())
        for i in range(1000):
            session._process(ping(i, 5))  # no socket: nothing is sent
        return list(session._pongs)

    pongs = asyncio.run(main())
    assert [json.loads(x)["event_id"] for x in pongs] == list(range(1000 - MAX_QUEUED_PONGS, 1000))
