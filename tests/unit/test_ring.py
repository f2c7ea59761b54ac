"""The SPSC ring (c/convai_ring.h) through the very cffi boundary the runtime uses, and the
two-thread C stress test."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native import ROOT, load

native = load()
ffi, lib = native.ffi, native.lib


def make_ring(slots: int = 8, slot_bytes: int = 160) -> tuple[Any, Any]:
    mem = ffi.new("char[]", lib.convai_ring_size(slots, slot_bytes) + 64)
    addr = (int(ffi.cast("uintptr_t", mem)) + 63) & ~63
    ring = ffi.cast("struct convai_ring *", addr)
    assert lib.convai_ring_init(ring, slots, slot_bytes) == 0
    return mem, ring


def pop(ring: Any, cap: int = 160) -> tuple[int, bytes] | None:
    ev = ffi.new("uint32_t *")
    buf = ffi.new("uint8_t[]", cap)
    n = lib.convai_ring_pop(ring, ev, buf, cap)
    return None if n < 0 else (ev[0], bytes(ffi.buffer(buf, n)))


def test_fifo_order_and_full() -> None:
    _mem, ring = make_ring(slots=4)
    for i in range(4):
        assert lib.convai_ring_push(ring, i, bytes([i]) * 3, 3) == 0
    assert lib.convai_ring_push(ring, 9, b"x", 1) == -1  # full
    assert lib.convai_ring_count(ring) == 4
    assert [pop(ring) for _ in range(5)] == [
        (0, b"\0" * 3),
        (1, b"\1" * 3),
        (2, b"\2" * 3),
        (3, b"\3" * 3),
        None,
    ]
    assert lib.convai_ring_space(ring) == 4


def test_a_run_of_frames_is_queued_in_one_call_until_the_ring_is_full() -> None:
    _mem, ring = make_ring(slots=4, slot_bytes=8)
    data = b"".join(bytes([i]) * 4 for i in range(6))
    assert lib.convai_ring_push_run(ring, 7, 123, data, 4, 3) == 3
    assert lib.convai_ring_push_run(ring, 8, 456, data[12:], 4, 3) == 1  # one slot left
    assert lib.convai_ring_push_run(ring, 9, 0, data, 4, 1) == 0  # full
    assert lib.convai_ring_push_run(ring, 9, 0, data, 9, 1) == -2  # over slot_bytes
    assert [pop(ring) for _ in range(5)] == [
        (7, b"\0" * 4),
        (7, b"\1" * 4),
        (7, b"\2" * 4),
        (8, b"\3" * 4),
        None,
    ]


def test_oversized_payload_is_refused() -> None:
    _mem, ring = make_ring(slot_bytes=16)
    assert lib.convai_ring_push(ring, 1, b"x" * 17, 17) == -2
    assert lib.convai_ring_count(ring) == 0


def test_watermark_drops_queued_and_late_stale_frames() -> None:
    _mem, ring = make_ring(slots=16)
    for ev in (1, 1, 2, 2, 3):
        lib.convai_ring_push(ring, ev, b"a", 1)
    lib.convai_ring_drop_below(ring, 3)
    # A stale frame that arrives after the interruption is dropped too.
    lib.convai_ring_push(ring, 2, b"late", 4)
    lib.convai_ring_push(ring, 3, b"b", 1)
    assert pop(ring) == (3, b"a")
    assert pop(ring) == (3, b"b")
    assert pop(ring) is None
    assert lib.convai_ring_skipped(ring) == 5


def test_equal_event_id_plays() -> None:
    """The official clients' rule: audio whose id equals the interruption's is the reply."""
    _mem, ring = make_ring()
    lib.convai_ring_drop_below(ring, 7)
    lib.convai_ring_push(ring, 7, b"reply", 5)
    assert pop(ring) == (7, b"reply")


def test_stale_is_the_consumers_rule() -> None:
    """convai_ring_stale(), which the producer asks before framing late audio, says exactly
    what the consumer will skip: below the watermark, never at or above it."""
    _mem, ring = make_ring(slots=16)
    assert not lib.convai_ring_stale(ring, 0)  # no interruption yet: nothing is stale
    lib.convai_ring_drop_below(ring, 7)
    lib.convai_ring_drop_below(ring, 3)  # never lowered
    for ev in (0, 6, 7, 8, 2**32 - 1):
        lib.convai_ring_push(ring, ev, b"x", 1)
    played = [pop(ring) for _ in range(4)]
    assert [p[0] for p in played if p] == [7, 8, 2**32 - 1]
    assert [ev for ev in (0, 6, 7, 8, 2**32 - 1) if lib.convai_ring_stale(ring, ev)] == [0, 6]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from("aai"), st.integers(0, 12)), max_size=40))
def test_interruption_rule_property(ops: list[tuple[str, int]]) -> None:
    """For any sequence of audio and interruptions (late, equal, lower, never seen), what
    the consumer plays is exactly the audio not older than the highest interruption at the
    time it is popped, in order; the producer's stale check agrees."""
    _mem, ring = make_ring(slots=64, slot_bytes=4)
    highest, queued, played = 0, [], []
    for kind, ev in ops:
        if kind == "i":
            lib.convai_ring_drop_below(ring, ev)
            highest = max(highest, ev)
            continue
        assert bool(lib.convai_ring_stale(ring, ev)) == (ev < highest)
        lib.convai_ring_push(ring, ev, b"a", 1)
        queued.append(ev)
    while (got := pop(ring)) is not None:
        played.append(got[0])
    assert played == [ev for ev in queued if ev >= highest]


