"""The embedded runtime: one asyncio loop that serves every call of the Asterisk module.

``c/pyhost.c`` imports this module on Python's owner thread, calls :func:`boot` with the
address of the C ``struct convai_host`` and then :func:`run`, which returns only when Asterisk
shuts down. Each call arrives as a C ``struct convai_session``; a :class:`CallBridge` ties it
to a :class:`convai.session.Session`:

- caller audio: the app thread fills the session's *up* ring and writes ``up_efd`` once a
  whole chunk is queued; we drain it into ``Session.feed_caller_audio``;
- agent audio: ``Session`` hands us decoded audio of any length; we cut it into exact 20 ms
  frames tagged with the event id and push them into the *down* ring, keeping any excess in a
  backlog until the ring has room;
- interruption: we raise the ring's watermark; the app thread drops stale frames itself, and
  we ask the same watermark (``convai_ring_stale``) before framing late audio or pushing the
  backlog: the ring is the one authority on the interruption rule;
- control: small command rings plus eventfds, both ways.

Nothing here ever blocks the loop, and no exception escapes into C: a broken call ends that
call (status FAILED) and the others go on.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import collections
import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from convai import protocol, tools
from convai.playout import Framer
from convai.session import AgentConfig, CallInfo, Session, SessionResult, Started
from convai.tools import Telephony, TransferTarget

from ._native import ffi, lib  # type: ignore[import-not-found]

log = logging.getLogger("convai")

# Formats the app thread can run a channel in (see convai_shared.h, enum convai_format).
SUPPORTED_FORMATS = ("ulaw_8000", "pcm_8000", "pcm_16000")
# The last partial frame of an utterance is padded and queued after this much quiet.
TAIL_FLUSH_S = 0.08
# While frames wait for ring space, look again this often (the ring holds 10 s).
TOP_UP_S = 0.5
# asyncio's TLS transport allocates and zero-fills a 256 KiB read buffer per connection
# (asyncio.sslproto.SSLProtocol.max_size); OpenSSL hands over at most one record, 16 KiB of
# plaintext, per read, so that is all a read needs. 240 KB less per wss:// call (bench/sessmem.py).
TLS_READ_BYTES = 16 * 1024

_callid: contextvars.ContextVar[int] = contextvars.ContextVar("convai_callid", default=0)
_host: Any = None
_runtime: Runtime | None = None


class AsteriskLogHandler(logging.Handler):
    """Sends Python log records to Asterisk's logger, tagged with the call's id.

    DEBUG records exist only while ``elevenlabs debug on``; they are the protocol detail the
    original module printed as NOTICE, so they keep that level and stay visible in messages.
    """

    LEVELS = (
        (logging.ERROR, lib.CONVAI_LOG_ERROR),
        (logging.WARNING, lib.CONVAI_LOG_WARNING),
        (logging.INFO, lib.CONVAI_LOG_VERBOSE),
        (logging.NOTSET, lib.CONVAI_LOG_NOTICE),
    )

    def __init__(self, host: Any) -> None:
        super().__init__()
        self._host = host

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = next(ast for py, ast in self.LEVELS if record.levelno >= py)
            callid = getattr(record, "callid", 0) or _callid.get()
            text = self.format(record)
            for line in text.splitlines() or [""]:
                self._host.log(
                    level,
                    _short_path(record.pathname).encode(errors="replace"),
                    record.lineno,
                    record.funcName.encode(errors="replace"),
                    callid,
                    ("elevenlabs: " + line).encode(errors="replace"),
                )
        except Exception:  # a log line must never take the runtime down
            self.handleError(record)


def _short_path(path: str) -> str:
    """'convai/session.py' rather than wherever the package happens to be installed."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 else path


