"""One ConvAI conversation for one call, on asyncio.

:class:`Session` is the I/O around the sans-I/O core in ``protocol.py`` and the phase
machine in ``lifecycle.py``: it fetches the signed URL (``signed_url.py``), opens the
WebSocket (websockets), sends ``conversation_initiation_client_data``, answers pings, chunks
caller audio, runs client tools and reports why the conversation ended, decided once in
``Session._end`` (``docs/ARCHITECTURE.md``, "The Python side"). The host (``host.py``) gets
the agent's audio and events through a :class:`SessionHandler`; every callback runs on the
loop.

Choices that are ours, not the protocol's:

* Dynamic variables: the agent section's variables, plus, when
  ``elevenlabs_send_caller_number=true``, ``caller_number`` and ``caller_id``, both the
  caller's number. ``caller_number`` is the name ElevenLabs' own examples use;
  ``caller_id`` is for agents written for the original module, whose README describes the
  option as sending the "caller ID" without naming the variable, so we send both. A withheld
  number is sent as ``"unknown"``: a variable the prompt requires but we omit makes the
  server refuse the call (``missing_dynamic_variable``, close 1008). A known number also
  goes in ``user_id``, so ElevenLabs' analytics group calls by caller. Nothing else about
  the call is sent (not the channel name, an Asterisk internal, nor the dialled number,
  which the option does not cover). ``system__*`` names are reserved by the server: a
  configured one is dropped with a warning.
* Caller audio fed before the metadata is kept (newest 1 s) and sent once the
  conversation starts, so the caller can barge into the greeting at once.
* Caller audio queued behind a stalled socket is capped at 2 s; older chunks are dropped.
* DTMF: the protocol has no keypad message. Digits go to the agent as a ``user_message``
  ("The caller pressed "12#" on the phone keypad."), because that starts a turn: the caller
  pressing a key is the caller speaking (IVR menus, "press 1 to confirm"), while a
  ``contextual_update`` would only sit in the context until the caller next spoke. Digits
  typed in quick succession are collected into one message (like ElevenLabs' own
  ``dtmf_input_timeout``/``hash_terminator``): sent after ``dtmf_interdigit_timeout``
  seconds without a key, or at once on ``#``.
* Stats: ``bytes_up``/``bytes_down`` count raw audio bytes (not base64 or JSON).
* Secrets: the API key and the signed URL's query string are replaced by ``<redacted>`` in
  every log line and result detail; websockets' own logger (which would print the request
  line with the signature at DEBUG) is capped at WARNING; redirects from the signed-URL
  endpoint are not followed, so the ``xi-api-key`` header never goes to another host.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import math
import ssl
import time
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Protocol, TypeVar

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import protocol, signed_url
from .lifecycle import Lifecycle, Phase, Status, close_outcome
from .protocol import (
    AUDIO_FORMATS,
    RESERVED_VARIABLE_PREFIX,
    AgentToolResponse,
    Audio,
    AudioFormat,
    ClientProtocol,
    ClientToolCall,
    ConversationInitiationMetadata,
    EndReason,
    ErrorEvent,
    Event,
    Interruption,
    MalformedMessage,
    Ping,
    UnknownMessage,
    VadScore,
)
from .signed_url import REDACTED, USER_AGENT, redact_url
from .tools import ToolOutcome, ToolRegistry

__all__ = [
    "AgentConfig",
    "CallInfo",
    "Phase",
    "Session",
    "SessionHandler",
    "SessionResult",
    "Started",
    "Status",
    "redact_url",
]

T = TypeVar("T")

CLOSE_TIMEOUT: Final = 2.0  # hangup must be prompt even if the server never answers the close
PRESTART_MS: Final = 1000  # caller audio kept while waiting for the metadata
PRESTART_MAX_BYTES: Final = 96_000  # 1 s of the widest format, before we know the real one
UP_BACKLOG_MS: Final = 2000  # caller audio queued for a stalled socket before dropping
# A hostile or broken server cannot grow our memory with pings or tool calls: pongs waiting
# for a stalled socket keep the newest few, and tool calls beyond this many at once are
# answered with an error at once instead of run.
MAX_QUEUED_PONGS: Final = 16
MAX_TOOL_CALLS: Final = 16
# elevenlabs_audio_frames_buffer_ms bounds: C validates the configuration against the same
# numbers (CONVAI_BUFFER_MS_MIN/MAX); here they only guard other callers of Session.
BUFFER_MS_MIN: Final = 20
BUFFER_MS_MAX: Final = 2000
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")

_WS_LOG = logging.getLogger("convai.websockets")
_WS_LOG.setLevel(logging.WARNING)  # its DEBUG lines carry the signed request line


def redact_key(key: str) -> str:
    """Enough of an API key to tell two apart in a log, never enough to use it: the last 4
    characters of a key of 16 or more. The CLI's style (c/cli.c), so both read alike."""
    return "****" + (key[-4:] if len(key) >= 16 else "")


