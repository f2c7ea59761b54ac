"""Helpers for the real-call tests (test_calls_local.py, test_calls_sip.py).

Nothing here mocks anything: these read what the real Asterisk, the real module and the
simulator did (AMI events, log lines, the simulator's ConversationRecord, received RTP).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import datetime
import itertools
import math
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from asterisk import SYSTEM_DATADIR, AMIError, Asterisk, Message
from rtpcall import RtpCall, RtpPacket

from convai import audio
from convai.sim import ConversationRecord, Simulator

SOUNDS = Path(SYSTEM_DATADIR) / "sounds" / "en"  # Debian's or a source install's
FRAME_MS = 20
# asterisk.conf [options]: run at realtime priority, as Debian's asterisk.service does (-p).
# Without it, media timing on this 2-core testbed measures whatever else the machine is doing
# (p99 jitter of 6-12 ms with three CPU hogs running, 0.1 ms with it).
REALTIME = "highpriority = yes\n"


def assert_realtime(ast: Asterisk) -> None:
    """The instance really runs at realtime priority (it needs CAP_SYS_NICE, i.e. root)."""
    assert ast.pid is not None
    policy = os.sched_getscheduler(ast.pid)
    assert policy in (os.SCHED_RR, os.SCHED_FIFO), (
        f"Asterisk is not running at realtime priority (policy {policy}): the timing "
        "figures of these tests need it (highpriority = yes; run the testbed as root)"
    )


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.01)


# --- AMI -------------------------------------------------------------------------------------


class AmiEvents:
    """Collects every AMI event of an Asterisk on a thread of its own (its own connection), so
    a test can place calls and then look at what arrived, in order, with arrival times."""

    def __init__(self, ast: Asterisk) -> None:
        self._ami = ast.ami(timeout=10)
        self._lock = threading.Lock()
        self.events: list[tuple[float, Message]] = []  # (time.time() on arrival, event)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ami-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for ev in self._ami.events(timeout=0.1):
                    with self._lock:
                        self.events.append((time.time(), ev))
            except (AMIError, OSError):
                return

    def of(self, name: str, pred: Callable[[Message], bool] | None = None) -> list[Message]:
        with self._lock:
            evs = [e for _, e in self.events]
        return [e for e in evs if e.get("Event") == name and (pred is None or pred(e))]

    def timed(self, name: str) -> list[tuple[float, Message]]:
        with self._lock:
            return [(t, e) for t, e in self.events if e.get("Event") == name]

    def wait(
        self,
        name: str,
        pred: Callable[[Message], bool] | None = None,
        timeout: float = 10.0,
        count: int = 1,
    ) -> list[Message]:
        """The first ``count`` events called ``name`` (matching ``pred``), waiting for them."""
        wait_until(lambda: len(self.of(name, pred)) >= count, timeout, f"{count}x AMI {name}")
        return self.of(name, pred)[:count]

    def convai_sequence(self, uniqueid: str) -> list[str]:
        """Names of the ElevenLabsConvAI* events of one channel, in arrival order."""
        with self._lock:
            evs = [e for _, e in self.events]
        return [
            e["Event"]
            for e in evs
            if e.get("Event", "").startswith("ElevenLabsConvAI") and e.get("Uniqueid") == uniqueid
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._ami.close()

    def __enter__(self) -> AmiEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stat(ev: Message, key: str) -> int:
    return int(ev.get(key, "0") or 0)


def caller_leg(agent_channel: str) -> str:
    """The other half of a Local channel pair: 'Local/100@test-0001;2' -> '...;1'."""
    if not re.search(r";[12]$", agent_channel):
        raise ValueError(f"not a Local channel leg: {agent_channel}")
    return agent_channel[:-1] + ("1" if agent_channel.endswith("2") else "2")


# --- logs ------------------------------------------------------------------------------------

_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]")


def log_time(line: str) -> float:
    """The wall-clock time (time.time() scale) of a messages.log line."""
    m = _STAMP.match(line)
    if not m:
        raise ValueError(f"no timestamp in {line!r}")
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def result_lines(ast: Asterisk, since: int = 0) -> list[str]:
    """The RESULT lines the h extension of DIALPLAN_AGENT_100 (and ours) log."""
    text = ast.log_text()[since:]
    return [ln for ln in text.splitlines() if "app_verbose.c: RESULT status=" in ln]


# --- what the simulator sent ------------------------------------------------------------------


@dataclass
class Utterance:
    event_id: int
    text: str
    audio: bytes  # every non-stale chunk the simulator sent for this id, in order
    stale: list[bytes]  # late_stale_audio chunks sent (with this, older, id) after an interruption
    first_sent: float  # time.time() of the first chunk


def sent_utterances(
    sim: Simulator, rec: ConversationRecord, fmt: str, chunk_ms: int
) -> list[Utterance]:
    """The agent audio the simulator sent in one conversation, per event id, byte for byte.

    ``ConversationRecord.sent_audio`` has the size and id of each chunk; the bytes are the
    simulator's phrase chunks (it sends exactly those). Each size is checked against them."""
    by_id: dict[int, Utterance] = {}
    for event_id, text in rec.agent_responses:
        by_id[event_id] = Utterance(event_id, text, b"", [], math.inf)
    counts: dict[int, int] = {}
    for sent in rec.sent_audio:
        utt = by_id[sent.event_id]
        chunks = sim._phrases[(utt.text, fmt, chunk_ms)]  # what it sent, exactly
        n = counts.get(sent.event_id, 0)
        if sent.stale:
            data = base64.b64decode(chunks[min(n, len(chunks) - 1)].b64)
            utt.stale.append(data)
        else:
            data = base64.b64decode(chunks[n].b64)
            utt.audio += data
            counts[sent.event_id] = n + 1
            utt.first_sent = min(utt.first_sent, rec.started_at + sent.t)
        assert len(data) == sent.nbytes, (sent, len(data))
    return [u for u in by_id.values() if u.audio or u.stale]


