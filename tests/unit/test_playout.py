"""Framer: agent audio of any length in, runs of exact frames out, never mixing two turns."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from convai.playout import Framer


def frames(runs: list[tuple[int, bytes]], size: int) -> list[tuple[int, bytes]]:
    """The frames of a run list, each run checked to be a whole, non-zero number of frames."""
    assert all(data and len(data) % size == 0 for _, data in runs), runs
    return [(ev, data[i : i + size]) for ev, data in runs for i in range(0, len(data), size)]


def test_exact_frames_and_tail() -> None:
    f = Framer(frame_bytes=4, silence_byte=0xFF)
    assert f.feed(1, b"abcdefghij") == [(1, b"abcdefgh")]  # one run of two frames
    assert f.pending
    assert f.feed(1, b"kl") == [(1, b"ijkl")]
    assert not f.pending


def test_new_event_id_pads_the_previous_tail() -> None:
    f = Framer(frame_bytes=4, silence_byte=0xFF)
    assert f.feed(1, b"abcdef") == [(1, b"abcd")]
    assert f.feed(2, b"wxyz") == [(1, b"ef\xff\xff"), (2, b"wxyz")]


def test_flush_pads_with_the_formats_silence() -> None:
    f = Framer(frame_bytes=4, silence_byte=0)
    f.feed(3, b"a")
    assert f.flush() == [(3, b"a\0\0\0")]
    assert f.flush() == []


@given(st.lists(st.tuples(st.integers(1, 4), st.binary(max_size=50)), max_size=30))
def test_no_byte_lost_or_mixed(chunks: list[tuple[int, bytes]]) -> None:
    f = Framer(frame_bytes=8, silence_byte=0xAA)
    out = frames([run for ev, data in chunks for run in f.feed(ev, data)] + f.flush(), 8)
    assert all(len(frame) == 8 for _, frame in out)
    # Regroup by runs of equal ids: every run's bytes come out in order, padded at its end.
    runs: list[tuple[int, bytes]] = []
    for ev, data in chunks:
        if runs and runs[-1][0] == ev:
            runs[-1] = (ev, runs[-1][1] + data)
        else:
            runs.append((ev, data))
    expected = []
    for ev, data in runs:
        if not data:
            continue
        padded = data + b"\xaa" * (-len(data) % 8)
        expected += [(ev, padded[i : i + 8]) for i in range(0, len(padded), 8)]
    assert out == expected
