"""The ConvAI simulator: the server side of the ElevenLabs Conversational AI protocol on loopback.

One aiohttp application serves both the signed-URL endpoint and the agent WebSocket on one
port. It stands alone on the wire protocol (convai-protocol.md §1-§6) and deliberately
imports nothing from the client side (convai.protocol / convai.session), so it can catch their
mistakes instead of sharing them.

Per conversation: metadata, a greeting of real speech (espeak-ng), pings, vad_score from the
caller's real audio level, a reply after each caller turn, interruption when the caller talks
over the agent's playout, end_call on a keyword or after N turns, and scripted failures.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
import math
import secrets
import socket
import ssl
import string
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar
from urllib.parse import urlencode

from aiohttp import WSMessage, WSMsgType, web
from aiohttp import __version__ as _aiohttp_version

from convai import audio
from convai.sim import contract, speech

__all__ = [
    "ConversationRecord",
    "LoggedEvent",
    "Scenario",
    "SentAudio",
    "SignedUrlRequest",
    "Simulator",
]

_AIOHTTP_VERSION = tuple(int(x) for x in _aiohttp_version.split(".")[:2])


def shutdown_timeout(seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keyword arguments (for web.AppRunner, for web.TCPSite) that set the shutdown timeout:
    aiohttp < 3.9 (Debian 12's 3.8) takes it on the site, later ones on the runner (a 3.8 runner
    passes it to each connection's handler, which fails: every request is reset)."""
    if _AIOHTTP_VERSION < (3, 9):
        return {}, {"shutdown_timeout": seconds}
    return {"shutdown_timeout": seconds}, {}


log = logging.getLogger("convai.sim")

SIGNED_URL_PATH = "/v1/convai/conversation/get-signed-url"
SIGNED_URL_PATH_DEPRECATED = "/v1/convai/conversation/get_signed_url"
WS_PATH = "/v1/convai/conversation"
SIGNATURE_TTL_S = 15 * 60  # a signed URL must be used within 15 minutes (reference §1.2)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # what the official Python SDK allows
FRAME_MS = 20  # VAD analysis frame
EVENT_LOG_CAP = 20_000  # per conversation, so a long benchmark call cannot grow without bound
_ID_ALPHABET = string.digits + string.ascii_lowercase


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class Scenario:
    """Everything the simulated agent does, and every failure it can be told to produce.

    A Simulator snapshots its scenario when a WebSocket connects, so a test may change
    ``sim.scenario`` between conversations (signed-URL fields apply to the next request).
    """

    # --- agent ---
    input_format: str = field(
        default="ulaw_8000",
        metadata=_h("caller audio format announced in metadata: ulaw_8000 | pcm_8000 | pcm_16000"),
    )
    output_format: str = field(
        default="ulaw_8000",
        metadata=_h("agent audio format: ulaw_8000 | pcm_8000 | pcm_16000"),
    )
    greeting: str = field(
        default="Hello! You are talking to the ElevenLabs simulator. How can I help you today?",
        metadata=_h(
            "first message, spoken right after metadata; '' waits for the caller. "
            "A conversation_config_override agent.first_message replaces it; "
            "{{var}} takes dynamic_variables"
        ),
    )
    replies: list[str] = field(
        default_factory=lambda: [
            "I heard you. This is a simulated reply from the ConvAI simulator.",
            "Thanks. Please tell me more, or say goodbye to end the call.",
            "Understood. Is there anything else I can help you with?",
        ],
        metadata=_h("replies spoken after each caller turn, in turn, cycled"),
    )
    end_after_turns: int | None = field(
        default=None, metadata=_h("agent ends the call (farewell + end_call) after N caller turns")
    )
    end_keyword: str | None = field(
        default="goodbye",
        metadata=_h("a user_message or contextual_update containing it ends the call"),
    )
    farewell: str = field(default="Goodbye!", metadata=_h("spoken before end_call"))
    ping_interval: float = field(
        default=2.0, metadata=_h("seconds between pings (0 disables); ping_ms is the last RTT")
    )
    audio_chunk_ms: int = field(default=100, metadata=_h("audio per agent audio event"))
    burst_factor: float = field(
        default=4.0,
        metadata=_h("agent audio is sent this many times faster than real time (0: all at once)"),
    )
    silence_end_ms: int = field(default=500, metadata=_h("caller silence that ends a turn"))
    min_speech_ms: int = field(
        default=100, metadata=_h("caller speech needed before a turn (or interruption) starts")
    )
    vad_threshold_dbfs: float = field(
        default=-35.0, metadata=_h("20 ms frames louder than this are speech")
    )
    vad_interval_ms: int | None = field(
        default=100,
        metadata=_h("vad_score at most this often (caller-audio time), plus on speech changes"),
    )
    interrupt_on_speech: bool = field(
        default=True,
        metadata=_h(
            "caller speech during the agent's playout interrupts it; when off, speech that "
            "starts during playout is ignored"
        ),
    )
    reply_delay_s: float = field(default=0.0, metadata=_h("'thinking' time before each reply"))
    max_duration_s: float | None = field(
        default=None, metadata=_h("then error max_duration_exceeded and close 1000")
    )
    init_wait_s: float = field(
        default=0.5,
        metadata=_h("how long to wait for conversation_initiation_client_data (optional)"),
    )
    public_agent: bool = field(
        default=False,
        metadata=_h("accept WebSockets without conversation_signature (a public agent)"),
    )
    record_caller_audio_s: float = field(
        default=60.0, metadata=_h("raw caller audio kept per conversation (the rest is counted)")
    )
    # --- signed URL failures ---
    signed_url_status: int = field(default=200, metadata=_h("HTTP status of get-signed-url"))
    signed_url_delay: float = field(default=0.0, metadata=_h("seconds before it answers"))
    signed_url_body: str | None = field(
        default=None, metadata=_h("raw body to answer instead (e.g. invalid JSON)")
    )
    require_api_key: str | None = field(
        default=None, metadata=_h("401 invalid_api_key unless the xi-api-key header equals this")
    )
    # --- WebSocket failures ---
    close_after_s: float | None = field(
        default=None, metadata=_h("close the WebSocket with close_code after this many seconds")
    )
    close_code: int = field(default=1000, metadata=_h("code for close_after_s / error_event"))
    close_reason: str = field(default="", metadata=_h("reason for close_after_s / error_event"))
    drop_tcp_after_s: float | None = field(
        default=None, metadata=_h("abort the TCP connection (no close frame) after this")
    )
    garbage_after_s: float | None = field(
        default=None,
        metadata=_h("send garbage (bad JSON, unknown types, bad base64...) then carry on"),
    )
    error_event: dict[str, Any] | None = field(
        default=None,
        metadata=_h(
            "error event sent just before the scripted close (JSON: the error_event payload or "
            "a whole message); without close_after_s it is sent right after metadata"
        ),
    )
    reply_event_id_equals_interrupt: bool = field(
        default=True,
        metadata=_h("the reply after an interruption carries the interruption's event_id"),
    )
    late_stale_audio: bool = field(
        default=False,
        metadata=_h("after an interruption, send one more chunk of the stale reply (older id)"),
    )
    tool_calls: list[dict[str, Any]] = field(
        default_factory=list,
        metadata=_h(
            "scripted tool calls, e.g. "
            '{"tool_name":"transfer_call","parameters":{"destination":"sales"}}. '
            "Keys beyond the client_tool_call payload: after_turn (caller turn that triggers "
            "it, default 1; 0 = right after the greeting), say_before (spoken first), "
            "after_speech (send only once say_before has played out, as execution_mode "
            "post_tool_speech does), on_result / on_error (spoken after the result, {result} "
            "replaced; then the normal reply is skipped), system (send an agent_tool_response "
            "for a system tool of that name instead)"
        ),
    )
    tool_result_timeout_s: float = field(
        default=5.0, metadata=_h("wait this long for client_tool_result before replying")
    )

    # --- phases and hostile servers (tests/integration/test_faults.py) ---
    ws_handshake_delay_s: float = field(
        default=0.0, metadata=_h("hold the WebSocket upgrade this long before answering 101")
    )
    metadata_delay_s: float = field(
        default=0.0, metadata=_h("wait this long before conversation_initiation_metadata")
    )
    send_metadata: bool = field(
        default=True,
        metadata=_h("when off, never send the metadata (nor anything else): the client waits"),
    )
    stop_reading_after_s: float | None = field(
        default=None,
        metadata=_h(
            "stop reading the socket (its receive buffer shrunk to 4 KiB) so the client's TCP "
            "window fills; the agent goes on talking"
        ),
    )
    flood_audio_s: float | None = field(
        default=None,
        metadata=_h(
            "instead of the greeting, send this many seconds of agent audio (one event id) as "
            "fast as the socket takes it"
        ),
    )
    oversize_message_bytes: int | None = field(
        default=None,
        metadata=_h("right after the metadata, send one audio message of this many bytes"),
    )
    first_event_id: int = field(
        default=1, metadata=_h("the first agent event id (e.g. 2**63, or negative)")
    )
    event_id_step: int = field(
        default=1, metadata=_h("added for each new agent event id (negative: decreasing ids)")
    )
    inject: list[dict[str, Any]] = field(
        default_factory=list,
        metadata=_h(
            "messages sent verbatim inject_after_s after the metadata, e.g. an interruption "
            'for an id never used: {"interruption_event":{"event_id":999},"type":"interruption"}'
        ),
    )
    inject_after_s: float = field(default=0.5, metadata=_h("when the inject messages go"))

    def validate(self) -> None:
        for name in ("input_format", "output_format"):
            fmt = getattr(self, name)
            if fmt not in audio.FORMATS:
                raise ValueError(f"{name}={fmt!r}: expected one of {', '.join(audio.FORMATS)}")
        if self.audio_chunk_ms <= 0:
            raise ValueError("audio_chunk_ms must be positive")
        if self.silence_end_ms < FRAME_MS:
            raise ValueError(f"silence_end_ms must be at least {FRAME_MS}")
        if self.event_id_step == 0:
            raise ValueError("event_id_step must not be 0")