@dataclass(frozen=True)
class AgentConfig:
    """One agent section of the configuration, as the host read it."""

    name: str
    api_key: str
    signed_url_endpoint: str
    agent_id: str
    send_caller_number: bool = False
    audio_frames_buffer_ms: int = 240
    dynamic_variables: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, object] = field(default_factory=dict)
    connect_timeout: float = 10.0  # WebSocket handshake, then again for the metadata
    http_timeout: float = 10.0  # per signed-URL attempt
    http_retries: int = 2  # extra attempts, on 5xx and network errors only
    max_message_bytes: int = 16 * 1024 * 1024
    http_retry_backoff: float = 0.5  # first retry delay, doubled each time
    proxy: str | None = None  # HTTP(S)/SOCKS proxy for both requests; None: direct

    def __repr__(self) -> str:
        items = []
        for f in fields(self):
            value: object = getattr(self, f.name)
            if f.name == "api_key":
                value = redact_key(self.api_key)
            items.append(f"{f.name}={value!r}")
        return f"AgentConfig({', '.join(items)})"


@dataclass(frozen=True)
class CallInfo:
    channel: str
    caller_number: str | None = None
    caller_name: str | None = None
    called_number: str | None = None
    unique_id: str | None = None


@dataclass(frozen=True)
class Started:
    conversation_id: str
    input_format: str
    output_format: str


@dataclass(frozen=True)
class SessionResult:
    status: Status
    reason: EndReason
    conversation_id: str | None
    close_code: int | None
    detail: str
    play_out: bool = False  # play the agent audio already handed over before ending


class SessionHandler(Protocol):
    """What the host implements. Called on the loop; must not block."""

    def on_started(self, started: Started) -> None: ...

    def on_audio(self, event_id: int, audio: bytes) -> None: ...

    def on_interruption(self, event_id: int) -> None: ...

    def on_event(self, event: Event) -> None: ...