class _LogWriter:
    """A file-like sink for stray prints and tracebacks: a daemonised Asterisk has no stderr."""

    def __init__(self, level: int) -> None:
        self._level = level
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.strip():
                log.log(self._level, "%s", line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _cstr(field: Any) -> str:
    return str(ffi.string(field).decode("utf-8", errors="replace"))


def _eventfd_drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(fd)


def extra_from(sess: Any) -> dict[str, Any]:
    """The JSON C filled in when the call started: variables, overrides, tools."""
    raw = _cstr(sess.extra_json)
    if raw:
        try:
            extra = json.loads(raw)
            if isinstance(extra, dict):
                return extra
        except ValueError:
            pass
        log.warning("ignoring unreadable dynamic variables/overrides for [%s]", _cstr(sess.agent))
    return {}


def agent_config_from(sess: Any, extra: dict[str, Any] | None = None) -> AgentConfig:
    """The agent settings C copied into the session when the call started."""
    if extra is None:
        extra = extra_from(sess)
    overrides: dict[str, Any] = {}
    if extra.get("agent"):
        overrides["agent"] = extra["agent"]
    if extra.get("voice_id"):
        overrides["tts"] = {"voice_id": extra["voice_id"]}
    return AgentConfig(
        name=_cstr(sess.agent),
        api_key=_cstr(sess.api_key),
        signed_url_endpoint=_cstr(sess.endpoint),
        agent_id=_cstr(sess.agent_id),
        send_caller_number=bool(sess.send_caller_number),
        audio_frames_buffer_ms=int(sess.buffer_ms),
        dynamic_variables={str(k): str(v) for k, v in extra.get("dynamic_variables", {}).items()},
        overrides=overrides,
    )


def call_info_from(sess: Any) -> CallInfo:
    return CallInfo(
        channel=_cstr(sess.channel),
        caller_number=_cstr(sess.caller_number) or None,
        caller_name=_cstr(sess.caller_name) or None,
        called_number=_cstr(sess.exten) or None,
        unique_id=_cstr(sess.uniqueid) or None,
    )


class CallBridge:
    """One call: the C session on one side, the ConvAI session on the other."""

    def __init__(self, runtime: Runtime, sess: Any) -> None:
        self.rt = runtime
        self.sess = sess
        self.callid = int(sess.callid)
        self.channel = _cstr(sess.channel)
        extra = extra_from(sess)
        self.config = agent_config_from(sess, extra)
        self.tag = f"{self.channel} [{self.config.name}]"  # as the session and C tag lines
        specs, targets = tools.config_from_json(extra)
        self.telephony = Telephony(self, specs, targets, log, self.tag)
        self.session = Session(
            self.config,
            call_info_from(sess),
            self,
            tools=self.telephony.registry,
            http=runtime.http(),
            log=log,
            supported_formats=SUPPORTED_FORMATS,
        )
        self.framer: Framer | None = None
        self.backlog: collections.deque[tuple[int, int, bytes]] = collections.deque()
        # (event id, cumulative frame count after the chunk): what is still queued in C.
        self.queued: collections.deque[tuple[int, int]] = collections.deque()
        self.frames_pushed = 0
        self.c_gone = False
        self.ended = False
        # One chunk per pop (see _on_up), so one chunk's room, not the whole ring's.
        self._up_buf = ffi.new("uint8_t[]", lib.CONVAI_FRAME_MAX * max(1, sess.up_batch_frames))
        self._cmd_buf = ffi.new("uint8_t[]", lib.CONVAI_CMD_BYTES)
        self._cmd_type = ffi.new("uint32_t *")
        self._stamp = ffi.new("uint32_t *")
        self._tail_timer: asyncio.TimerHandle | None = None
        self._top_up: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    # --- C side ----------------------------------------------------------------------------
    def start(self) -> None:
        self.rt.loop.add_reader(self.sess.up_efd, self._guard, self._on_up)
        ctx = contextvars.copy_context()
        ctx.run(_callid.set, self.callid)
        self.task = self.rt.loop.create_task(self._run(), context=ctx)

    def _guard(self, fn: Callable[[], None]) -> None:
        token = _callid.set(self.callid)
        try:
            fn()
        except Exception:
            log.exception("%s: internal error; ending this call", self.channel)
            self._send_end("FAILED", "server_error", "internal error in the Python runtime")
            self.session.hangup()
        finally:
            _callid.reset(token)

    def _command(self, kind: int, text: str) -> None:
        if self.c_gone:
            return
        data = text.encode("utf-8", errors="replace")[: lib.CONVAI_CMD_BYTES]
        if lib.convai_ring_push(self.sess.to_c, kind, data, len(data)) != 0:
            log.error("%s: command queue to Asterisk is full; command %d lost", self.channel, kind)
            return
        os.eventfd_write(self.sess.down_efd, 1)

    def _fields(self, n: int, count: int) -> list[str]:
        text = bytes(ffi.buffer(self._cmd_buf, n)).decode("utf-8", errors="replace")
        parts = text.split("\t", count - 1)
        return parts + [""] * (count - len(parts))

    # --- CallPort: what the tools ask of the channel thread ------------------------------------
    def transfer(self, tool_call_id: str, target: TransferTarget) -> None:
        self._command(lib.CONVAI_CMD_TRANSFER, f"{tool_call_id}\t{target.name}")

    def send_dtmf(self, digits: str) -> None:
        self._command(lib.CONVAI_CMD_SEND_DTMF, digits)

    def set_variable(self, name: str, value: str) -> None:
        self._command(lib.CONVAI_CMD_SETVAR, f"{name}={value}")

    def end_conversation(self, reason: str, detail: str) -> None:
        self.session.end(protocol.EndReason(reason), detail)

    def tell_agent(self, text: str) -> None:
        self.session.send_contextual_update(text)

    def _send_end(self, status: str, reason: str, detail: str, play_out: bool = False) -> None:
        if not self.ended:
            self.ended = True
            self._command(lib.CONVAI_CMD_END, f"{status}\t{reason}\t{detail}\t{int(play_out)}")

    def _on_up(self) -> None:
        _eventfd_drain(self.sess.up_efd)
        while (
            n := lib.convai_ring_pop(
                self.sess.to_py, self._cmd_type, self._cmd_buf, lib.CONVAI_CMD_BYTES
            )
        ) >= 0:
            kind = self._cmd_type[0]
            if kind == lib.CONVAI_CMD_DTMF:
                self.session.send_dtmf(bytes(ffi.buffer(self._cmd_buf, n)).decode())
            elif kind == lib.CONVAI_CMD_TRANSFER_STATE:
                call_id, state, detail = self._fields(n, 3)
                self.telephony.on_transfer_state(call_id, state, detail)
            elif kind == lib.CONVAI_CMD_TOOL_RESULT:
                call_id, is_error, result = self._fields(n, 3)
                if not self.telephony.on_tool_result(call_id, result, is_error == "1"):
                    log.warning(
                        "%s: ElevenLabsConvAIToolResult for %r, which no ami tool call awaits",
                        self.tag,
                        tools.clean_text(call_id, 64),
                    )
            elif kind == lib.CONVAI_CMD_HANGUP:
                self.c_gone = True
                self.session.hangup()
        # One pop per chunk, so each chunk's wait (its last frame queued -> handed over) is
        # sampled, also when several piled up while the loop was busy.
        batch = max(1, int(self.sess.up_batch_frames))
        while n := lib.convai_ring_pop_many(
            self.sess.up, self._up_buf, len(self._up_buf), batch, self._stamp
        ):
            lib.convai_hist_add(
                self.sess,
                lib.CONVAI_HIST_UPLINK,
                (lib.convai_now_us() - self._stamp[0]) & 0xFFFFFFFF,
            )
            if not self.c_gone:
                self.session.feed_caller_audio(bytes(ffi.buffer(self._up_buf, n)))
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BYTES_UP, self.session.bytes_up)

    # --- agent audio toward the caller --------------------------------------------------------
    def _push(self, frames: list[tuple[int, bytes]]) -> None:
        ring = self.sess.down
        frames = [f for f in frames if not lib.convai_ring_stale(ring, f[0])]
        if not frames:
            return
        # Stamped with their arrival, so C can measure arrival -> first frame written.
        stamp = lib.convai_now_us()
        self.backlog.extend((ev, stamp, frame) for ev, frame in frames)
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        ring = self.sess.down
        chunk_id, count = -1, 0
        while self.backlog:
            event_id, stamp, frame = self.backlog[0]
            if lib.convai_ring_push_stamped(ring, event_id, stamp, frame, len(frame)) != 0:
                break
            self.backlog.popleft()
            self.frames_pushed += 1
            if event_id != chunk_id and count:
                self.queued.append((chunk_id, self.frames_pushed - 1))
            chunk_id, count = event_id, count + 1
        if count:
            self.queued.append((chunk_id, self.frames_pushed))
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BACKLOG_FRAMES, len(self.backlog))
        if self.backlog and self._top_up is None and not self.c_gone:
            self._top_up = self.rt.loop.call_later(TOP_UP_S, self._guard, self._on_top_up)

    def _on_top_up(self) -> None:
        self._top_up = None
        self._drain_backlog()

    def _on_tail_timer(self) -> None:
        self._tail_timer = None
        if self.framer:
            self._push(self.framer.flush())

    def _consumed(self) -> int:
        return int(
            lib.convai_stat_get(self.sess, lib.CONVAI_STAT_FRAMES_PLAYED)
            + lib.convai_ring_skipped(self.sess.down)
        )

    # --- SessionHandler ------------------------------------------------------------------------
    def on_started(self, started: Started) -> None:
        # The session has already refused formats outside SUPPORTED_FORMATS.
        fmt = protocol.AUDIO_FORMATS[started.output_format]
        self.framer = Framer(fmt.frame_bytes, fmt.silence_byte)
        self._command(
            lib.CONVAI_CMD_STARTED,
            f"{started.conversation_id}\t{started.input_format}\t{started.output_format}",
        )

    def on_audio(self, event_id: int, audio: bytes) -> None:
        if self.framer is None or self.ended:
            return
        if lib.convai_ring_stale(self.sess.down, event_id):
            # Late stale audio is never framed, so it cannot pad the reply's frames.
            log.debug(
                "%s: dropping late audio chunk with event_id=%d (older than the last"
                " interruption), %d bytes",
                self.tag,
                event_id,
                len(audio),
            )
            return
        self.telephony.on_agent_audio()
        self._push(self.framer.feed(event_id, audio))
        if self._tail_timer:
            self._tail_timer.cancel()
        self._tail_timer = (
            self.rt.loop.call_later(TAIL_FLUSH_S, self._guard, self._on_tail_timer)
            if self.framer.pending
            else None
        )
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BYTES_DOWN, self.session.bytes_down)
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_LAST_EVENT_ID, event_id)

    def on_interruption(self, event_id: int) -> None:
        # The stamp first: the watermark's release store publishes it to the app thread.
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_INTERRUPT_STAMP, lib.convai_now_us())
        lib.convai_ring_drop_below(self.sess.down, event_id)
        consumed = self._consumed()
        while self.queued and self.queued[0][1] <= consumed:
            self.queued.popleft()
        ring = self.sess.down
        removed = [ev for ev, _ in self.queued if lib.convai_ring_stale(ring, ev)]
        remaining = len(self.queued) - len(removed)
        removed += sorted({ev for ev, _, _ in self.backlog if lib.convai_ring_stale(ring, ev)})
        self.backlog = collections.deque(
            f for f in self.backlog if not lib.convai_ring_stale(ring, f[0])
        )
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BACKLOG_FRAMES, len(self.backlog))
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_INTERRUPTIONS, self.session.interruptions)
        if log.isEnabledFor(logging.DEBUG):
            for line in protocol.format_interruption(event_id, removed, remaining):
                log.debug("%s: %s", self.tag, line)
        self._command(
            lib.CONVAI_CMD_EVENT, f"ElevenLabsConvAIInterruption\r\nEventID: {event_id}\r\n"
        )

    def on_event(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.AgentResponseComplete) and self.framer:
            self._push(self.framer.flush())
        elif isinstance(event, protocol.Ping) and self.session.ping_rtt_ms is not None:
            lib.convai_stat_set(
                self.sess, lib.CONVAI_STAT_PING_RTT_US, int(self.session.ping_rtt_ms * 1000)
            )
        elif isinstance(event, protocol.ClientToolCall):
            # Every field from the server goes through clean_text: no CR/LF, so no header
            # can be injected into the AMI event.
            params = json.dumps(event.parameters, separators=(",", ":"), ensure_ascii=True)
            handler = self.telephony.handler_kind(event.tool_name)
            self._command(
                lib.CONVAI_CMD_EVENT,
                "ElevenLabsConvAIToolCall\r\n"
                f"ToolName: {tools.clean_text(event.tool_name, 64)}\r\n"
                f"ToolCallID: {tools.clean_text(event.tool_call_id, 128)}\r\n"
                f"Parameters: {tools.clean_text(params, 600)}\r\nHandler: {handler}\r\n",
            )
        elif isinstance(event, protocol.AgentToolResponse) and not event.full_payload:
            self.telephony.on_system_tool(event)
            if event.tool_name in tools.SYSTEM_TOOLS:
                self._command(
                    lib.CONVAI_CMD_EVENT,
                    "ElevenLabsConvAISystemTool\r\n"
                    f"ToolName: {event.tool_name}\r\n"
                    f"ToolCallID: {tools.clean_text(event.tool_call_id, 128)}\r\n"
                    f"IsError: {'true' if event.is_error else 'false'}\r\n",
                )

    # --- lifetime -------------------------------------------------------------------------------
    async def _run(self) -> None:
        result: SessionResult | None = None
        try:
            result = await self.session.run()
        except asyncio.CancelledError:
            self._send_end("FAILED", protocol.EndReason.SHUTDOWN.value, "Asterisk is shutting down")
        except Exception:
            log.exception("%s: internal error in the ConvAI session", self.channel)
            self._send_end("FAILED", "server_error", "internal error in the Python runtime")
        try:
            if result is not None:
                await self._finish(result)
        finally:
            self._close()

    async def _finish(self, result: SessionResult) -> None:
        # The session decided whether the agent's last words play (lifecycle.py): then all
        # of them must reach the ring before C is told to drain and leave.
        if result.play_out:
            if self.framer:
                self._push(self.framer.flush())
            while self.backlog and not self.c_gone:
                await asyncio.sleep(TOP_UP_S)
                self._drain_backlog()
        detail = result.detail.replace("\t", " ").replace("\n", " ")
        self._send_end(result.status, result.reason.value, detail, result.play_out)

    def _close(self) -> None:
        self.telephony.close()
        for timer in (self._tail_timer, self._top_up):
            if timer:
                timer.cancel()
        self.rt.loop.remove_reader(self.sess.up_efd)
        self.rt.bridges.discard(self)
        self.backlog.clear()
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BACKLOG_FRAMES, 0)
        sess, self.sess = self.sess, None
        _host.release_session(sess)


