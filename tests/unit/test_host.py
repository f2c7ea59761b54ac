"""convai.host's CallBridge against a real C session block and real rings (through cffi):
the backlog and its ceiling, huge event ids, the command codec both ways, and an end that
always reaches the channel thread. No Asterisk: the test plays the channel thread's part."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from native import load

native = load()
ffi, lib = native.ffi, native.lib

from convai import contract, host  # noqa: E402  (needs convai._native)
from convai.lifecycle import Status  # noqa: E402
from convai.protocol import ClientToolCall, EndReason  # noqa: E402
from convai.session import SessionResult, Started  # noqa: E402

ULAW = 160


def _ring(keep: list[Any], slots: int, slot_bytes: int) -> Any:
    mem = ffi.new("char[]", lib.convai_ring_size(slots, slot_bytes) + 64)
    keep.append(mem)
    ring = ffi.cast("struct convai_ring *", (int(ffi.cast("uintptr_t", mem)) + 63) & ~63)
    assert lib.convai_ring_init(ring, slots, slot_bytes) == 0
    return ring


class Call:
    """A C session block as app_elevenlabs_convai.c fills it, and the bridge serving it."""

    def __init__(self) -> None:
        self.keep: list[Any] = []
        s = self.sess = ffi.new("struct convai_session *")
        s.magic = lib.CONVAI_SESSION_MAGIC
        s.down_efd = os.eventfd(0, os.EFD_NONBLOCK)
        s.up_batch_frames = 12
        s.buffer_ms = 240
        s.channel = b"Local/test-00000001;2"
        s.agent, s.agent_id = b"sim", b"agent_test"
        s.api_key, s.endpoint = b"k" * 20, b"http://127.0.0.1:9/signed-url"
        s.up = _ring(self.keep, lib.CONVAI_UP_SLOTS_MIN, lib.CONVAI_FRAME_MAX)
        s.down = _ring(self.keep, lib.CONVAI_DOWN_SLOTS, lib.CONVAI_FRAME_MAX)
        s.to_c = _ring(self.keep, lib.CONVAI_CMD_SLOTS, lib.CONVAI_CMD_BYTES)
        s.to_py = _ring(self.keep, lib.CONVAI_CMD_SLOTS, lib.CONVAI_CMD_BYTES)
        self.loop = asyncio.new_event_loop()
        self.released: list[Any] = []
        host._host = SimpleNamespace(release_session=self.released.append)
        self.bridge = host.CallBridge(
            SimpleNamespace(loop=self.loop, bridges={}, http=lambda: None), s
        )

    def talking(self) -> host.CallBridge:
        self.bridge.on_started(Started("conv_1", "ulaw_8000", "ulaw_8000"))
        assert self.commands()[0][0] == lib.CONVAI_CMD_STARTED
        return self.bridge

    def commands(self) -> list[tuple[int, Any]]:
        """What Python sent the channel thread, decoded as C reads it."""
        out, kind = [], ffi.new("uint32_t *")
        while True:
            buf = ffi.new("uint32_t[]", lib.CONVAI_CMD_BYTES // 4 + 1)
            self.keep.append(buf)  # the decoded record points into it
            n = lib.convai_ring_pop(self.sess.to_c, kind, buf, lib.CONVAI_CMD_BYTES)
            if n < 0:
                return out
            assert n == lib.convai_cmd_size(kind[0])
            out.append((kind[0], contract.decode(kind[0], buf, n)))

    def play(self, frames: int) -> list[tuple[int, bytes]]:
        """The channel thread's playout: pop frames from the down ring."""
        out, ev, buf = [], ffi.new("uint32_t *"), ffi.new("uint8_t[]", lib.CONVAI_FRAME_MAX)
        for _ in range(frames):
            n = lib.convai_ring_pop(self.sess.down, ev, buf, lib.CONVAI_FRAME_MAX)
            if n < 0:
                break
            out.append((ev[0], bytes(ffi.buffer(buf, n))))
            lib.convai_stat_add(self.sess, lib.CONVAI_STAT_FRAMES_PLAYED, 1)
        return out

    def to_py(self, kind: int, **fields: object) -> None:
        rec = contract.encode(kind, **fields)
        assert lib.convai_ring_push(self.sess.to_py, kind, rec, ffi.sizeof(rec[0])) == 0

    def stat(self, i: int) -> int:
        return int(lib.convai_stat_get(self.sess, i))

    def close(self) -> None:
        self.loop.close()
        os.close(self.sess.down_efd)


