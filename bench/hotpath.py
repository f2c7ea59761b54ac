#!/usr/bin/env python3
"""Our own Python's share of one call-second, without sockets or a loop: a real
``host.CallBridge`` (real cffi rings, as tests/unit/test_host.py builds them) and its
``Session``, fed one call-second of the simulator's traffic again and again: 10 ``vad_score``,
8 ``audio`` (100 ms of μ-law each), 1 ``ping``, 1 ``user_transcript``, 4 caller chunks of
240 ms up through the up ring; the channel thread's part plays 50 frames.

    python3 bench/hotpath.py [--root DIR]   # DIR: another checkout, to compare (A/B)

Prints the best of 7 rounds in µs of CPU per call-second: what protocol.py, session.py,
host.py, playout.py and the cffi calls cost, not websockets, asyncio or the kernel (sessmem.py
and run.py measure those too). Deterministic enough to decide a change of a few per cent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
ap.add_argument("--rounds", type=int, default=7)
ap.add_argument("--seconds", type=int, default=400, help="call-seconds per round (400)")
args = ap.parse_args()
sys.path[:0] = [str(args.root / "tests" / "unit"), str(args.root / "python")]

from native import load  # noqa: E402

native = load()
ffi, lib = native.ffi, native.lib
from convai import host  # noqa: E402


def ring(keep: list[Any], slots: int, slot_bytes: int) -> Any:
    mem = ffi.new("char[]", lib.convai_ring_size(slots, slot_bytes) + 64)
    keep.append(mem)
    r = ffi.cast("struct convai_ring *", (int(ffi.cast("uintptr_t", mem)) + 63) & ~63)
    assert lib.convai_ring_init(r, slots, slot_bytes) == 0
    return r


def bridge(keep: list[Any], loop: asyncio.AbstractEventLoop) -> Any:
    s = ffi.new("struct convai_session *")
    keep.append(s)
    s.magic = lib.CONVAI_SESSION_MAGIC
    s.down_efd = os.eventfd(0, os.EFD_NONBLOCK)
    s.up_batch_frames, s.buffer_ms = 12, 240
    s.channel, s.agent, s.agent_id = b"Local/bench;2", b"sim", b"agent_bench"
    s.api_key, s.endpoint = b"k" * 20, b"http://127.0.0.1:9/signed-url"
    s.up = ring(keep, lib.CONVAI_UP_SLOTS_MIN, lib.CONVAI_FRAME_MAX)
    s.down = ring(keep, lib.CONVAI_DOWN_SLOTS, lib.CONVAI_FRAME_MAX)
    s.to_c = ring(keep, lib.CONVAI_CMD_SLOTS, lib.CONVAI_CMD_BYTES)
    s.to_py = ring(keep, lib.CONVAI_CMD_SLOTS, lib.CONVAI_CMD_BYTES)
    host._host = SimpleNamespace(release_session=lambda _s: None)
    return host.CallBridge(SimpleNamespace(loop=loop, bridges={}, http=lambda: None), s)


def one_second() -> list[str]:
    def msg(kind: str, key: str, body: dict[str, object]) -> str:
        return json.dumps({"type": kind, key: body})

    vad = msg("vad_score", "vad_score_event", {"vad_score": 0.0123})
    out: list[str] = []
    for i in range(10):
        out.append(vad)
        if i < 8:
            audio = base64.b64encode(bytes([i]) * 800).decode()
            out.append(msg("audio", "audio_event", {"audio_base_64": audio, "event_id": 5}))
    out.append(msg("ping", "ping_event", {"event_id": 7, "ping_ms": 12}))
    transcript = {"user_transcript": "hello world", "event_id": 5}
    out.append(msg("user_transcript", "user_transcription_event", transcript))
    return out


async def measure() -> float:
    logging.getLogger("convai").setLevel(logging.INFO)
    keep: list[Any] = []
    b = bridge(keep, asyncio.get_running_loop())
    sess, s = b.session, b.sess
    meta = {"conversation_id": "conv_1", "agent_output_audio_format": "ulaw_8000"}
    meta["user_input_audio_format"] = "ulaw_8000"
    sess._process(json.dumps({"type": "conversation_initiation_metadata",
                              "conversation_initiation_metadata_event": meta}))  # fmt: skip
    assert sess.started, sess.phase
    msgs, ev = one_second(), ffi.new("uint32_t *")
    frame, up = ffi.new("uint8_t[]", lib.CONVAI_FRAME_MAX), b"\xff" * 160

    def second() -> None:
        for k, m in enumerate(msgs, 1):
            sess._process(m)
            if k % 5 == 0:  # a caller chunk, as the channel thread queues it
                for _ in range(12):
                    lib.convai_ring_push_stamped(s.up, 0, lib.convai_now_us(), up, 160)
                b._on_up()
        for _ in range(50):  # the channel thread plays a second
            if lib.convai_ring_pop(s.down, ev, frame, lib.CONVAI_FRAME_MAX) < 0:
                break
            lib.convai_stat_add(s, lib.CONVAI_STAT_FRAMES_PLAYED, 1)
        sess._up.clear()  # what the writer would have sent
        sess._pongs.clear()

    best = float("inf")
    for _ in range(args.rounds):
        t0 = time.process_time()
        for _ in range(args.seconds):
            second()
        best = min(best, (time.process_time() - t0) / args.seconds * 1e6)
    return best


print(json.dumps({"root": str(args.root), "us_per_call_s": round(asyncio.run(measure()), 1)}))