class Runtime:
    """The loop and the set of live calls."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self.bridges: set[CallBridge] = set()
        self.stopping = False
        self.started_at = time.monotonic()
        self._http: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        """One HTTP client for every call's signed-URL request: its pooled keep-alive
        connection is reused by the next call, where a client per call held one socket (and,
        over https, one TLS connection) for the whole call. No cookies: calls share nothing."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                # As many at once as calls start; an idle connection goes after 1 s, so none
                # outlives a burst of call starts by much (fds return to idle).
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=1.0),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._http

    def on_wake(self) -> None:
        _eventfd_drain(self.host.wake_efd)
        _apply_debug(self.host)
        if stall_ms := lib.convai_host_take_stall(self.host):
            # Test hook (`elevenlabs test stall`): block the loop as a slow callback would.
            log.warning("test: stalling the Python loop for %d ms", stall_ms)
            time.sleep(stall_ms / 1000)
        if lib.convai_host_stopping(self.host):
            if not self.stopping:
                self.stopping = True
                self.loop.create_task(self._shutdown())
            return
        while (sess := self.host.take_session()) != ffi.NULL:
            self._start_call(sess)

    def _start_call(self, sess: Any) -> None:
        try:
            bridge = CallBridge(self, sess)
        except Exception:
            log.exception("cannot start a conversation on %s", _cstr(sess.channel))
            text = b"FAILED\tserver_error\tinternal error in the Python runtime"
            lib.convai_ring_push(sess.to_c, lib.CONVAI_CMD_END, text, len(text))
            os.eventfd_write(sess.down_efd, 1)
            self.host.release_session(sess)
            return
        self.bridges.add(bridge)
        bridge.start()

    async def _shutdown(self) -> None:
        tasks = [b.task for b in self.bridges if b.task]
        for bridge in list(self.bridges):
            bridge.session.shutdown()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
        self.loop.stop()

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        log.error(
            "unhandled error in the asyncio loop: %s",
            context.get("message", ""),
            exc_info=(type(exc), exc, exc.__traceback__) if exc else None,
        )