def frames_of(nbytes: int, frame_bytes: int) -> int:
    return -(-nbytes // frame_bytes)


def expected_frames(utts: list[Utterance], frame_bytes: int) -> int:
    """20 ms frames the module must play for these utterances (each one's tail padded)."""
    return sum(frames_of(len(u.audio), frame_bytes) for u in utts)


def sim_event_time(rec: ConversationRecord, type_: str, direction: str = "out") -> list[float]:
    """time.time() of each logged simulator event of a type."""
    return [
        rec.started_at + e.t for e in rec.events if e.type == type_ and e.direction == direction
    ]


# --- numbers ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def summary(values: Sequence[float]) -> str:
    return (
        f"n={len(values)} p50={percentile(values, 50):.3f} p99={percentile(values, 99):.3f} "
        f"max={max(values) if values else math.nan:.3f}"
    )


# --- sounds ----------------------------------------------------------------------------------


def convert(ast: Asterisk, src: Path, dst: Path) -> bytes:
    """Convert a sound file with Asterisk's own codecs (``file convert``, res_convert): the
    format follows the extension (.ulaw, .alaw, .g722, .sln, .sln16, .wav ...)."""
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    out = ast.cli(f"file convert {src} {dst}")
    if not dst.is_file():
        raise RuntimeError(f"file convert {src} {dst} failed: {out}")
    return dst.read_bytes()


def prompt(ast: Asterisk, name: str, ext: str, workdir: Path) -> bytes:
    """An Asterisk sound prompt encoded for a codec, e.g. prompt(ast, 'hello-world', 'alaw')."""
    return convert(ast, SOUNDS / f"{name}.wav", workdir / f"{name}.{ext}")


def iter_frames(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data) - size + 1, size):
        yield data[i : i + size]


# --- RTP -------------------------------------------------------------------------------------


@dataclass
class RtpStream:
    """The received packets of one codec in sequence order, their payload joined, and where
    each packet's payload starts in it."""

    packets: list[RtpPacket]
    payload: bytes
    offsets: list[int]

    def packet_at(self, offset: int) -> RtpPacket:
        """The packet that carried payload byte ``offset``."""
        return self.packets[bisect.bisect_right(self.offsets, offset) - 1]