@pytest.fixture
def call() -> Iterator[Call]:
    c = Call()
    yield c
    c.close()


def frames(n: int, event_id: int = 1, start: int = 0) -> list[tuple[int, bytes]]:
    return [(event_id, (start + i).to_bytes(2, "big") * (ULAW // 2)) for i in range(n)]


def test_backlog_tops_up_a_full_ring_in_order(call: Call) -> None:
    bridge = call.talking()
    bridge._push(frames(600))
    assert lib.convai_ring_count(call.sess.down) == lib.CONVAI_DOWN_SLOTS
    assert bridge.backlog_frames == 600 - lib.CONVAI_DOWN_SLOTS
    # C counts underruns against it.
    assert call.stat(lib.CONVAI_STAT_BACKLOG_FRAMES) == 600 - lib.CONVAI_DOWN_SLOTS
    assert bridge._top_up is not None
    played: list[Any] = []
    for _ in range(600 // lib.CONVAI_DOWN_SLOTS + 1):  # C plays, the timer tops up
        played += call.play(lib.CONVAI_DOWN_SLOTS)
        call.loop.run_until_complete(asyncio.sleep(host.TOP_UP_S + 0.1))
    assert not bridge.backlog and call.stat(lib.CONVAI_STAT_BACKLOG_FRAMES) == 0
    played += call.play(600)
    assert [int.from_bytes(f[:2], "big") for _, f in played] == list(range(600))
    assert len(bridge.in_ring) <= 1  # what C played is forgotten, not kept for the whole call


def test_long_chunks_go_in_as_runs_split_at_the_full_ring_and_at_the_ceiling(call: Call) -> None:
    bridge = call.talking()
    bridge.backlog_max = 70
    chunk = b"".join(i.to_bytes(2, "big") * (ULAW // 2) for i in range(150))
    bridge.on_audio(1, chunk[: 50 * ULAW])  # 50 frames: all in the ring
    bridge.on_audio(1, chunk[50 * ULAW :])  # 100 more: 14 fit, 86 wait, 16 over the ceiling
    assert lib.convai_ring_count(call.sess.down) == lib.CONVAI_DOWN_SLOTS == 64
    assert bridge.backlog_frames == 70 == call.stat(lib.CONVAI_STAT_BACKLOG_FRAMES)
    assert call.stat(lib.CONVAI_STAT_BACKLOG_DROPPED) == 16
    played = call.play(64)
    bridge._drain_backlog()  # what the top-up timer does
    assert bridge.backlog_frames == 6
    played += call.play(64)
    bridge._drain_backlog()
    played += call.play(64)
    assert not bridge.backlog and bridge.backlog_frames == 0
    assert [int.from_bytes(f[:2], "big") for _, f in played] == list(range(134))
    assert {ev for ev, _ in played} == {1}


def test_the_channel_thread_is_woken_when_an_utterance_starts_not_per_chunk(call: Call) -> None:
    """First audio at once (c/call.c): the down eventfd is written when pushed audio starts
    an utterance (nothing queued, or a new event id), so the channel thread plays it without
    waiting for its next tick; more of the same utterance wakes no one."""
    bridge = call.talking()

    def woken() -> bool:
        try:
            os.eventfd_read(call.sess.down_efd)
        except BlockingIOError:
            return False
        return True

    woken()  # STARTED's own wake-up
    bridge._push(frames(5, event_id=1))
    assert woken()  # the ring was empty
    bridge._push(frames(5, event_id=1, start=5))
    assert not woken()  # the same utterance goes on: the ticks take it
    bridge._push(frames(5, event_id=2))
    assert woken()  # a new id (a reply after an interruption)
    assert len(call.play(15)) == 15
    bridge._push(frames(3, event_id=2, start=5))
    assert woken()  # played out, then more: it starts again


def test_a_flood_beyond_the_ceiling_is_dropped_counted_and_logged_once(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = call.talking()
    assert host.BACKLOG_MAX_FRAMES == host.BACKLOG_MAX_S * 50
    bridge.backlog_max = 40
    with caplog.at_level(logging.WARNING, logger="convai"):
        bridge._push(frames(lib.CONVAI_DOWN_SLOTS + 100))
        bridge._push(frames(30, start=1000))
    assert bridge.backlog_frames == 40 == sum(len(f) for _, _, f in bridge.backlog) // ULAW
    assert call.stat(lib.CONVAI_STAT_BACKLOG_DROPPED) == 100 - 40 + 30
    assert len([r for r in caplog.records if "dropping the excess" in r.message]) == 1


@pytest.mark.parametrize("huge", [2**63, 2**64 + 5, -1])
def test_event_ids_of_any_size_never_raise(call: Call, huge: int) -> None:
    bridge = call.talking()
    bridge.on_audio(3, b"\x01" * ULAW)
    bridge.on_audio(huge, b"\x02" * ULAW * 2)
    bridge.on_interruption(huge)
    ((kind, rec),) = call.commands()
    assert kind == lib.CONVAI_CMD_INTERRUPTION and rec.event_id == contract.ring_id(huge)
    mark = contract.ring_id(huge)
    assert not lib.convai_ring_stale(call.sess.down, mark)
    assert mark == 0 or lib.convai_ring_stale(call.sess.down, mark - 1)
    ids = {ev for ev, _ in call.play(10)}
    # The rule: lower ids are stale; equal ids play (a clamped huge id plays, it is the newest).
    assert ids == ({contract.ring_id(huge)} if huge > 0 else {3, 0})


def test_stale_audio_is_judged_by_the_ring_watermark_alone(call: Call) -> None:
    bridge = call.talking()
    bridge.on_interruption(5)
    bridge.on_audio(4, b"\x01" * ULAW)
    bridge.on_audio(5, b"\x02" * ULAW)
    assert [ev for ev, _ in call.play(5)] == [5]


def _result(status: Status, reason: EndReason) -> SessionResult:
    return SessionResult(status, reason, "conv_1", 1000, "", play_out=True)


def test_the_end_reaches_c_even_when_the_play_out_raises(
    call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = call.talking()
    bridge.backlog.append((1, 0, b"\x00" * ULAW))

    async def run() -> SessionResult:
        return _result(Status.COMPLETED, EndReason.AGENT_ENDED_CALL)

    def broken() -> None:
        raise OverflowError("integer 9223372036854775808 does not fit '32-bit unsigned int'")

    monkeypatch.setattr(bridge.session, "run", run)
    monkeypatch.setattr(bridge, "_drain_backlog", broken)
    call.loop.run_until_complete(bridge._run())
    ((kind, rec),) = call.commands()
    assert kind == lib.CONVAI_CMD_END
    assert (rec.status, rec.reason, rec.play_out) == (
        lib.CONVAI_STATUS_COMPLETED,
        lib.CONVAI_REASON_AGENT_ENDED_CALL,
        1,
    )
    assert bridge.phase is host.Phase.DONE and call.released == [call.sess]


def test_a_session_that_raises_ends_the_call_failed(
    call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = call.talking()

    async def run() -> SessionResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(bridge.session, "run", run)
    call.loop.run_until_complete(bridge._run())
    ((kind, rec),) = call.commands()
    assert kind == lib.CONVAI_CMD_END
    assert (rec.status, rec.reason, rec.play_out) == (
        lib.CONVAI_STATUS_FAILED,
        lib.CONVAI_REASON_SERVER_ERROR,
        0,
    )


@pytest.mark.parametrize(
    ("reason", "method"),
    [
        (lib.CONVAI_REASON_CALLER_HANGUP, "hangup"),
        (lib.CONVAI_REASON_SHUTDOWN, "shutdown"),
    ],
)
def test_hangup_from_c_stops_the_session_and_nothing_more_goes_to_c(
    call: Call, monkeypatch: pytest.MonkeyPatch, reason: int, method: str
) -> None:
    bridge = call.talking()
    seen: list[str] = []
    monkeypatch.setattr(bridge.session, method, lambda: seen.append(method))
    call.to_py(lib.CONVAI_CMD_HANGUP, reason=reason)
    bridge._on_up()
    assert seen == [method] and bridge.phase is host.Phase.DONE
    bridge._end(Status.COMPLETED, EndReason.COMPLETED, True)
    assert call.commands() == []


def test_dtmf_and_tool_calls_cross_as_typed_records(
    call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = call.talking()
    digits: list[str] = []
    monkeypatch.setattr(bridge.session, "send_dtmf", digits.append)
    call.to_py(lib.CONVAI_CMD_DTMF, digit=b"7")
    bridge._on_up()
    assert digits == ["7"]
    bridge.on_event(ClientToolCall("transfer", "call_1", {"note": "a\r\nEvent: Forged"}, 9, True))
    ((kind, rec),) = call.commands()
    assert kind == lib.CONVAI_CMD_TOOL_CALL
    assert contract.text(rec.tool_name) == "transfer"
    params = contract.text(rec.parameters)
    assert "\r" not in params and "\n" not in params  # JSON escapes them; C cleans again


def test_transfer_state_and_tool_results_reach_the_tools_by_name(
    call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = call.talking()
    states: list[tuple[str, str, str]] = []
    results: list[tuple[str, str, bool]] = []
    monkeypatch.setattr(bridge.telephony, "on_transfer_state", lambda *a: states.append(a))
    monkeypatch.setattr(bridge.telephony, "on_tool_result", lambda *a: results.append(a) or True)
    call.to_py(
        lib.CONVAI_CMD_TRANSFER_STATE, tool_call_id="t1", state=lib.CONVAI_XFER_RINGING, detail="x"
    )
    call.to_py(lib.CONVAI_CMD_TOOL_RESULT, tool_call_id="a1", is_error=1, result="no stock")
    bridge._on_up()
    assert states == [("t1", "ringing", "x")]
    assert results == [("a1", "no stock", True)]
    bridge.transfer("t1", SimpleNamespace(name="sales"))  # type: ignore[arg-type]
    bridge.send_dtmf("12#")
    (k1, transfer), (k2, dtmf) = call.commands()
    assert (k1, contract.text(transfer.target)) == (lib.CONVAI_CMD_TRANSFER, "sales")
    assert (k2, contract.text(dtmf.digits)) == (lib.CONVAI_CMD_SEND_DTMF, "12#")


def test_an_exception_in_a_loop_callback_ends_that_call_failed(
    call: Call, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = call.talking()
    ended: list[EndReason] = []
    monkeypatch.setattr(bridge.session, "end", lambda reason, detail: ended.append(reason))

    def boom() -> None:
        raise OverflowError("integer 9223372036854775808 does not fit '32-bit unsigned int'")

    with caplog.at_level(logging.ERROR, logger="convai"):
        bridge._guard(boom)  # as the event loop runs a reader or a timer
    assert ended == [EndReason.SERVER_ERROR]
    assert any("internal error; ending this call" in r.message for r in caplog.records)


def test_the_ready_list_wakes_python_once_per_look_and_drops_its_reference(
    call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Channel threads list a session on the host (one eventfd for every call); a session
    already listed is not listed twice; Python takes the whole list, looks at each listed
    session's queues, and drops the list's reference; news after the look lists it again."""
    h = ffi.new("struct convai_host *")
    released: list[int] = []
    cb = ffi.callback("void(struct convai_session *)", lambda s: released.append(int(s.id)))
    h.release_session = cb
    call.sess.id = 7
    assert lib.convai_session_mark_ready(h, call.sess) == 1
    assert lib.convai_session_mark_ready(h, call.sess) == 0  # one wake per look
    bridge = call.talking()
    digits: list[str] = []
    monkeypatch.setattr(bridge.session, "send_dtmf", digits.append)
    call.to_py(lib.CONVAI_CMD_DTMF, digit=b"5")
    rt = host.Runtime(h)
    rt.bridges[7] = bridge
    rt._on_ready()
    assert digits == ["5"] and released == [7]
    assert lib.convai_host_take_ready(h) == ffi.NULL
    assert lib.convai_session_mark_ready(h, call.sess) == 1  # unlisted by the look
    rt._on_ready()
    assert released == [7, 7]
    rt.loop.close()