def _apply_debug(host: Any) -> None:
    log.setLevel(logging.DEBUG if lib.convai_host_debug(host) else logging.INFO)


def boot(address: int) -> None:
    """Called once by C on the owner thread; must return quickly."""
    global _host, _runtime
    host = ffi.cast("struct convai_host *", address)
    if host.magic != lib.CONVAI_HOST_MAGIC or host.abi_version != lib.CONVAI_ABI_VERSION:
        raise RuntimeError(
            f"module/package mismatch: C ABI {host.abi_version}, "
            f"Python ABI {lib.CONVAI_ABI_VERSION}"
        )
    _host = host
    handler = AsteriskLogHandler(host)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # third-party libraries: problems only
    log.propagate = True
    _apply_debug(host)
    sys.stdout = _LogWriter(logging.INFO)  # type: ignore[assignment]
    sys.stderr = _LogWriter(logging.WARNING)  # type: ignore[assignment]
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BYTES
    _runtime = Runtime(host)
    asyncio.set_event_loop(_runtime.loop)
    _runtime.loop.set_exception_handler(_runtime.exception_handler)
    _runtime.loop.add_reader(host.wake_efd, _runtime.on_wake)


def run() -> None:
    """Run the loop until Asterisk shuts down. Never raises."""
    assert _runtime is not None, "boot() first"
    try:
        _runtime.loop.run_forever()
    except BaseException:
        log.exception("the asyncio loop stopped unexpectedly")
    finally:
        log.debug("runtime stopped after %.0f s", time.monotonic() - _runtime.started_at)