def test_watermark_never_moves_back() -> None:
    _mem, ring = make_ring()
    lib.convai_ring_drop_below(ring, 5)
    lib.convai_ring_drop_below(ring, 2)
    lib.convai_ring_push(ring, 4, b"x", 1)
    assert pop(ring) is None


def test_pop_many_concatenates_up_to_capacity() -> None:
    _mem, ring = make_ring(slots=8, slot_bytes=4)
    for i in range(5):
        lib.convai_ring_push_stamped(ring, 0, 100 + i, bytes([i]) * 4, 4)
    buf = ffi.new("uint8_t[]", 10)
    stamp = ffi.new("uint32_t *")
    n = lib.convai_ring_pop_many(ring, buf, 10, 8, stamp, ffi.NULL)
    assert bytes(ffi.buffer(buf, n)) == b"\0" * 4 + b"\1" * 4  # a third would not fit
    assert lib.convai_ring_count(ring) == 3
    assert stamp[0] == 101  # the last slot taken


def test_pop_many_stops_after_a_marked_slot() -> None:
    """The up ring's end-of-speech mark (c/call.c): a pop ends with the marked slot and says
    so; the next pop starts after it, unmarked."""
    _mem, ring = make_ring(slots=8, slot_bytes=2)
    for i in range(6):
        mark = lib.CONVAI_UP_END_OF_SPEECH if i == 2 else 0
        lib.convai_ring_push_stamped(ring, mark, 10 + i, bytes([i]) * 2, 2)
    buf = ffi.new("uint8_t[]", 16)
    stamp = ffi.new("uint32_t *")
    got = ffi.new("uint32_t *")
    n = lib.convai_ring_pop_many(ring, buf, 16, 8, stamp, got)
    assert bytes(ffi.buffer(buf, n)) == b"\0\0\1\1\2\2"
    assert (got[0], stamp[0]) == (lib.CONVAI_UP_END_OF_SPEECH, 12)
    n = lib.convai_ring_pop_many(ring, buf, 16, 8, stamp, got)
    assert bytes(ffi.buffer(buf, n)) == b"\3\3\4\4\5\5"
    assert got[0] == 0
    assert lib.convai_ring_pop_many(ring, buf, 16, 8, stamp, got) == 0


def test_wraparound_keeps_order() -> None:
    _mem, ring = make_ring(slots=4, slot_bytes=8)
    seen = []
    for i in range(1000):
        assert lib.convai_ring_push(ring, i, i.to_bytes(8, "little"), 8) == 0
        got = pop(ring, 8)
        assert got is not None
        seen.append(int.from_bytes(got[1], "little"))
    assert seen == list(range(1000))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_two_thread_stress_ten_million_frames(tmp_path: Path) -> None:
    exe = tmp_path / "ring_stress"
    subprocess.run(
        [
            "cc",
            "-O2",
            "-std=gnu11",
            "-pthread",
            f"-I{ROOT / 'c'}",
            str(ROOT / "tests" / "c" / "ring_stress.c"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    out = subprocess.run([str(exe), "10000000"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    report = json.loads(out.stdout)
    print(report)
    assert report["ok"] is True
    assert report["frames"] == 10_000_000
    assert report["popped"] + report["skipped"] == report["frames"]
    assert report["wrongly_dropped"] == 0
    assert report["skipped"] > 0  # the watermark really was exercised


def test_histogram_buckets_are_monotonic_and_cover_their_values() -> None:
    prev = -1
    for us in list(range(0, 2000, 7)) + list(range(2000, 250000, 997)):
        b = lib.convai_hist_bucket(us)
        assert b >= prev
        prev = b
        assert us < lib.convai_hist_upper(b) or b == lib.CONVAI_HIST_BUCKETS - 1
        assert b == 0 or us >= lib.convai_hist_upper(b - 1)