@dataclass(slots=True)
class LoggedEvent:
    t: float  # seconds since the WebSocket opened
    direction: str  # "in" (client → sim), "out" (sim → client) or "sim" (internal)
    type: str
    detail: str = ""
    event_id: int | None = None


@dataclass(slots=True)
class SentAudio:
    t: float
    event_id: int
    nbytes: int
    duration_ms: float
    stale: bool = False  # a late_stale_audio chunk


@dataclass(slots=True)
class SignedUrlRequest:
    t: float  # time.time()
    agent_id: str | None
    api_key: bool  # an xi-api-key header was present
    status: int


@dataclass
class ConversationRecord:
    """What one WebSocket connection received and sent. Filled in live by the simulator's loop."""

    conversation_id: str
    agent_id: str | None
    started_at: float  # time.time() when the WebSocket opened
    subprotocol: str | None = None
    init: dict[str, Any] | None = None  # parsed conversation_initiation_client_data
    caller_audio_bytes: int = 0
    caller_audio_chunks: int = 0
    caller_audio: bytearray = field(default_factory=bytearray)  # raw, input format, capped
    # (time.monotonic_ns() at arrival, bytes) of each user_audio_chunk, capped: where each
    # chunk ends in caller_audio and when it came (bench/uplink.py, the flush test).
    caller_chunks: list[tuple[int, int]] = field(default_factory=list)
    user_messages: list[str] = field(default_factory=list)
    contextual_updates: list[dict[str, Any]] = field(default_factory=list)
    user_activity: int = 0
    feedback: list[dict[str, Any]] = field(default_factory=list)
    pongs: list[int] = field(default_factory=list)  # event ids echoed by the client
    ping_rtts_ms: list[float] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # client_tool_call payloads
    tool_results: list[dict[str, Any]] = field(default_factory=list)  # client_tool_result msgs
    agent_responses: list[tuple[int, str]] = field(default_factory=list)  # (event_id, text)
    user_transcripts: list[tuple[int, str]] = field(default_factory=list)
    interruptions: list[int] = field(default_factory=list)
    vad_scores: list[float] = field(default_factory=list)
    sent_audio: list[SentAudio] = field(default_factory=list)
    invalid_frames: list[str] = field(default_factory=list)  # client frames that made no sense
    unknown_types: list[str] = field(default_factory=list)
    events: list[LoggedEvent] = field(default_factory=list)
    client_close_code: int | None = None  # when the client closed
    client_close_reason: str | None = None
    server_close_code: int | None = None  # when the simulator closed
    end_reason: str | None = None  # client_closed | end_call | max_duration | scripted_close |
    # tcp_drop | connection_lost | server_stopped | error
    ended_at: float | None = None  # time.time()
    # Messages off ElevenLabs' contract (convai.sim.contract): "in: ..." from the client,
    # "out: ..." from the simulator itself; deliberate garbage and injections are not checked.
    contract_violations: list[str] = field(default_factory=list)
    flood_sent_s: float = 0.0  # flood_audio_s: audio sent, and how long sending it took
    flood_took_s: float = 0.0

    @property
    def done(self) -> bool:
        return self.ended_at is not None

    def sent_types(self) -> list[str]:
        """Types of every message the simulator sent, in order."""
        return [e.type for e in self.events if e.direction == "out"]

    def events_of(self, type_: str, direction: str = "out") -> list[LoggedEvent]:
        return [e for e in self.events if e.type == type_ and e.direction == direction]

    def agent_audio_bytes(self, event_id: int | None = None) -> int:
        return sum(a.nbytes for a in self.sent_audio if event_id is None or a.event_id == event_id)


@dataclass(frozen=True, slots=True)
class _Chunk:
    b64: str  # encoded once, sent by every conversation that speaks the phrase
    nbytes: int
    seconds: float


@dataclass
class _Turn:
    """One agent turn being spoken (or played out by the client)."""

    event_id: int
    text: str
    chunks: tuple[_Chunk, ...]
    duration_s: float
    sent: int = 0
    sent_s: float = 0.0
    started: float | None = None  # loop time of the first chunk: the client starts playing

    def playing_until(self) -> float:
        return -math.inf if self.started is None else self.started + self.sent_s


