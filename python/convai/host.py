"""The embedded runtime: one asyncio loop that serves every call of the Asterisk module.

``c/pyhost.c`` imports this module on Python's owner thread, calls :func:`boot` with the
address of the C ``struct convai_host`` and then :func:`run`, which returns only when Asterisk
shuts down. Each call arrives as a C ``struct convai_session``; a :class:`CallBridge` ties it
to a :class:`convai.session.Session`:

- caller audio: the app thread fills the session's *up* ring and lists the session on the
  host's ready list (one eventfd for every call) once a
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
import enum
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from convai import contract, protocol, tools
from convai.lifecycle import Status
from convai.playout import Framer
from convai.protocol import EndReason
from convai.session import AgentConfig, CallInfo, Session, Started
from convai.tools import Telephony, TransferTarget

from ._native import ffi, lib  # type: ignore[import-not-found]

log = logging.getLogger("convai")

# The last partial frame of an utterance is padded and queued after this much quiet.
TAIL_FLUSH_S = 0.08
# While frames wait for ring space, look again this often (the ring holds 1.28 s).
TOP_UP_S = 0.25
# Agent audio a call may hold beyond the ring (1.28 s): with it, at most 61.28 s are queued,
# 2.5 MB at pcm_16000 (0.95 MB at ulaw_8000). The service sends faster than real time, but
# no reply needs more; a flood beyond is dropped, counted and logged (docs/ARCHITECTURE.md).
BACKLOG_MAX_S = 60
BACKLOG_MAX_FRAMES = BACKLOG_MAX_S * 50
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


class Phase(enum.Enum):
    """A bridge's phases; :meth:`CallBridge._enter` is the only place they change.

    CONNECTING --STARTED sent--> TALKING --the session ended--> ENDING --END sent--> DONE
    any phase --C said the channel has gone--> DONE

    In ENDING the agent's last words still move from the backlog into the ring; in DONE
    nothing more goes to C. The end is decided once, in :meth:`CallBridge._run`.
    """

    CONNECTING = 1
    TALKING = 2
    ENDING = 3
    DONE = 4


_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.CONNECTING: frozenset({Phase.TALKING, Phase.ENDING, Phase.DONE}),
    Phase.TALKING: frozenset({Phase.ENDING, Phase.DONE}),
    Phase.ENDING: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


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
            supported_formats=tuple(contract.FORMATS),
        )
        self.phase = Phase.CONNECTING
        self.framer: Framer | None = None
        # Agent audio waiting for ring space, in runs of whole frames of one event id (as the
        # framer cut them): (ring event id, arrival stamp, frames); backlog_frames counts them.
        self.backlog: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self.backlog_frames = 0
        self.backlog_max = BACKLOG_MAX_FRAMES
        self.frame_bytes = int(lib.CONVAI_FRAME_MAX)  # the output format's, once started
        self.dropped = 0  # frames refused over the ceiling (CONVAI_STAT_BACKLOG_DROPPED)
        # (event id, frames pushed once its chunk was in): the chunks still in the ring, for
        # the interruption's debug line; pruned as C plays them, so at most the ring's worth.
        self.in_ring: collections.deque[tuple[int, int]] = collections.deque()
        self.frames_pushed = 0
        # One chunk per pop (see _on_up), so one chunk's room, not the whole ring's.
        self._up_buf = ffi.new("uint8_t[]", lib.CONVAI_FRAME_MAX * max(1, sess.up_batch_frames))
        self._cmd_buf = ffi.new("uint32_t[]", lib.CONVAI_CMD_BYTES // 4 + 1)  # aligned records
        self._cmd_type = ffi.new("uint32_t *")
        self._stamp = ffi.new("uint32_t *")
        self._mark = ffi.new("uint32_t *")
        self._tail_timer: asyncio.TimerHandle | None = None
        self._top_up: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    # --- phases ----------------------------------------------------------------------------
    def _enter(self, to: Phase) -> bool:
        """The one place the phase changes; False (and nothing changes) for a move the
        current phase does not allow."""
        if to not in _MOVES[self.phase]:
            return False
        self.phase = to
        return True

    # --- C side ----------------------------------------------------------------------------
    def start(self) -> None:
        ctx = contextvars.copy_context()
        ctx.run(_callid.set, self.callid)
        self.task = self.rt.loop.create_task(self._run(), context=ctx)

    def _guard(self, fn: Callable[[], None]) -> None:
        """Runs a loop callback: an exception ends this call (FAILED), never the runtime."""
        token = _callid.set(self.callid)
        try:
            fn()
        except Exception:
            log.exception("%s: internal error; ending this call", self.channel)
            self.session.end(EndReason.SERVER_ERROR, "internal error in the Python runtime")
        finally:
            _callid.reset(token)

    def _send(self, kind: int, **fields: object) -> None:
        """One command to the channel thread, as its typed record (convai_shared.h)."""
        if self.phase is Phase.DONE:
            return
        rec = contract.encode(kind, **fields)
        if lib.convai_ring_push(self.sess.to_c, kind, rec, ffi.sizeof(rec[0])) != 0:
            log.error("%s: command queue to Asterisk is full; command %d lost", self.channel, kind)
            return
        os.eventfd_write(self.sess.down_efd, 1)

    def _on_up(self) -> None:
        """Caller audio and commands from the channel thread (the host's ready list)."""
        while (
            n := lib.convai_ring_pop(
                self.sess.to_py, self._cmd_type, self._cmd_buf, lib.CONVAI_CMD_BYTES
            )
        ) >= 0:
            self._on_command(int(self._cmd_type[0]), n)
        # One pop per chunk, so each chunk's wait (its last frame queued -> handed over) is
        # sampled, also when several piled up while the loop was busy.
        # A pop stops after a slot marked CONVAI_UP_END_OF_SPEECH: the caller has stopped
        # talking, so the chunk it ends goes to the agent now, however short (flush).
        batch = max(1, int(self.sess.up_batch_frames))
        while n := lib.convai_ring_pop_many(
            self.sess.up, self._up_buf, len(self._up_buf), batch, self._stamp, self._mark
        ):
            lib.convai_hist_add(
                self.sess,
                lib.CONVAI_HIST_UPLINK,
                (lib.convai_now_us() - self._stamp[0]) & 0xFFFFFFFF,
            )
            if self.phase is not Phase.DONE:
                self.session.feed_caller_audio(
                    bytes(ffi.buffer(self._up_buf, n)),
                    flush=self._mark[0] == lib.CONVAI_UP_END_OF_SPEECH,
                )
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BYTES_UP, self.session.bytes_up)

    def _on_command(self, kind: int, n: int) -> None:
        """A command from the channel thread (C -> Python types of convai_shared.h)."""
        rec = contract.decode(kind, self._cmd_buf, n)
        if rec is None:
            log.warning("%s: ignoring command %d of %d bytes from Asterisk", self.channel, kind, n)
        elif kind == lib.CONVAI_CMD_DTMF:
            self.session.send_dtmf(rec.digit.decode("ascii", errors="replace"))
        elif kind == lib.CONVAI_CMD_HANGUP:
            self._on_hangup(rec.reason)
        elif kind == lib.CONVAI_CMD_TRANSFER_STATE:
            state = contract.XFER_STATES.get(rec.state, "failed")
            self.telephony.on_transfer_state(
                contract.text(rec.tool_call_id), state, contract.text(rec.detail)
            )
        elif kind == lib.CONVAI_CMD_TOOL_RESULT:
            call_id = contract.text(rec.tool_call_id)
            if not self.telephony.on_tool_result(
                call_id, contract.text(rec.result), bool(rec.is_error)
            ):
                log.warning(
                    "%s: ElevenLabsConvAIToolResult for %r, which no ami tool call awaits",
                    self.tag,
                    tools.clean_text(call_id, 64),
                )

    def _on_hangup(self, reason: int) -> None:
        if reason == lib.CONVAI_REASON_MAX_DURATION:
            # C plays out what the ring holds and ignores our END: just close the socket.
            self.session.end(EndReason.MAX_DURATION, "max_duration reached")
            return
        self._enter(Phase.DONE)  # the channel has gone: nothing more goes to C
        if reason == lib.CONVAI_REASON_SHUTDOWN:
            self.session.shutdown()
        else:
            self.session.hangup()

    # --- agent audio toward the caller --------------------------------------------------------
    def _push(self, runs: list[tuple[int, bytes]]) -> None:
        """Queue the framer's runs (whole frames of one event id each): one C call per run
        and per top-up, not per frame (this is the hot path of agent audio)."""
        ring = self.sess.down
        if self.phase is Phase.DONE:
            return
        # Stamped with their arrival, so C can measure arrival -> first frame written.
        stamp, queued = lib.convai_now_us(), False
        # An utterance starts (nothing queued, or a new event id): the channel thread is woken
        # to play it at once instead of at its next tick (c/call.c, call_start_at_once).
        first = contract.ring_id(runs[0][0]) if runs else 0
        starts = not lib.convai_ring_count(ring) or (
            bool(self.in_ring) and self.in_ring[-1][0] != first
        )
        for ev, data in runs:
            event_id = contract.ring_id(ev)
            if not lib.convai_ring_stale(ring, event_id):
                self.backlog.append((event_id, stamp, data))
                self.backlog_frames += len(data) // self.frame_bytes
                queued = True
        if queued:
            self._drain_backlog()
            if starts:
                os.eventfd_write(self.sess.down_efd, 1)

    def _drop_excess(self) -> None:
        """A flood beyond the backlog's ceiling: its newest frames are refused, counted and
        logged (once per call)."""
        excess = self.backlog_frames - self.backlog_max
        if excess <= 0:
            return
        self.backlog_frames -= excess
        cut = excess * self.frame_bytes
        while cut:
            event_id, stamp, data = self.backlog.pop()
            if len(data) > cut:
                self.backlog.append((event_id, stamp, data[: len(data) - cut]))
                break
            cut -= len(data)
        if not self.dropped:
            log.warning(
                "%s: the agent sent more audio than the %d s the call may queue; "
                "dropping the excess (counted in the Stats event as BacklogDropped)",
                self.tag,
                BACKLOG_MAX_S,
            )
        self.dropped += excess
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BACKLOG_DROPPED, self.dropped)

    def _drain_backlog(self) -> None:
        """Moves what fits from the backlog into the ring; stale frames (below the ring's
        watermark) are skipped, as the channel thread would skip them."""
        ring, size = self.sess.down, self.frame_bytes
        self._prune_in_ring()
        while self.backlog:
            event_id, stamp, data = self.backlog[0]
            n = len(data) // size
            if lib.convai_ring_stale(ring, event_id):
                done = n  # skipped, as the channel thread would skip them
            else:
                done = max(0, lib.convai_ring_push_run(ring, event_id, stamp, data, size, n))
                if done:
                    self.frames_pushed += done
                    if self.in_ring and self.in_ring[-1][0] == event_id:
                        self.in_ring[-1] = (event_id, self.frames_pushed)
                    else:
                        self.in_ring.append((event_id, self.frames_pushed))
            self.backlog_frames -= done
            if done < n:  # the ring is full: the rest waits for the top-up
                self.backlog[0] = (event_id, stamp, data[done * size :])
                break
            self.backlog.popleft()
        self._drop_excess()
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BACKLOG_FRAMES, self.backlog_frames)
        if self.backlog and self._top_up is None and self.phase is not Phase.DONE:
            self._top_up = self.rt.loop.call_later(TOP_UP_S, self._guard, self._on_top_up)

    def _prune_in_ring(self) -> None:
        consumed = int(
            lib.convai_stat_get(self.sess, lib.CONVAI_STAT_FRAMES_PLAYED)
            + lib.convai_ring_skipped(self.sess.down)
        )
        while self.in_ring and self.in_ring[0][1] <= consumed:
            self.in_ring.popleft()

    def _on_top_up(self) -> None:
        self._top_up = None
        self._drain_backlog()

    def _on_tail_timer(self) -> None:
        self._tail_timer = None
        if self.framer:
            self._push(self.framer.flush())

    # --- SessionHandler ------------------------------------------------------------------------
    def on_started(self, started: Started) -> None:
        # The session has already refused formats outside contract.FORMATS.
        out = contract.FORMATS[started.output_format]
        self.framer = Framer(out.frame_bytes, out.silence)
        self.frame_bytes = out.frame_bytes
        self._send(
            lib.CONVAI_CMD_STARTED,
            in_format=contract.FORMATS[started.input_format].code,
            out_format=out.code,
            conversation_id=started.conversation_id,
        )
        self._enter(Phase.TALKING)

    def on_audio(self, event_id: int, audio: bytes) -> None:
        if self.framer is None or self.phase is not Phase.TALKING:
            return
        if lib.convai_ring_stale(self.sess.down, contract.ring_id(event_id)):
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
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_LAST_EVENT_ID, contract.ring_id(event_id))

    def on_interruption(self, event_id: int) -> None:
        ring, below = self.sess.down, contract.ring_id(event_id)
        # The stamp first: the watermark's release store publishes it to the app thread.
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_INTERRUPT_STAMP, lib.convai_now_us())
        lib.convai_ring_drop_below(ring, below)
        # The ring is the authority: what it calls stale goes (a stale partial frame in the
        # framer goes when it is pushed).
        self._prune_in_ring()
        removed = [ev for ev, _ in self.in_ring if lib.convai_ring_stale(ring, ev)]
        remaining = len(self.in_ring) - len(removed)
        removed += sorted({ev for ev, _, _ in self.backlog if lib.convai_ring_stale(ring, ev)})
        self.backlog = collections.deque(
            f for f in self.backlog if not lib.convai_ring_stale(ring, f[0])
        )
        self.backlog_frames = sum(len(f[2]) for f in self.backlog) // self.frame_bytes
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BACKLOG_FRAMES, self.backlog_frames)
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_INTERRUPTIONS, self.session.interruptions)
        if log.isEnabledFor(logging.DEBUG):
            for line in protocol.format_interruption(event_id, removed, remaining):
                log.debug("%s: %s", self.tag, line)
        self._send(lib.CONVAI_CMD_INTERRUPTION, event_id=below)

    def on_event(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.AgentResponseComplete) and self.framer:
            self._push(self.framer.flush())
        elif isinstance(event, protocol.Ping) and self.session.ping_rtt_ms is not None:
            lib.convai_stat_set(
                self.sess, lib.CONVAI_STAT_PING_RTT_US, int(self.session.ping_rtt_ms * 1000)
            )
        elif isinstance(event, protocol.ClientToolCall):
            # C cleans every field again before it reaches the AMI event.
            self._send(
                lib.CONVAI_CMD_TOOL_CALL,
                tool_name=event.tool_name,
                tool_call_id=event.tool_call_id,
                parameters=json.dumps(event.parameters, separators=(",", ":"), ensure_ascii=True),
                handler=self.telephony.handler_kind(event.tool_name),
            )
        elif isinstance(event, protocol.AgentToolResponse) and not event.full_payload:
            self.telephony.on_system_tool(event)
            if event.tool_name in tools.SYSTEM_TOOLS:
                self._send(
                    lib.CONVAI_CMD_SYSTEM_TOOL,
                    tool_name=event.tool_name,
                    tool_call_id=event.tool_call_id,
                    is_error=int(bool(event.is_error)),
                )

    # --- CallPort: what the tools ask of the channel thread ------------------------------------
    def transfer(self, tool_call_id: str, target: TransferTarget) -> None:
        self._send(lib.CONVAI_CMD_TRANSFER, tool_call_id=tool_call_id, target=target.name)

    def send_dtmf(self, digits: str) -> None:
        self._send(lib.CONVAI_CMD_SEND_DTMF, digits=digits)

    def set_variable(self, name: str, value: str) -> None:
        """``ELEVENLABS_<...>`` on the channel (C refuses any other name)."""
        self._send(lib.CONVAI_CMD_SETVAR, name=name, value=value)

    def end_conversation(self, reason: str, detail: str) -> None:
        self.session.end(protocol.EndReason(reason), detail)

    def tell_agent(self, text: str) -> None:
        self.session.send_contextual_update(text)

    # --- lifetime -------------------------------------------------------------------------------
    async def _run(self) -> None:
        """The conversation, then its end: decided here, once, whatever happened before."""
        status, reason, play_out = Status.FAILED, EndReason.SERVER_ERROR, False
        try:
            result = await self.session.run()
            # The session decided whether the agent's last words play (lifecycle.py).
            status, reason, play_out = result.status, result.reason, result.play_out
            self._enter(Phase.ENDING)
            if play_out:
                await self._play_out()
        except asyncio.CancelledError:
            status, reason, play_out = Status.FAILED, EndReason.SHUTDOWN, False
        except Exception:
            log.exception("%s: internal error in the ConvAI session", self.channel)
        finally:
            self._end(status, reason, play_out)

    async def _play_out(self) -> None:
        """Everything the agent said reaches the ring before C is told to play it out and
        leave. Bounded: the backlog holds at most BACKLOG_MAX_S and C plays 1 s per second."""
        if self.framer:
            self._push(self.framer.flush())
        while self.backlog and self.phase is not Phase.DONE:
            await asyncio.sleep(TOP_UP_S)
            self._drain_backlog()

    def _end(self, status: str, reason: EndReason, play_out: bool) -> None:
        """END to C (unless it has gone) and the bridge's resources freed. Never raises:
        whatever failed before, the channel thread must hear of the end."""
        try:
            self._send(
                lib.CONVAI_CMD_END,
                status=contract.STATUSES.get(status, lib.CONVAI_STATUS_FAILED),
                reason=contract.REASONS.get(reason.value, lib.CONVAI_REASON_SERVER_ERROR),
                play_out=int(play_out),
            )
        except Exception:
            log.exception("%s: cannot send the end of the call to Asterisk", self.channel)
            _send_end_raw(self.sess)
        finally:
            self._enter(Phase.DONE)
            self._close()

    def _close(self) -> None:
        self.telephony.close()
        for timer in (self._tail_timer, self._top_up):
            if timer:
                timer.cancel()
        self.rt.bridges.pop(int(self.sess.id), None)
        self.backlog.clear()
        self.backlog_frames = 0
        self.in_ring.clear()
        lib.convai_stat_set(self.sess, lib.CONVAI_STAT_BACKLOG_FRAMES, 0)
        sess, self.sess = self.sess, None
        _host.release_session(sess)