def rtp_stream(call: RtpCall) -> RtpStream:
    pkts = call.audio_packets()
    if not pkts:
        return RtpStream([], b"", [])
    # unwrap the 16-bit sequence numbers relative to the first packet
    base = pkts[0].seq
    keyed: dict[int, RtpPacket] = {}
    for p in pkts:
        d = (p.seq - base) & 0xFFFF
        keyed.setdefault(d - 0x10000 if d > 0x8000 else d, p)
    ordered = [keyed[k] for k in sorted(keyed)]
    offsets, pos = [], 0
    for p in ordered:
        offsets.append(pos)
        pos += len(p.payload)
    return RtpStream(ordered, b"".join(p.payload for p in ordered), offsets)


def arrival_wall(p: RtpPacket) -> float:
    """When a packet arrived, on the time.time() scale: the kernel's receive stamp if there
    is one (exact), else when the UA's thread got it (late by whatever held the GIL)."""
    if p.kernel_ns:
        return p.kernel_ns / 1e9
    return p.arrival_ns / 1e9 + (time.time() - time.monotonic())


def interarrival_deviation_ms(packets: list[RtpPacket]) -> list[float]:
    """|arrival interval - 20 ms| for consecutive packets, in arrival order (kernel stamps)."""
    ordered = sorted(packets, key=arrival_wall)
    return [
        abs((arrival_wall(b) - arrival_wall(a)) * 1000 - FRAME_MS)
        for a, b in itertools.pairwise(ordered)
    ]


def wait_for_bytes(call: RtpCall, data: bytes, timeout: float, what: str) -> None:
    """Wait until ``data`` has arrived, contiguous, in the call's received audio."""
    deadline = time.monotonic() + timeout
    while data not in call.audio():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not received within {timeout} s")
        time.sleep(0.05)


def speechlike(frame: bytes, distinct: int = 24) -> bool:
    """A μ-law frame that is audible speech rather than (near) silence: enough distinct
    codes that it cannot turn up elsewhere in the stream by chance."""
    return len(set(frame)) >= distinct


# --- G.711 A-law (for checking what Asterisk transcoded) ---------------------------------------