def _new_id(prefix: str, n: int = 28) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _error_body(status: int) -> str:
    """Bodies shaped like ElevenLabs' (FastAPI) errors; only 422 is documented (reference §1.2)."""
    if status == 422:
        return _compact(
            {
                "detail": [
                    {
                        "type": "missing",
                        "loc": ["query", "agent_id"],
                        "msg": "Field required",
                        "input": None,
                    }
                ]
            }
        )
    detail = {
        401: ("invalid_api_key", "Invalid API key"),
        403: ("missing_permissions", "The API key lacks the convai_write permission"),
        404: ("agent_not_found", "Agent not found"),
        429: ("too_many_concurrent_requests", "Too many concurrent requests"),
    }.get(status, ("internal_server_error" if status >= 500 else "error", f"HTTP {status}"))
    return _compact({"detail": {"status": detail[0], "message": detail[1]}})


def _substitute(text: str, variables: dict[str, Any]) -> str:
    """Fill {{name}} placeholders from dynamic_variables, like the agent does; unknown stay."""
    for name, value in variables.items():
        text = text.replace("{{" + str(name) + "}}", "" if value is None else str(value))
    return text


def _truncate_words(text: str, fraction: float) -> str:
    words = text.split()
    return " ".join(words[: int(len(words) * max(0.0, min(1.0, fraction)))])