def _send_end_raw(sess: Any) -> None:
    """FAILED/server_error straight into the command ring: the last resort of an end."""
    rec = ffi.new(
        "struct convai_cmd_end *",
        {"status": lib.CONVAI_STATUS_FAILED, "reason": lib.CONVAI_REASON_SERVER_ERROR},
    )
    if lib.convai_ring_push(sess.to_c, lib.CONVAI_CMD_END, rec, ffi.sizeof(rec[0])) == 0:
        os.eventfd_write(sess.down_efd, 1)


class Runtime:
    """The loop and the set of live calls."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self.bridges: dict[int, CallBridge] = {}  # by session id
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
        else:
            while (sess := self.host.take_session()) != ffi.NULL:
                self._start_call(sess)
        self._on_ready()

    def _on_ready(self) -> None:
        """Every session the channel threads listed since the last look: caller audio or a
        command is waiting. One eventfd for every call, where each had its own (fds per call
        are an issue-12 target); the list holds a reference to each, dropped here."""
        sess = lib.convai_host_take_ready(self.host)
        while sess != ffi.NULL:
            nxt = lib.convai_session_unready(sess)
            bridge = self.bridges.get(int(sess.id))
            if bridge is not None and bridge.sess is not None:
                bridge._guard(bridge._on_up)
            self.host.release_session(sess)
            sess = nxt

    def _start_call(self, sess: Any) -> None:
        if sess.magic != lib.CONVAI_SESSION_MAGIC:
            log.error("a call's session block is corrupt (magic %#x); ignoring it", sess.magic)
            return
        try:
            bridge = CallBridge(self, sess)
        except Exception:
            log.exception("cannot start a conversation on %s", _cstr(sess.channel))
            _send_end_raw(sess)
            self.host.release_session(sess)
            return
        self.bridges[int(sess.id)] = bridge
        bridge.start()

    async def _shutdown(self) -> None:
        tasks = [b.task for b in self.bridges.values() if b.task]
        for bridge in list(self.bridges.values()):
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
    level = logging.DEBUG if lib.convai_host_debug(host) else logging.INFO
    if log.level != level:  # setLevel clears every logger's level cache: not on each wake
        log.setLevel(level)


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