class _Failure(Exception):
    def __init__(self, reason: EndReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Session:
    """One conversation. Create it, ``await run()``, feed audio; all on one loop."""

    def __init__(
        self,
        config: AgentConfig,
        call: CallInfo,
        handler: SessionHandler,
        *,
        tools: ToolRegistry | None = None,
        http: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
        log: logging.Logger | None = None,
        supported_formats: Collection[str] | None = None,
        dtmf_interdigit_timeout: float = 1.0,
    ) -> None:
        self.config = config
        self.call = call
        self.handler = handler
        self.tools = tools
        self.log = log or logging.getLogger("convai.session")
        self._http = http
        self._ssl = ssl_context
        self._formats = frozenset(supported_formats or AUDIO_FORMATS)
        self._dtmf_timeout = dtmf_interdigit_timeout
        self._proto = ClientProtocol()
        self._tag = f"{call.channel} [{config.name}]"
        self._secrets: list[str] = [config.api_key] if len(config.api_key) >= 4 else []

        # stats, readable at any time
        self.ping_rtt_ms: float | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.interruptions = 0
        self.audio_chunks_dropped = 0  # caller audio lost to a stalled socket
        self.created_at = time.monotonic()
        self.started_at: float | None = None  # monotonic, when the metadata arrived

        self._ws: ClientConnection | None = None
        self._life = Lifecycle()  # the phase and the end: see lifecycle.py
        self._ended = asyncio.Event()  # set on entering CLOSING: wakes _until_ended()
        self._ctl: collections.deque[str] = collections.deque()
        self._pongs: collections.deque[str] = collections.deque(maxlen=MAX_QUEUED_PONGS)
        self._tool_calls = 0  # running now
        self._up: collections.deque[tuple[str, int]] = collections.deque()
        self._wake = asyncio.Event()
        self._prestart = bytearray()
        self._up_buf = bytearray()
        self._chunk_bytes = 0
        self._up_backlog = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._dtmf: list[str] = []
        self._dtmf_timer: asyncio.TimerHandle | None = None
        self._warned_early_audio = False

    # ------------------------------------------------------------------ stats

    @property
    def conversation_id(self) -> str | None:
        return self._proto.conversation_id

    @property
    def last_event_id(self) -> int:
        return self._proto.last_event_id

    @property
    def started(self) -> bool:
        return self._life.talked

    @property
    def phase(self) -> Phase:
        return self._life.phase

    # ------------------------------------------------------------------ host API

    def feed_caller_audio(self, data: bytes, flush: bool = False) -> None:
        """Caller audio in the agent's input format. Never blocks; sends keep order.
        Sent in chunks of ``audio_frames_buffer_ms``; ``flush`` (the caller's speech has just
        ended: c/call.c) sends what is left over at once as a shorter chunk, so the last
        word does not wait for a chunk to fill."""
        if not self._life.live or not data:
            return
        if self._life.phase is Phase.CONNECTING:
            self._prestart += data
            excess = len(self._prestart) - PRESTART_MAX_BYTES
            if excess > 0:
                del self._prestart[:excess]
            return
        self._up_buf += data
        n = self._chunk_bytes
        while len(self._up_buf) >= n or (flush and self._up_buf):
            chunk = bytes(self._up_buf[:n])
            del self._up_buf[:n]
            self._up.append((ClientProtocol.audio_chunk(chunk), len(chunk)))
            if len(self._up) > self._up_backlog:
                self._up.popleft()  # the socket is stalled: old caller audio is worthless
                self.audio_chunks_dropped += 1
                if self.audio_chunks_dropped % 50 == 1:
                    self.log.warning(
                        "%s: network too slow, dropped %d caller audio chunks so far",
                        self._tag,
                        self.audio_chunks_dropped,
                    )
        self._wake.set()

    def send_dtmf(self, digit: str) -> None:
        """A keypad digit from the caller (see the module docstring for how it is sent)."""
        if not self._life.live:
            return
        keys = [c for c in digit.upper() if c in DTMF_DIGITS]
        if not keys:
            self.log.warning("%s: ignoring invalid DTMF digit %r", self._tag, digit[:8])
            return
        self._dtmf += keys
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
            self._dtmf_timer = None
        if "#" in keys or self._dtmf_timeout <= 0:
            self._flush_dtmf()
        else:
            loop = asyncio.get_running_loop()
            self._dtmf_timer = loop.call_later(self._dtmf_timeout, self._flush_dtmf)

    def send_contextual_update(self, text: str, context_id: str | None = None) -> None:
        """Tell the agent something without starting a turn (e.g. a call event)."""
        self._send_ctl(ClientProtocol.contextual_update(text, context_id))

    def send_user_message(self, text: str) -> None:
        self._send_ctl(ClientProtocol.user_message(text))

    def hangup(self) -> None:
        """The caller hung up: close with 1000 now; ``run()`` returns HANGUP."""
        self._end(EndReason.CALLER_HANGUP, "caller hung up", (1000, "caller hung up"))

    def shutdown(self) -> None:
        """The server is going away: close with 1001; ``run()`` returns FAILED/SHUTDOWN."""
        self._end(EndReason.SHUTDOWN, "server shutting down", (1001, "server shutting down"))

    def end(self, reason: EndReason, detail: str) -> None:
        """We end the conversation (a transfer or hangup tool): close with 1000 now;
        ``run()`` returns ``reason`` (TRANSFER, or COMPLETED for agent_ended_call)."""
        self._end(reason, detail, (1000, detail[:100]))

    # ------------------------------------------------------------------ run

    async def run(self) -> SessionResult:
        """The whole conversation. Never raises except ``CancelledError``."""
        self.log.debug("%s: starting conversation with agent %s", self._tag, self.config.agent_id)
        own_http: aiohttp.ClientSession | None = None
        try:
            initiation = self._initiation()
            if self._http is None:
                own_http = aiohttp.ClientSession()
            url = await self._until_ended(self._signed_url(self._http or own_http))
            ws = None if url is None else await self._until_ended(self._connect(url))
            if ws is not None:
                await self._conversation(ws, initiation, url or "")
        except _Failure as exc:
            self._end(exc.reason, exc.detail)
        except asyncio.CancelledError:
            self._end(EndReason.SHUTDOWN, "cancelled")
            await self._abort()
            raise
        except Exception as exc:  # a bug of ours must not take the loop down
            self.log.exception("%s: internal error in the ConvAI session", self._tag)
            self._end(EndReason.SERVER_ERROR, f"internal error: {exc!r}")
        finally:
            await self._cleanup(own_http)
            self._end(EndReason.SERVER_ERROR, "internal error: no end was decided")  # a guard
            self._to(Phase.DONE)
        result = self._result()
        self._log_end(result)
        return result

    # ------------------------------------------------------------------ phases

    def _to(self, phase: Phase) -> None:
        """Move to TALKING or DONE (CLOSING is entered by ``_end`` only); the machine
        itself, and what each phase allows, is lifecycle.py."""
        old = self._life.phase
        self._life.to(phase)
        self.log.debug("%s: %s -> %s", self._tag, old.value, phase.value)
        if phase is Phase.TALKING:
            self.started_at = time.monotonic()

    def _end(self, reason: EndReason, detail: str, close: tuple[int, str] | None = None) -> None:
        """Decide why the conversation ends and move to CLOSING; the first decision stands.

        Every end goes through here: hangup(), shutdown(), failures, the server's close.
        ``close`` is the close frame to send (code, reason); without one the socket is
        either gone already or closed by ``_cleanup``."""
        old = self._life.phase
        if not self._life.end(reason, detail, close):
            return
        self.log.debug("%s: %s -> closing (%s)", self._tag, old.value, reason.value)
        self._ended.set()
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
            self._dtmf_timer = None
        if close is not None and self._ws is not None:
            self._spawn(self._close_ws(self._ws, *close))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _until_ended(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """Run ``coro`` unless the end is decided first, e.g. by hangup() (then None)."""
        if not self._life.live:
            coro.close()
            return None
        task = asyncio.ensure_future(coro)
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._life.live:
            return task.result()
        if not task.cancelled() and task.exception() is None:
            leftover = task.result()
            ending = self._life.ending
            close = ending.close if ending is not None and ending.close else (1000, "")
            if isinstance(leftover, ClientConnection):  # connected just as the end came
                await self._close_ws(leftover, *close)
        return None

    def _initiation(self) -> str:
        cfg, call = self.config, self.call
        variables: dict[str, object] = {}
        for name, value in cfg.dynamic_variables.items():
            if name.startswith(RESERVED_VARIABLE_PREFIX):
                self.log.warning(
                    "%s: dynamic variable %r is reserved by ElevenLabs; not sent", self._tag, name
                )
                continue
            variables[name] = value
        user_id = None
        if cfg.send_caller_number:
            number = call.caller_number or "unknown"
            variables["caller_number"] = number
            variables["caller_id"] = number  # for agents written for the original module
            user_id = call.caller_number or None
        try:
            return self._proto.initiation(
                dynamic_variables=variables or None,
                overrides=cfg.overrides or None,
                user_id=user_id,
            )
        except (TypeError, ValueError) as exc:
            raise _Failure(
                EndReason.CONNECT_FAILED,
                f"agent [{cfg.name}]: overrides or dynamic variables are not JSON: {exc}",
            ) from None

    # ------------------------------------------------------------------ signed URL

    async def _signed_url(self, http: aiohttp.ClientSession | None) -> str:
        assert http is not None
        try:
            signed = await signed_url.fetch(
                http,
                self.config,
                ssl_context=self._ssl,
                log=self.log,
                tag=self._tag,
                scrub=self._scrub,
            )
        except signed_url.SignedUrlFailed as exc:
            raise _Failure(EndReason.SIGNED_URL_FAILED, str(exc)) from None
        self._secrets += signed.secrets
        self._secrets.sort(key=len, reverse=True)  # replace the longest first
        return signed.url

    # ------------------------------------------------------------------ WebSocket

    async def _connect(self, url: str) -> ClientConnection:
        cfg = self.config
        kwargs: dict[str, Any] = {}
        if url.startswith("wss:"):
            kwargs["ssl"] = self._ssl or signed_url.default_ssl_context()
        try:
            return await connect(
                url,
                open_timeout=cfg.connect_timeout,
                max_size=cfg.max_message_bytes,
                compression=None,  # small JSON + base64 audio: deflate costs CPU for little
                proxy=cfg.proxy,
                close_timeout=CLOSE_TIMEOUT,
                user_agent_header=USER_AGENT,
                logger=_WS_LOG,
                **kwargs,
            )
        except TimeoutError:
            problem = f"no WebSocket handshake within {cfg.connect_timeout:g} s"
        except InvalidStatus as exc:
            problem = f"WebSocket upgrade refused with HTTP {exc.response.status_code}"
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        raise _Failure(
            EndReason.CONNECT_FAILED,
            self._scrub(f"agent [{cfg.name}]: cannot connect to {redact_url(url)}: {problem}"),
        )

    async def _conversation(self, ws: ClientConnection, initiation: str, url: str) -> None:
        """Read until the connection closes; the end is decided on the way (``_end``)."""
        self._ws = ws
        self.log.debug("%s: connected to %s", self._tag, redact_url(url))
        self._spawn(self._writer(ws, initiation))
        deadline = asyncio.get_running_loop().time() + self.config.connect_timeout
        while True:
            try:
                if self._life.phase is Phase.CONNECTING:
                    async with asyncio.timeout_at(deadline):
                        raw = await ws.recv()
                else:  # the hot path (~19 frames per call-second): no timeout object each
                    raw = await ws.recv()
            except TimeoutError:
                self._end(
                    EndReason.CONNECT_FAILED,
                    f"agent [{self.config.name}]: no conversation_initiation_metadata within"
                    f" {self.config.connect_timeout:g} s",
                    (1000, "no conversation metadata"),
                )
                continue
            except ConnectionClosed as exc:
                self._on_closed(exc)
                return
            if self._life.live:  # once the end is decided, nothing the server says counts
                self._process(raw)

    def _on_closed(self, exc: ConnectionClosed) -> None:
        rcvd, sent = exc.rcvd, exc.sent
        self._life.close_code = rcvd.code if rcvd else sent.code if sent else None
        reason, detail = close_outcome(
            rcvd=(rcvd.code, rcvd.reason) if rcvd else None,
            sent=(sent.code, sent.reason) if sent else None,
            we_closed_first=sent is not None and (rcvd is None or exc.rcvd_then_sent is False),
            error=self._proto.last_error,
            saw_end_call=self._proto.saw_end_call,
            max_message_bytes=self.config.max_message_bytes,
        )
        self._end(reason, detail)  # a no-op when we had decided already (hangup, ...)

    async def _writer(self, ws: ClientConnection, initiation: str) -> None:
        """The only sender, so frames keep their order; control frames jump the audio."""
        try:
            await ws.send(initiation)  # must be the first frame
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._ctl or self._pongs or self._up:
                    if self._ctl or self._pongs:
                        await ws.send((self._ctl or self._pongs).popleft())
                    else:
                        text, n = self._up.popleft()
                        await ws.send(text)
                        self.bytes_up += n
        except ConnectionClosed:
            pass  # the reader sees the close and reports it
        except Exception as exc:
            self.log.exception("%s: cannot send to the agent", self._tag)
            detail = f"cannot send to the agent: {type(exc).__name__}: {exc}"
            self._end(EndReason.SERVER_ERROR, detail, (1011, "client error"))

    def _send_ctl(self, text: str) -> None:
        if not self._life.live:
            return
        self._ctl.append(text)
        self._wake.set()

    async def _close_ws(self, ws: ClientConnection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await ws.close(code, reason)

    async def _abort(self) -> None:
        """run() was cancelled: say goodbye briefly, then let the cancellation through."""
        ws = self._ws
        if ws is None:
            return
        try:
            async with asyncio.timeout(0.5):
                await ws.close(1001, "going away")
        except Exception:
            pass

    async def _cleanup(self, own_http: aiohttp.ClientSession | None) -> None:
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._ws is not None:  # normally closed already; bounded by CLOSE_TIMEOUT
            await self._close_ws(self._ws, 1000, "")
        if own_http is not None:
            with contextlib.suppress(Exception):
                await own_http.close()

    # ------------------------------------------------------------------ incoming

    def _process(self, raw: str | bytes) -> None:
        """Dispatch one server frame. Never raises (handler errors are logged)."""
        for event in self._proto.receive(raw):
            try:
                self._dispatch(event)
            except Exception:
                self.log.exception("%s: error handling %s", self._tag, type(event).__name__)
        if self._proto.has_data_to_send:
            self._pongs.extend(self._proto.data_to_send())
            self._wake.set()

    def _dispatch(self, ev: Event) -> None:
        h = self.handler
        if isinstance(ev, VadScore):  # half of what the server sends: asked first
            if self.log.isEnabledFor(logging.DEBUG):
                now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
                for line in protocol.format_vad(ev.score, now.replace("+00:00", "Z")):
                    self.log.debug("%s: %s", self._tag, line)
        elif isinstance(ev, Audio):
            if self._life.phase is Phase.CONNECTING:
                if not self._warned_early_audio:
                    self._warned_early_audio = True
                    self.log.warning("%s: agent audio before the metadata; dropped", self._tag)
            elif ev.audio:
                self.bytes_down += len(ev.audio)
                self._callback(h.on_audio, ev.event_id, ev.audio)
        elif isinstance(ev, Ping):
            if ev.ping_ms is not None:
                self.ping_rtt_ms = float(ev.ping_ms)
        elif isinstance(ev, Interruption):
            self._on_interruption(ev)
        elif isinstance(ev, ConversationInitiationMetadata):
            self._on_metadata(ev)
        elif isinstance(ev, ClientToolCall):
            self._start_tool(ev)
        elif isinstance(ev, ErrorEvent):
            self.log.warning(
                "%s: agent error %s (code %s): %s",
                self._tag,
                ev.error_type,
                ev.code,
                self._scrub(ev.message or ""),
            )
        elif isinstance(ev, AgentToolResponse):
            if ev.tool_name == "end_call" and not ev.full_payload:
                self.log.info("%s: the agent ended the call", self._tag)
        elif isinstance(ev, MalformedMessage):
            self._on_malformed(ev)
        elif isinstance(ev, UnknownMessage):
            self.log.debug("%s: ignoring unknown server message type %r", self._tag, ev.type[:64])
        self._callback(h.on_event, ev)

    def _callback(self, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            self.log.exception("%s: error in %s", self._tag, getattr(fn, "__name__", fn))

    def _on_malformed(self, ev: MalformedMessage) -> None:
        self.log.warning(
            "%s: skipping malformed server message: %s: %s", self._tag, ev.error, ev.excerpt
        )
        if ev.type == "conversation_initiation_metadata" and self._life.phase is Phase.CONNECTING:
            # Without usable metadata there is no conversation: fail now, not at the timeout.
            self._end(
                EndReason.CONNECT_FAILED,
                f"agent [{self.config.name}]: malformed conversation metadata: {ev.error}",
                (1000, "malformed conversation metadata"),
            )

    def _on_metadata(self, ev: ConversationInitiationMetadata) -> None:
        if self._life.phase is not Phase.CONNECTING:
            self.log.warning("%s: duplicate conversation metadata ignored", self._tag)
            return
        formats = (ev.user_input_audio_format, ev.agent_output_audio_format)
        if bad := sorted({f for f in formats if f not in self._formats}):
            detail = (
                f"agent [{self.config.name}] uses audio format {', '.join(bad)}"
                f" (input {formats[0]}, output {formats[1]});"
                f" supported: {', '.join(sorted(self._formats))}"
            )
            self.log.error("%s: %s", self._tag, detail)
            self._end(EndReason.UNSUPPORTED_FORMAT, detail, (1000, "unsupported audio format"))
            return
        self._to(Phase.TALKING)
        fmt = AUDIO_FORMATS[ev.user_input_audio_format]
        ms = min(max(self.config.audio_frames_buffer_ms, BUFFER_MS_MIN), BUFFER_MS_MAX)
        self._chunk_bytes = max(protocol.bytes_for_ms(fmt.name, ms), fmt.sample_width)
        self._up_backlog = max(2, math.ceil(UP_BACKLOG_MS / ms))
        # Asterisk logs the start itself; this is the protocol-level detail.
        self.log.debug(
            "%s: conversation %s started (input %s, output %s)",
            *(self._tag, ev.conversation_id, *formats),
        )
        self._callback(self.handler.on_started, Started(ev.conversation_id, *formats))
        if self._life.ending is None:  # on_started may have hung up
            self._send_held(fmt)

    def _send_held(self, fmt: AudioFormat) -> None:
        """What the caller said and typed before the conversation started: the newest
        PRESTART_MS of audio, and the digits."""
        excess = len(self._prestart) - protocol.bytes_for_ms(fmt.name, PRESTART_MS)
        if excess > 0:
            excess += -excess % fmt.sample_width  # cut whole samples only
            del self._prestart[:excess]
        early, self._prestart = bytes(self._prestart), bytearray()
        self.feed_caller_audio(early)
        if self._dtmf and self._dtmf_timer is None:
            self._flush_dtmf()

    def _on_interruption(self, ev: Interruption) -> None:
        # What to drop is the down ring's decision (protocol.py, "Interruption rule"); the
        # host logs what it dropped.
        self.interruptions += 1
        self.log.debug("%s: interruption, event_id=%d", self._tag, ev.event_id)
        self._callback(self.handler.on_interruption, ev.event_id)

    def _start_tool(self, call: ClientToolCall) -> None:
        if self._tool_calls >= MAX_TOOL_CALLS:
            self.log.warning(
                "%s: %d client tool calls already running; refusing %r",
                *(self._tag, self._tool_calls, call.tool_name),
            )
            if call.expects_response:
                text = f"Too many client tool calls at once ({MAX_TOOL_CALLS}); try again"
                self._send_ctl(ClientProtocol.tool_result(call.tool_call_id, text, True))
            return
        self._tool_calls += 1
        self._spawn(self._run_tool(call))

    async def _run_tool(self, call: ClientToolCall) -> None:
        """The tool path: a ``client_tool_call`` (its name and id already checked against
        ``protocol.ID_PATTERN``) runs its registered handler in its own task; the result goes
        back unless the agent said it expects none; then ``outcome.after`` runs (a transfer
        or the hangup tool ends the conversation there, through :meth:`end`, which is
        ``_end`` like every other end). A phase such as TRANSFERRING would be entered here."""
        try:
            await self._tool(call)
        finally:
            self._tool_calls -= 1

    async def _tool(self, call: ClientToolCall) -> None:
        if self.tools is None or call.tool_name not in self.tools:
            self.log.warning(
                "%s: the agent called client tool %r, which is not registered",
                self._tag,
                call.tool_name[:64],
            )
            outcome = ToolOutcome(f"Client tool {call.tool_name!r} is not available", True)
        else:
            outcome = await self.tools.call(call)
            if outcome.is_error:
                self.log.warning(
                    "%s: client tool %r failed: %s", self._tag, call.tool_name, outcome.result
                )
        if call.expects_response:
            self._send_ctl(
                ClientProtocol.tool_result(
                    call.tool_call_id, outcome.result, outcome.is_error, outcome.error_type
                )
            )
        if outcome.after is not None:
            await outcome.after()

    def _flush_dtmf(self) -> None:
        self._dtmf_timer = None
        if not self._dtmf or self._life.phase is not Phase.TALKING:
            return  # sent once the conversation starts
        keys, self._dtmf = "".join(self._dtmf), []
        self.log.debug("%s: DTMF %s sent to the agent", self._tag, keys)
        self._send_ctl(
            ClientProtocol.user_message(f'The caller pressed "{keys}" on the phone keypad.')
        )

    # ------------------------------------------------------------------ results

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, REDACTED)
        return text

    def _result(self) -> SessionResult:
        out = self._life.outcome()
        return SessionResult(
            out.status,
            out.reason,
            self.conversation_id,
            out.close_code,
            self._scrub(out.detail),
            out.play_out,
        )

    def _log_end(self, result: SessionResult) -> None:
        # Asterisk logs every end; a failure's cause is only known here, so it stays visible.
        level = logging.DEBUG if result.status is not Status.FAILED else logging.WARNING
        self.log.log(
            level,
            "%s: conversation %s ended: %s/%s (close code %s) after %.1f s: %s",
            self._tag,
            result.conversation_id or "-",
            result.status,
            result.reason.value,
            result.close_code,
            time.monotonic() - self.created_at,
            result.detail,
        )