class Simulator:
    """A local ConvAI agent. ``async with Simulator(Scenario(...)) as sim:`` or, from sync
    code, ``with Simulator(...).run_in_thread() as sim:``."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        check_contract: bool = True,
    ) -> None:
        """``ssl_context`` (a server context, e.g. ``convai.sim.tls.server_context``) serves
        both endpoints over TLS: https for the signed URL, which then hands out wss URLs.
        ``check_contract`` validates every message both ways against ElevenLabs' AsyncAPI
        contract (``ConversationRecord.contract_violations``); off saves CPU in benchmarks."""
        self.scenario = scenario if scenario is not None else Scenario()
        self.ssl_context = ssl_context
        self.contract = contract.load() if check_contract else None
        self.scenario.validate()
        self.host = host
        self.port = port
        self.conversations: list[ConversationRecord] = []
        self.signed_url_requests: list[SignedUrlRequest] = []
        # time.time() when each request arrived (signed_url_requests logs them when answered)
        self.signed_url_arrivals: list[float] = []
        self.ws_arrivals: list[float] = []  # WebSocket upgrade requests, when they arrived
        self.ws_abandoned = 0  # upgrades the client gave up on during ws_handshake_delay_s
        self._signatures: dict[str, tuple[str, float]] = {}
        self._phrases: dict[tuple[str, str, int], tuple[_Chunk, ...]] = {}
        self._active: set[_Conversation] = set()
        self._runner: web.AppRunner | None = None

    # --- addresses ---
    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self._url_host()}:{self.port}"

    @property
    def signed_url_endpoint(self) -> str:
        return self.base_url + SIGNED_URL_PATH

    @property
    def ws_url(self) -> str:
        """The WebSocket URL without a signature (public agents; add ?agent_id=...)."""
        return f"{self._ws_scheme}://{self._url_host()}:{self.port}{WS_PATH}"

    @property
    def _ws_scheme(self) -> str:
        return "wss" if self.ssl_context else "ws"

    def _url_host(self) -> str:
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        return f"[{self.host}]" if ":" in self.host else self.host

    # --- lifecycle ---
    async def start(self) -> None:
        speech.espeak_binary()  # fail now, clearly, rather than on the first call
        sc = self.scenario
        # Synthesise every fixed phrase up front so no conversation waits for espeak-ng.
        for text in {sc.greeting, sc.farewell, *sc.replies}:
            if text and "{{" not in text:
                await self._chunks(text, sc.output_format, sc.audio_chunk_ms)
        app = web.Application()
        app.router.add_get(SIGNED_URL_PATH, self._handle_signed_url)
        app.router.add_get(SIGNED_URL_PATH_DEPRECATED, self._handle_signed_url)
        app.router.add_get(WS_PATH, self._handle_ws)
        # A short shutdown: stop() must not wait a minute for a delayed signed-URL reply.
        on_runner, on_site = shutdown_timeout(2.0)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, **on_runner)
        await runner.setup()
        # The benchmark opens 100+ connections at once: a deep accept backlog.
        site = web.TCPSite(
            runner,
            self.host,
            self.port,
            reuse_address=True,
            backlog=1024,
            ssl_context=self.ssl_context,
            **on_site,
        )
        await site.start()
        self._runner = runner
        addr = runner.addresses[0]
        self.port = int(addr[1])
        log.info("ConvAI simulator listening on %s", self.base_url)

    async def stop(self) -> None:
        active = list(self._active)
        if active:
            await asyncio.gather(*(c.shutdown() for c in active), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[Simulator]:
        """Run the simulator on its own event loop in a daemon thread (for sync tests)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

        thread = threading.Thread(target=main, name="convai-sim", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=15)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll predicate until true or timeout (from async code on any loop)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def wait_for_sync(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll predicate until true or timeout (from a thread other than the simulator's)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # --- phrases ---
    async def _chunks(self, text: str, fmt: str, chunk_ms: int) -> tuple[_Chunk, ...]:
        key = (text, fmt, chunk_ms)
        cached = self._phrases.get(key)
        if cached is None:
            data = await speech.synthesize_async(text, fmt)
            step = max(1, round(audio.bytes_per_ms(fmt) * chunk_ms))
            if not audio.is_ulaw(fmt):
                step &= ~1  # whole 16-bit samples per chunk
            cached = tuple(
                _Chunk(
                    base64.b64encode(data[i : i + step]).decode("ascii"),
                    len(data[i : i + step]),
                    audio.duration_ms(len(data[i : i + step]), fmt) / 1000.0,
                )
                for i in range(0, len(data), step)
            )
            self._phrases[key] = cached
        return cached

    # --- HTTP ---
    async def _handle_signed_url(self, request: web.Request) -> web.Response:
        self.signed_url_arrivals.append(time.time())
        sc = self.scenario
        agent_id = request.query.get("agent_id")
        api_key = request.headers.get("xi-api-key")
        if sc.signed_url_delay > 0:
            await asyncio.sleep(sc.signed_url_delay)
        if sc.require_api_key is not None and api_key != sc.require_api_key:
            status, body = 401, _error_body(401)
        elif sc.signed_url_status != 200:
            status = sc.signed_url_status
            body = sc.signed_url_body if sc.signed_url_body is not None else _error_body(status)
        elif not agent_id:
            status, body = 422, _error_body(422)
        else:
            signature = secrets.token_urlsafe(32)
            now = time.monotonic()
            self._signatures = {
                s: v for s, v in self._signatures.items() if now - v[1] < SIGNATURE_TTL_S
            }
            self._signatures[signature] = (agent_id, now)
            query = urlencode({"agent_id": agent_id, "conversation_signature": signature})
            url = f"{self._ws_scheme}://{request.host}{WS_PATH}?{query}"
            status = 200
            body = (
                sc.signed_url_body
                if sc.signed_url_body is not None
                else _compact({"signed_url": url})
            )
        self.signed_url_requests.append(
            SignedUrlRequest(time.time(), agent_id, api_key is not None, status)
        )
        log.info("get-signed-url agent_id=%s → %d", agent_id, status)
        return web.Response(status=status, text=body, content_type="application/json")

    # --- WebSocket ---
    def _check_signature(self, request: web.Request, sc: Scenario) -> str | None:
        """None if the handshake may proceed, else why it is refused."""
        agent_id = request.query.get("agent_id")
        signature = request.query.get("conversation_signature") or request.query.get("token")
        if signature is None:
            return None if sc.public_agent and agent_id else "missing conversation_signature"
        entry = self._signatures.get(signature)
        if entry is None or time.monotonic() - entry[1] >= SIGNATURE_TTL_S:
            return "invalid or expired conversation_signature"
        if agent_id != entry[0]:
            return "conversation_signature was issued for another agent"
        return None

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        self.ws_arrivals.append(time.time())
        sc = copy.deepcopy(self.scenario)
        try:
            sc.validate()
        except ValueError as exc:  # sim.scenario was changed after start
            log.error("invalid scenario: %s", exc)
            return web.Response(status=500, text=f"invalid simulator scenario: {exc}")
        ws = web.WebSocketResponse(
            protocols=("convai",),
            compress=False,  # audio does not deflate; 100+ calls should not pay for trying
            max_msg_size=MAX_MESSAGE_BYTES,
            timeout=5.0,
            autoping=True,
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="WebSocket upgrade required")
        refused = self._check_signature(request, sc)
        if refused is not None:
            log.info("WebSocket refused (403): %s", refused)
            body = {"detail": {"status": "invalid_signature", "message": refused}}
            return web.Response(status=403, text=_compact(body), content_type="application/json")
        transport = request.transport
        if sc.ws_handshake_delay_s > 0:
            await asyncio.sleep(sc.ws_handshake_delay_s)
            if transport is None or transport.is_closing():
                self.ws_abandoned += 1
                log.info("WebSocket upgrade abandoned by the client during the delay")
                return web.Response(status=499, text="client went away")
        await ws.prepare(request)
        record = ConversationRecord(
            conversation_id=_new_id("conv_"),
            agent_id=request.query.get("agent_id"),
            started_at=time.time(),
            subprotocol=ws.ws_protocol,
        )
        self.conversations.append(record)
        conv = _Conversation(self, sc, ws, transport, record)
        self._active.add(conv)
        try:
            await conv.run()
        finally:
            self._active.discard(conv)
        return ws


class _Conversation:
    """One WebSocket: a reader loop plus tasks for pings, the agent's speech and scripts."""

    def __init__(
        self,
        sim: Simulator,
        sc: Scenario,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        record: ConversationRecord,
    ) -> None:
        self.sim = sim
        self.sc = sc
        self.ws = ws
        self.transport = transport
        self.rec = record
        self.cid = record.conversation_id
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.variables: dict[str, Any] = {}
        self.greeting = sc.greeting
        self._event_id = sc.first_event_id - sc.event_id_step
        self._ping_id = 0
        self._pings: dict[int, float] = {}
        self._last_rtt_ms: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._agent_task: asyncio.Task[None] | None = None
        self._turn: _Turn | None = None
        self._pending_interrupt: int | None = None
        self._user_turns = 0
        self._ending = False
        self._closer: asyncio.Task[bool] | None = None
        self._silenced = False  # set before a scripted error: nothing may slip in between
        self._stalled = False  # stop_reading_after_s: the reader stopped
        self._tool_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._audio_cap = int(sc.record_caller_audio_s * 1000 * audio.bytes_per_ms(sc.input_format))
        # VAD state, all in caller-audio time (ms of audio received), not wall time.
        rate = audio.format_rate(sc.input_format)
        self._ulaw_in = audio.is_ulaw(sc.input_format)
        self._frame_bytes = rate * FRAME_MS // 1000 * 2
        self._leftover = b""
        self._rx_ns = 0  # time.monotonic_ns() when the message being handled arrived
        self._audio_ms = 0
        self._in_speech = False
        self._speech_run_ms = 0
        self._speech_start_ms = 0
        self._speech_end_ms = 0
        self._silence_ms = 0
        self._ignore_speech = False
        self._vad_last_ms = -(10**9)
        self._vad_peak = 0.0

    # --- plumbing ---
    def _t(self) -> float:
        return self.loop.time() - self.t0

    def _note(
        self, direction: str, type_: str, detail: str = "", event_id: int | None = None
    ) -> None:
        if len(self.rec.events) < EVENT_LOG_CAP:
            self.rec.events.append(LoggedEvent(self._t(), direction, type_, detail, event_id))

    def _log(self, level: int, arrow: str, what: str, *args: object) -> None:
        if log.isEnabledFor(level):
            log.log(level, "%s %7.3fs %s " + what, self.cid, self._t(), arrow, *args)

    def _next_id(self) -> int:
        self._event_id += self.sc.event_id_step
        return self._event_id

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("%s task failed: %r", self.cid, exc, exc_info=exc)

    async def _send_raw(self, text: str, *, last_words: bool = False) -> bool:
        if self.ws.closed or (self._silenced and not last_words):
            return False
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("%s send failed: %r", self.cid, exc)
            return False
        return True

    async def _send(
        self,
        type_: str,
        key: str,
        payload: dict[str, Any],
        detail: str = "",
        *,
        level: int = logging.INFO,
        event_id: int | None = None,
        last_words: bool = False,
    ) -> bool:
        # Payload object first, then "type": the real server's key order (reference §2).
        msg = {key: payload, "type": type_}
        if self.sim.contract is not None:
            errors = self.sim.contract.server_message(msg)
            if errors:
                self._violation("out", errors)
        ok = await self._send_raw(_compact(msg), last_words=last_words)
        if ok:
            self._note("out", type_, detail, event_id)
            self._log(level, "→", "%s %s", type_, detail)
        return ok

    # --- lifecycle ---
    async def run(self) -> None:
        self._log(logging.INFO, "·", "connected agent_id=%s", self.rec.agent_id)
        try:
            first = await self._receive_init()
            if not self.sc.send_metadata:
                self._note("sim", "no_metadata")
                self._log(logging.INFO, "·", "not sending the metadata (scripted)")
            elif self.sc.metadata_delay_s > 0:  # reading meanwhile, so a close is seen at once

                async def begin_later() -> None:
                    await asyncio.sleep(self.sc.metadata_delay_s)
                    await self._begin()

                self._spawn(begin_later())
            else:
                await self._begin()
            await self._read_loop(first)
        except Exception:
            log.exception("%s conversation failed", self.cid)
            self.rec.end_reason = self.rec.end_reason or "error"
            await self._close(1011, "simulator error", "error")
        finally:
            await self._finish()

    async def _begin(self) -> None:
        """The metadata, then the scripts, the pings and the greeting."""
        await self._send(
            "conversation_initiation_metadata",
            "conversation_initiation_metadata_event",
            {
                "conversation_id": self.cid,
                "agent_output_audio_format": self.sc.output_format,
                "user_input_audio_format": self.sc.input_format,
            },
            f"in={self.sc.input_format} out={self.sc.output_format}",
        )
        self._start_scripts()
        if self.sc.ping_interval > 0:
            self._spawn(self._ping_loop())
        greeting = _substitute(self.greeting, self.variables)
        if self.sc.flood_audio_s is not None:
            self._start_agent(partial(self._flood, self._next_id(), greeting or "Flood."))
        elif greeting or self._has_tool_calls(0):
            self._start_agent(partial(self._greet, self._next_id(), greeting))

    async def _receive_init(self) -> WSMessage | None:
        """Wait briefly for conversation_initiation_client_data; return any other first frame
        (the real service accepts a client that never sends it, reference §3.2)."""
        try:
            msg = await self.ws.receive(timeout=self.sc.init_wait_s)
        except TimeoutError:
            self._log(logging.INFO, "·", "no conversation_initiation_client_data (accepted)")
            return None
        if msg.type == WSMsgType.TEXT:
            try:
                parsed = json.loads(msg.data)
            except ValueError:
                return msg
            if (
                isinstance(parsed, dict)
                and parsed.get("type") == "conversation_initiation_client_data"
            ):
                self._on_init(parsed)
                return None
        return msg

    def _on_init(self, msg: dict[str, Any]) -> None:
        self.rec.init = msg
        self._note("in", "conversation_initiation_client_data")
        dyn = msg.get("dynamic_variables")
        if isinstance(dyn, dict):
            self.variables = dyn
        override = msg.get("conversation_config_override")
        agent = override.get("agent") if isinstance(override, dict) else None
        first = agent.get("first_message") if isinstance(agent, dict) else None
        if isinstance(first, str):
            self.greeting = first
        self._log(
            logging.INFO,
            "←",
            "conversation_initiation_client_data dynamic_variables=%s first_message=%r",
            sorted(self.variables),
            first,
        )

    async def _read_loop(self, first: WSMessage | None) -> None:
        while True:
            while self._stalled and self.transport is not None and not self.transport.is_closing():
                await asyncio.sleep(0.05)  # not reading: aiohttp's queue, then TCP, fill up
            msg, first = (first, None) if first is not None else (await self.ws.receive(), None)
            if msg.type == WSMsgType.TEXT:
                try:
                    await self._on_text(str(msg.data))
                except Exception as exc:  # a client frame must never end the conversation
                    log.exception("%s error handling a client frame", self.cid)
                    self._invalid(f"handler error {exc!r}")
            elif msg.type == WSMsgType.BINARY:
                self._invalid("binary frame")
            elif msg.type == WSMsgType.CLOSE:
                self.rec.client_close_code = int(msg.data)
                self.rec.client_close_reason = str(msg.extra or "")
                self.rec.end_reason = self.rec.end_reason or "client_closed"
                self._note("in", "close", f"{msg.data} {msg.extra or ''}".strip())
                self._log(logging.INFO, "←", "close %s %r", msg.data, msg.extra)
                return
            else:  # CLOSING (we are closing), CLOSED or ERROR (connection lost)
                if self._closer is None:
                    self.rec.end_reason = self.rec.end_reason or "connection_lost"
                return

    async def _close(self, code: int, reason: str, end_reason: str) -> None:
        if self._closer is None:
            self.rec.end_reason = self.rec.end_reason or end_reason
            self.rec.server_close_code = code
            self._note("out", "close", f"{code} {reason}".strip())
            self._log(logging.INFO, "→", "close %d %r", code, reason)
            self._closer = self.loop.create_task(
                self.ws.close(code=code, message=reason.encode("utf-8"))
            )
        # Shielded: the handler cancels every other task when the reader ends, which happens
        # while close() still waits for the client's close frame.
        await asyncio.shield(self._closer)

    async def shutdown(self) -> None:
        await self._close(1001, "simulator shutting down", "server_stopped")

    async def _finish(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self._closer is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._closer), timeout=6.0)
        elif not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.close()
        self.rec.ended_at = time.time()
        self._log(
            logging.INFO,
            "·",
            "ended (%s): %d caller turns, caller audio %.1f s, agent audio %.1f s",
            self.rec.end_reason,
            self._user_turns,
            self._audio_ms / 1000.0,
            sum(a.duration_ms for a in self.rec.sent_audio) / 1000.0,
        )

    # --- scripted behaviour ---
    def _start_scripts(self) -> None:
        sc = self.sc

        def later(delay: float, action: Callable[[], Awaitable[None]]) -> None:
            async def run() -> None:
                await asyncio.sleep(delay)
                await action()

            self._spawn(run())

        if sc.max_duration_s is not None:
            later(sc.max_duration_s, self._max_duration)
        if sc.close_after_s is not None or sc.error_event is not None:
            later(sc.close_after_s or 0.0, self._scripted_close)
        if sc.drop_tcp_after_s is not None:
            later(sc.drop_tcp_after_s, self._drop_tcp)
        if sc.garbage_after_s is not None:
            later(sc.garbage_after_s, self._garbage)
        if sc.stop_reading_after_s is not None:
            later(sc.stop_reading_after_s, self._stop_reading)
        if sc.oversize_message_bytes is not None:
            later(0.0, self._oversize)
        if sc.inject:
            later(sc.inject_after_s, self._inject)

    async def _max_duration(self) -> None:
        limit = self.sc.max_duration_s or 0.0
        self._silenced = True
        await self._send(
            "error",
            "error_event",
            {
                "code": 1000,
                "message": f"Maximum conversation duration of {limit:g} seconds exceeded",
                "error_type": "max_duration_exceeded",
                "reason": "max_duration_exceeded",
                "debug_message": None,
                "details": None,
            },
            "max_duration_exceeded",
            last_words=True,
        )
        await self._close(1000, "", "max_duration")

    async def _scripted_close(self) -> None:
        ev = self.sc.error_event
        if ev is not None:
            self._silenced = True
            msg = ev if "type" in ev else {"error_event": ev, "type": "error"}
            if await self._send_raw(_compact(msg), last_words=True):
                self._note("out", str(msg.get("type")), _compact(msg)[:200])
                self._log(logging.INFO, "→", "%s", _compact(msg))
        await self._close(self.sc.close_code, self.sc.close_reason, "scripted_close")

    async def _drop_tcp(self) -> None:
        self.rec.end_reason = self.rec.end_reason or "tcp_drop"
        self._note("sim", "tcp_drop")
        self._log(logging.INFO, "·", "dropping the TCP connection (no close frame)")
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()

    async def _stop_reading(self) -> None:
        self._stalled = True
        if isinstance(self.transport, asyncio.ReadTransport):
            self.transport.pause_reading()  # under aiohttp's own flow control: nobody resumes it
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._note("sim", "stop_reading", f"after {self.rec.caller_audio_bytes} caller bytes")
        self._log(logging.INFO, "·", "stopped reading the socket (scripted)")

    async def _oversize(self) -> None:
        n = self.sc.oversize_message_bytes or 0
        head = '{"audio_event":{"event_id":' + str(self._event_id) + ',"audio_base_64":"'
        tail = '"},"type":"audio"}'
        body = "A" * max(0, n - len(head) - len(tail))
        if await self._send_raw(head + body + tail):
            self._note("out", "oversize", f"{n} bytes")
            self._log(logging.INFO, "→", "one audio message of %d bytes", n)

    async def _inject(self) -> None:
        for msg in self.sc.inject:
            if not await self._send_raw(_compact(msg)):
                return
            eid = next((v.get("event_id") for v in msg.values() if isinstance(v, dict)), None)
            self._note("out", str(msg.get("type")), _compact(msg)[:120], eid)
            self._log(logging.INFO, "→", "injected %s", _compact(msg)[:200])

    async def _flood(self, event_id: int, text: str) -> None:
        """flood_audio_s of audio for one event id, as fast as the socket drains (the phrase's
        chunks over and over): a hostile server, or a client that cannot keep up."""
        chunks = await self.sim._chunks(text, self.sc.output_format, self.sc.audio_chunk_ms)
        target = self.sc.flood_audio_s or 0.0
        turn = _Turn(event_id, text, chunks, target)
        self._turn = turn
        self.rec.agent_responses.append((event_id, text))
        turn.started = self.loop.time()
        self._log(logging.INFO, "→", "flood of %.0f s of audio [%d]", target, event_id)
        i = 0
        while turn.sent_s < target:
            chunk = chunks[i % len(chunks)]
            if not await self._send_chunk(turn, chunk, False):
                return
            turn.sent += 1
            turn.sent_s += chunk.seconds
            i += 1
            if i % 20 == 0:
                await asyncio.sleep(0)  # let the other conversations run
        self.rec.flood_sent_s = turn.sent_s
        self.rec.flood_took_s = self.loop.time() - turn.started
        self._note("sim", "flood_done", f"{turn.sent_s:.1f} s in {self.rec.flood_took_s:.2f} s")

    async def _garbage(self) -> None:
        eid = self._event_id
        frames = [
            "this is not JSON {",
            "[1, 2, 3]",
            '"a bare string"',
            "{}",
            '{"type": 42}',
            '{"future_event":{"x":1},"type":"future_unknown_type"}',
            f'{{"audio_event":{{"audio_base_64":"!!not*base64!!","event_id":{eid}}},"type":"audio"}}',
            f'{{"audio_event":{{"event_id":{eid}}},"type":"audio"}}',
            '{"ping_event":{"event_id":"seven","ping_ms":"fast"},"type":"ping"}',
            '{"type":"ping"}',
            '{"interruption_event":null,"type":"interruption"}',
            '{"agent_response_event":{"agent_response":null,"event_id":-1},"type":"agent_response"}',
        ]
        self._log(logging.INFO, "→", "garbage x%d", len(frames) + 1)
        for text in frames:
            if not await self._send_raw(text):
                return
            self._note("out", "garbage", text[:80])
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_bytes(b"\x00\xffbinary garbage")
            self._note("out", "garbage", "binary frame")

    async def _ping_loop(self) -> None:
        while True:
            self._ping_id += 1
            pid = self._ping_id
            self._pings[pid] = self.loop.time()
            if len(self._pings) > 64:  # unanswered pings: keep the newest only
                self._pings.pop(next(iter(self._pings)))
            payload = {"event_id": pid, "ping_ms": self._last_rtt_ms}
            await self._send(
                "ping", "ping_event", payload, f"#{pid}", level=logging.DEBUG, event_id=pid
            )
            await asyncio.sleep(self.sc.ping_interval)

    # --- client messages ---
    def _invalid(self, why: str) -> None:
        if len(self.rec.invalid_frames) < 1000:
            self.rec.invalid_frames.append(why)
        self._note("in", "invalid", why)
        self._log(logging.WARNING, "←", "invalid frame: %s", why)

    def _violation(self, direction: str, errors: list[str]) -> None:
        for why in errors[:5]:
            if len(self.rec.contract_violations) < 1000:
                self.rec.contract_violations.append(f"{direction}: {why}")
            self._log(logging.ERROR, "!", "contract violation (%s): %s", direction, why)

    async def _on_text(self, data: str) -> None:
        self._rx_ns = time.monotonic_ns()  # before decoding and the contract check
        try:
            msg = json.loads(data)
        except ValueError:
            self._invalid(f"not JSON: {data[:60]!r}")
            self._violation("in", [f"not JSON: {data[:60]!r}"])
            return
        if self.sim.contract is not None:
            errors = self.sim.contract.client_message(msg)
            if errors:
                self._violation("in", errors)
        if not isinstance(msg, dict):
            self._invalid(f"not an object: {data[:60]!r}")
            return
        if "user_audio_chunk" in msg:  # the one client message without "type" (reference §2)
            chunk = msg["user_audio_chunk"]
            if isinstance(chunk, str):
                await self._on_audio(chunk)
            else:
                self._invalid("user_audio_chunk is not a string")
            return
        type_ = msg.get("type")
        handler = self._handlers.get(type_) if isinstance(type_, str) else None
        if handler is None:
            if len(self.rec.unknown_types) < 1000:
                self.rec.unknown_types.append(str(type_))
            self._note("in", "unknown", str(type_))
            self._log(logging.WARNING, "←", "unknown message type %r", type_)
            return
        try:
            await handler(self, msg)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._invalid(f"{type_}: {exc!r}")

    async def _on_init_late(self, msg: dict[str, Any]) -> None:
        if self.rec.init is None:
            self._on_init(msg)  # after metadata: the overrides come too late to matter
        else:
            self._invalid("second conversation_initiation_client_data")

    async def _on_pong(self, msg: dict[str, Any]) -> None:
        eid = msg.get("event_id")
        if not isinstance(eid, int) or isinstance(eid, bool):
            self._invalid(f"pong without an integer event_id: {msg!r}"[:120])
            return
        self.rec.pongs.append(eid)
        sent = self._pings.pop(eid, None)
        rtt = "?"
        if sent is not None:
            ms = (self.loop.time() - sent) * 1000.0
            self.rec.ping_rtts_ms.append(ms)
            self._last_rtt_ms = round(ms)
            rtt = f"{ms:.1f} ms"
        self._note("in", "pong", rtt, eid)
        self._log(logging.DEBUG, "←", "pong #%d rtt %s", eid, rtt)

    async def _on_user_message(self, msg: dict[str, Any]) -> None:
        text = msg.get("text")
        text = text if isinstance(text, str) else ""
        self.rec.user_messages.append(text)
        self._note("in", "user_message", text)
        self._log(logging.INFO, "←", "user_message %r", text)
        if self._ending:
            return
        if self._agent_busy():  # a text turn interrupts the agent too (reference §6.3)
            await self._interrupt("user_message")
        self._user_turns += 1
        reply_id = self._reply_id()
        if self._keyword_in(text):
            self._ending = True
            self._start_agent(partial(self._end_call, reply_id, "end keyword in user_message"))
        else:
            self._start_agent(partial(self._reply, reply_id, self._user_turns))

    async def _on_contextual_update(self, msg: dict[str, Any]) -> None:
        text = msg.get("text")
        text = text if isinstance(text, str) else ""
        entry = {"text": text, "context_id": msg.get("context_id")}
        self.rec.contextual_updates.append(entry)
        self._note("in", "contextual_update", text)
        self._log(logging.INFO, "←", "contextual_update %r", text)
        if not self._ending and self._keyword_in(text):
            # A context update never interrupts: the farewell follows whatever is being said.
            self._ending = True
            eid = self._next_id()
            self._start_agent(partial(self._end_call, eid, "end keyword in contextual_update"))

    async def _on_tool_result(self, msg: dict[str, Any]) -> None:
        self.rec.tool_results.append(msg)
        call_id = msg.get("tool_call_id")
        self._note("in", "client_tool_result", f"{call_id} is_error={msg.get('is_error')}")
        self._log(logging.INFO, "←", "client_tool_result %s", _compact(msg)[:200])
        waiter = self._tool_waiters.pop(call_id, None) if isinstance(call_id, str) else None
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def _on_user_activity(self, msg: dict[str, Any]) -> None:
        self.rec.user_activity += 1
        self._note("in", "user_activity")
        self._log(logging.DEBUG, "←", "user_activity")

    async def _on_feedback(self, msg: dict[str, Any]) -> None:
        self.rec.feedback.append(msg)
        self._note("in", "feedback", str(msg.get("score")))
        self._log(logging.INFO, "←", "feedback %s", _compact(msg))

    async def _on_other(self, msg: dict[str, Any]) -> None:
        type_ = str(msg.get("type"))
        self._note("in", type_, _compact(msg)[:120])
        self._log(logging.INFO, "←", "%s (recorded, no simulated effect)", type_)

    _handlers: ClassVar[dict[str, Callable[[_Conversation, dict[str, Any]], Awaitable[None]]]] = {
        "conversation_initiation_client_data": _on_init_late,
        "pong": _on_pong,
        "user_message": _on_user_message,
        "contextual_update": _on_contextual_update,
        "client_tool_result": _on_tool_result,
        "user_activity": _on_user_activity,
        "feedback": _on_feedback,
        "mcp_tool_approval_result": _on_other,
        "multimodal_message": _on_other,
    }

    def _keyword_in(self, text: str) -> bool:
        kw = self.sc.end_keyword
        return bool(kw) and kw is not None and kw.lower() in text.lower()

    # --- caller audio, VAD and turns ---
    async def _on_audio(self, b64: str) -> None:
        arrived_ns = self._rx_ns
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            self._invalid("user_audio_chunk is not valid base64")
            return
        rec = self.rec
        rec.caller_audio_bytes += len(data)
        rec.caller_audio_chunks += 1
        if len(rec.caller_chunks) < EVENT_LOG_CAP:
            rec.caller_chunks.append((arrived_ns, len(data)))
        room = self._audio_cap - len(rec.caller_audio)
        if room > 0:
            rec.caller_audio += data[:room]
        buf = self._leftover + (audio.ulaw_decode(data) if self._ulaw_in else data)
        fb = self._frame_bytes
        end = len(buf) - len(buf) % fb
        for i in range(0, end, fb):
            await self._vad_frame(audio.rms_dbfs(buf[i : i + fb]))
        self._leftover = buf[end:]

    async def _vad_frame(self, dbfs: float) -> None:
        sc = self.sc
        self._audio_ms += FRAME_MS
        now_ms = self._audio_ms
        loud = dbfs > sc.vad_threshold_dbfs
        # Logistic over the level: 0.5 at the threshold, ~0.98 for 15 dB above it.
        score = 1.0 / (1.0 + math.exp(-(dbfs - sc.vad_threshold_dbfs) / 4.0))
        self._vad_peak = max(self._vad_peak, score)
        changed = False
        if not self._in_speech:
            self._speech_run_ms = self._speech_run_ms + FRAME_MS if loud else 0
            if self._speech_run_ms >= sc.min_speech_ms:
                self._in_speech, changed = True, True
                self._speech_start_ms = now_ms - self._speech_run_ms
                self._speech_end_ms = now_ms
                self._silence_ms = 0
        elif loud:
            self._silence_ms = 0
            self._speech_end_ms = now_ms
        else:
            self._silence_ms += FRAME_MS
            if self._silence_ms >= sc.silence_end_ms:
                self._in_speech, changed = False, True
        interval = sc.vad_interval_ms
        if interval is not None and (changed or now_ms - self._vad_last_ms >= interval):
            value = round(score if changed else self._vad_peak, 3)
            self._vad_last_ms, self._vad_peak = now_ms, 0.0
            if len(self.rec.vad_scores) < EVENT_LOG_CAP:
                self.rec.vad_scores.append(value)
            await self._send(
                "vad_score",
                "vad_score_event",
                {"vad_score": value},
                f"{value}",
                level=logging.DEBUG,
            )
        if changed and self._in_speech:
            await self._on_speech_start(dbfs)
        elif changed:
            await self._on_speech_end()

    async def _on_speech_start(self, dbfs: float) -> None:
        self._note("sim", "speech_start", f"{dbfs:.1f} dBFS")
        self._log(logging.INFO, "·", "caller speech started (%.1f dBFS)", dbfs)
        self._ignore_speech = False
        if self._ending:
            self._ignore_speech = True
        elif self._agent_busy():
            if self.sc.interrupt_on_speech:
                await self._interrupt("caller speech")
            else:
                self._ignore_speech = True

    async def _on_speech_end(self) -> None:
        seconds = (self._speech_end_ms - self._speech_start_ms) / 1000.0
        self._note("sim", "speech_end", f"{seconds:.2f} s")
        self._log(logging.INFO, "·", "caller speech ended (%.2f s)", seconds)
        if self._ignore_speech or self._ending:
            self._ignore_speech = False
            return
        self._user_turns += 1
        turn = self._user_turns
        tid = self._pending_interrupt if self._pending_interrupt is not None else self._next_id()
        text = f"(caller spoke for {seconds:.1f} s)"
        self.rec.user_transcripts.append((tid, text))
        await self._send(
            "user_transcript",
            "user_transcription_event",
            {"user_transcript": text, "event_id": tid},
            f"[{tid}] {text}",
            event_id=tid,
        )
        reply_id = self._reply_id()
        self._start_agent(partial(self._reply, reply_id, turn))

    def _reply_id(self) -> int:
        """Id of the agent turn answering the caller; after an interruption the real service
        reuses the interruption's id (elevenlabs-python#829), which is what clients must play."""
        pending, self._pending_interrupt = self._pending_interrupt, None
        if pending is not None and self.sc.reply_event_id_equals_interrupt:
            return pending
        return self._next_id()

    # --- the agent speaking ---
    def _agent_busy(self) -> bool:
        """Thinking, sending, or still audible on the client per the sim's playout clock."""
        if self._agent_task is not None and not self._agent_task.done():
            return True
        return self._turn is not None and self.loop.time() < self._turn.playing_until()

    def _start_agent(self, turn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run an agent turn after the previous one (a factory, so a turn cancelled before it
        starts leaves no never-awaited coroutine behind)."""
        prev = self._agent_task

        async def after_previous() -> None:
            if prev is not None and not prev.done():
                await asyncio.wait([prev])  # let a cancelled turn unwind first
            await turn()

        self._agent_task = self._spawn(after_previous())

    async def _interrupt(self, cause: str) -> None:
        turn, task = self._turn, self._agent_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        self._turn = None
        if (
            turn is None
            or turn.started is None
            or (self.loop.time() >= turn.playing_until() and turn.sent == len(turn.chunks))
        ):
            # Nothing of this turn reached the caller yet: the agent just keeps listening.
            self._note("sim", "reply_cancelled", cause)
            self._log(logging.INFO, "·", "pending reply dropped (%s before it was spoken)", cause)
            return
        iid = self._next_id()
        self.rec.interruptions.append(iid)
        await self._send(
            "interruption",
            "interruption_event",
            {"event_id": iid},
            f"[{iid}] by {cause}",
            event_id=iid,
        )
        if self.sc.late_stale_audio and turn.chunks:
            await self._send_chunk(turn, turn.chunks[min(turn.sent, len(turn.chunks) - 1)], True)
        played = (self.loop.time() - turn.started) / turn.duration_s if turn.duration_s else 1.0
        corrected = _truncate_words(turn.text, played)
        await self._send(
            "agent_response_correction",
            "agent_response_correction_event",
            {
                "original_agent_response": turn.text,
                "corrected_agent_response": corrected,
                "event_id": turn.event_id,
            },
            f"[{turn.event_id}] {corrected!r}",
            event_id=turn.event_id,
        )
        self._pending_interrupt = iid

    async def _reply(self, event_id: int, turn_no: int) -> None:
        sc = self.sc
        if await self._tool_calls(event_id, turn_no):
            return  # the agent's reaction to a tool result was this turn's reply
        if sc.reply_delay_s > 0:
            await asyncio.sleep(sc.reply_delay_s)
        if sc.end_after_turns is not None and turn_no >= sc.end_after_turns:
            self._ending = True
            await self._end_call(event_id, f"{turn_no} caller turns")
            return
        if sc.replies:
            text = _substitute(sc.replies[(turn_no - 1) % len(sc.replies)], self.variables)
            await self._speak_turn(event_id, text)

    def _has_tool_calls(self, turn_no: int) -> bool:
        return any(int(s.get("after_turn", 1)) == turn_no for s in self.sc.tool_calls)

    async def _greet(self, event_id: int, text: str) -> None:
        if text:
            await self._speak_turn(event_id, text)
        if self._has_tool_calls(0):
            await self._tool_calls(self._next_id() if text else event_id, 0)

    async def _tool_calls(self, event_id: int, turn_no: int) -> bool:
        """The scripted tool calls of this turn, in order; True if the agent spoke a
        reaction to a result (which then stands in for the normal reply)."""
        reacted = False
        specs = [s for s in self.sc.tool_calls if int(s.get("after_turn", 1)) == turn_no]
        for spec in specs:
            src = spec.get("client_tool_call", spec)
            src = src if isinstance(src, dict) else {}
            if src.get("say_before"):
                await self._speak_turn(event_id, _substitute(src["say_before"], self.variables))
                event_id = self._next_id()
                if src.get("after_speech") and self._turn is not None:
                    await asyncio.sleep(max(0.0, self._turn.playing_until() - self.loop.time()))
            if src.get("system"):
                await self._system_tool(event_id, str(src.get("tool_name", "end_call")))
                continue
            result = await self._tool_call(event_id, src)
            if result is None:
                continue
            text = src.get("on_error" if result.get("is_error") else "on_result")
            if isinstance(text, str) and text:
                said = text.replace("{result}", str(result.get("result", "")))
                await self._speak_turn(self._next_id(), said)
                reacted = True
        return reacted

    async def _tool_call(self, event_id: int, src: dict[str, Any]) -> dict[str, Any] | None:
        """Send one client_tool_call; with expects_response, wait for its result (None on
        timeout or without expects_response)."""
        extra = {"after_turn", "say_before", "after_speech", "on_result", "on_error", "system"}
        payload: dict[str, Any] = {
            "tool_name": src.get("tool_name", "sim_tool"),
            "tool_call_id": src.get("tool_call_id") or _new_id("call_", 16),
            "parameters": src.get("parameters", {}),
            "event_id": src.get("event_id", event_id),
            "expects_response": src.get("expects_response", True),
        }
        payload.update({k: v for k, v in src.items() if k not in payload and k not in extra})
        self.rec.tool_calls.append(payload)
        fut: asyncio.Future[dict[str, Any]] | None = None
        if payload["expects_response"] and isinstance(payload["tool_call_id"], str):
            fut = self.loop.create_future()
            self._tool_waiters[payload["tool_call_id"]] = fut
        await self._send(
            "client_tool_call",
            "client_tool_call",
            payload,
            f"{payload['tool_name']} {_compact(payload['parameters'])}",
            event_id=event_id,
        )
        if fut is None:
            return None
        try:
            return await asyncio.wait_for(fut, self.sc.tool_result_timeout_s)
        except TimeoutError:
            self._tool_waiters.pop(payload["tool_call_id"], None)
            self._log(logging.WARNING, "·", "no result for tool call %s", payload["tool_call_id"])
            return None

    async def _system_tool(self, event_id: int, name: str) -> None:
        """What the service sends when one of its own system tools ran (reference §4.12)."""
        await self._send(
            "agent_tool_response",
            "agent_tool_response",
            {
                "tool_name": name,
                "tool_call_id": _new_id("toolu_sim_", 20),
                "tool_type": "system",
                "is_error": False,
                "is_called": True,
                "is_blocked": False,
                "event_id": event_id,
            },
            name,
            event_id=event_id,
        )

    async def _end_call(self, event_id: int, why: str) -> None:
        self._log(logging.INFO, "·", "agent ends the call: %s", why)
        farewell = _substitute(self.sc.farewell, self.variables)
        if farewell:
            await self._speak_turn(event_id, farewell)
        await self._system_tool(event_id, "end_call")
        # Let the farewell play out on the client before the close, as the service does.
        turn = self._turn
        if turn is not None:
            await asyncio.sleep(max(0.0, turn.playing_until() - self.loop.time()) + 0.2)
        await self._close(1000, "", "end_call")

    async def _speak_turn(self, event_id: int, text: str) -> None:
        chunks = await self.sim._chunks(text, self.sc.output_format, self.sc.audio_chunk_ms)
        turn = _Turn(event_id, text, chunks, sum(c.seconds for c in chunks))
        self._turn = turn
        self.rec.agent_responses.append((event_id, text))
        await self._send(
            "agent_response",
            "agent_response_event",
            {"agent_response": text, "event_id": event_id},
            f"[{event_id}] {text!r}",
            event_id=event_id,
        )
        burst = self.sc.burst_factor
        for chunk in chunks:
            if turn.started is None:
                turn.started = self.loop.time()
            elif burst > 0:
                due = turn.started + turn.sent_s / burst
                delay = due - self.loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # all at once, but let the other conversations run
            if not await self._send_chunk(turn, chunk, False):
                return
            turn.sent += 1
            turn.sent_s += chunk.seconds

    async def _send_chunk(self, turn: _Turn, chunk: _Chunk, stale: bool) -> bool:
        text = (
            '{"audio_event":{"audio_base_64":"'
            + chunk.b64
            + '","event_id":'
            + str(turn.event_id)
            + '},"type":"audio"}'
        )
        if self.sim.contract is not None:
            msg = {"audio_event": {"audio_base_64": chunk.b64, "event_id": turn.event_id}}
            errors = self.sim.contract.server_message({**msg, "type": "audio"})
            if errors:
                self._violation("out", errors)
        if not await self._send_raw(text):
            return False
        self.rec.sent_audio.append(
            SentAudio(self._t(), turn.event_id, chunk.nbytes, chunk.seconds * 1000.0, stale)
        )
        detail = f"[{turn.event_id}] {chunk.nbytes} B" + (" stale" if stale else "")
        self._note("out", "audio", detail, turn.event_id)
        self._log(logging.INFO if stale else logging.DEBUG, "→", "audio %s", detail)
        return True