def _alaw_to_linear(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


_ALAW = [_alaw_to_linear(a) for a in range(256)]


def alaw_decode(data: bytes) -> list[int]:
    return [_ALAW[b] for b in data]


def ulaw_decode(data: bytes) -> list[int]:
    pcm = audio.ulaw_decode(data)
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def snr_db(reference: list[int], test: list[int]) -> float:
    sig = sum(x * x for x in reference)
    err = sum((x - y) ** 2 for x, y in zip(reference, test, strict=True))
    return math.inf if err == 0 else 10 * math.log10(max(sig, 1) / err)


# --- the uplink's end-of-speech flush (c/call.c, issue 12) ------------------------------------


def _shared_define(name: str) -> int:
    """A constant of c/convai_shared.h, its one home."""
    header = Path(__file__).resolve().parents[2] / "c" / "convai_shared.h"
    m = re.search(rf"^#define {name} (\d+)\b", header.read_text(), re.M)
    assert m, f"{name} is not in {header}"
    return int(m.group(1))


UP_SPEECH_LEVEL = _shared_define("CONVAI_UP_SPEECH_LEVEL")
UP_HANGOVER_FRAMES = _shared_define("CONVAI_UP_HANGOVER_FRAMES")


def up_level(frame: bytes) -> int:
    """The channel thread's energy check on one μ-law frame: mean |sample| (c/call.c)."""
    return sum(abs(x) for x in ulaw_decode(frame)) // len(frame) if frame else 0


@dataclass
class UplinkTurn:
    """One utterance of the caller, as the simulator received it (μ-law, bit-exact)."""

    offset: int  # where it starts in the caller audio the simulator received
    last_speech: int  # its last frame at or above UP_SPEECH_LEVEL (index into the utterance)
    latency_ms: float  # that frame sent by the caller -> the chunk holding it at the simulator
    chunk_ends: list[int]  # chunk boundaries the simulator saw, from the chunk before it on
    expected_ends: list[int]  # where the flush rule puts them (full chunks, ends of speech)
    flushes: int  # ends of speech among expected_ends
    unflushed_ends: list[int]  # where whole chunks alone would put them (no flush)

    @property
    def flushed(self) -> bool:
        return self.chunk_ends == self.expected_ends


def expected_chunk_ends(
    audio_in: bytes, start: int, stop: int, batch: int, frame: int
) -> tuple[list[int], int]:
    """Chunk boundaries in ``audio_in`` after ``start`` (a boundary, in silence) up to ``stop``,
    and how many are ends of speech: a chunk ends after ``batch`` frames, or at the frame that
    ends the caller's speech (the UP_HANGOVER_FRAMES-th quiet frame after a speech frame),
    from which the count restarts."""
    ends, count, speaking, quiet, flushes = [], 0, False, 0, 0
    for pos in range(start, stop, frame):
        count += 1
        flush = False
        if up_level(audio_in[pos : pos + frame]) >= UP_SPEECH_LEVEL:
            speaking, quiet = True, 0
        elif speaking:
            quiet += 1
            if quiet >= UP_HANGOVER_FRAMES:
                speaking, flush = False, True
        if flush or count == batch:
            ends.append(pos + frame)
            count = 0
        flushes += flush
    return ends, flushes


def uplink_turns(
    rec: ConversationRecord,
    sent_ns: list[int],
    utterances: list[bytes],
    batch: int,
    frame: int = 160,
    missing: list[int] | None = None,
) -> list[UplinkTurn]:
    """Each utterance the caller sent (``RtpCall.send_audio`` payloads, in order, with the
    call's ``sent_audio_ns``), found in what the simulator received: when its last speech
    frame arrived, and how the caller audio around its end was cut into chunks. An utterance
    not received bit-exact fails, unless ``missing`` is given: then its index goes there."""
    audio_in = bytes(rec.caller_audio)
    ends = list(itertools.accumulate(n for _, n in rec.caller_chunks))
    turns, first, pos = [], 0, 0
    for utt in utterances:
        utt = utt + bytes([0xFF]) * (-len(utt) % frame)  # as send_audio pads it
        at = audio_in.find(utt, pos)
        frames = [utt[i : i + frame] for i in range(0, len(utt), frame)]
        if at >= 0 and missing is not None:
            # The same prompt said again later is no match: it must arrive within 2 s.
            j = bisect.bisect_right(ends, at)
            if j >= len(ends) or not 0 < rec.caller_chunks[j][0] - sent_ns[first] < 2e9:
                at = -1
        if at < 0 and missing is not None:
            missing.append(len(turns) + len(missing))
            first += len(frames)
            continue
        assert at >= 0, f"utterance {len(turns)} not received bit-exact"
        loud = [i for i, f in enumerate(frames) if up_level(f) >= UP_SPEECH_LEVEL]
        assert loud, f"utterance {len(turns)} has no frame at or above {UP_SPEECH_LEVEL}"
        last = loud[-1]
        tail_end = at + (last + 1) * frame  # the end of its last speech frame
        i = bisect.bisect_left(ends, tail_end)
        assert i < len(ends), "the utterance's last speech never reached the simulator"
        latency = (rec.caller_chunks[i][0] - sent_ns[first + last]) / 1e6
        start = ends[bisect.bisect_right(ends, at) - 1] if ends[0] <= at else 0
        stop = tail_end + UP_HANGOVER_FRAMES * frame
        seen = [e for e in ends if start < e <= stop]
        expected, flushes = expected_chunk_ends(audio_in, start, stop, batch, frame)
        unflushed = list(range(start + batch * frame, stop + 1, batch * frame))
        turns.append(UplinkTurn(at, last, latency, seen, expected, flushes, unflushed))
        first += len(frames)
        pos = at + len(utt)
    return turns
