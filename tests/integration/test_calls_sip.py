"""Real SIP calls into chan_pjsip, with RTP, against the module and the simulator.

The caller is ``rtpcall.RtpCall``: it sends a continuous 20 ms RTP stream (silence, or an
Asterisk prompt when the caller speaks) and records every packet it receives with its arrival
time, which is what these tests examine: the agent's μ-law must arrive bit-exact and in order,
paced at 20 ms, with nothing of an interrupted utterance after the cut; G.722 callers get
wideband audio both ways; A-law callers are transcoded by Asterisk. Arrival times are the
kernel's receive stamps (SO_TIMESTAMPNS), so the UA's own GIL does not blur them; Asterisk runs
at realtime priority, as Debian runs it (-p). One more call uses SIPp, a second SIP stack that
stops sending RTP once its prompt is played (the module fills the caller's silence).
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from asterisk import Asterisk
from calls_util import (
    REALTIME,
    UP_HANGOVER_FRAMES,
    AmiEvents,
    alaw_decode,
    arrival_wall,
    assert_realtime,
    convert,
    expected_frames,
    frames_of,
    interarrival_deviation_ms,
    iter_frames,
    log_time,
    percentile,
    prompt,
    rtp_stream,
    sent_utterances,
    sim_event_time,
    snr_db,
    speechlike,
    stat,
    summary,
    ulaw_decode,
    uplink_turns,
    wait_for_bytes,
    wait_until,
)
from convai_fixtures import DIALPLAN_AGENT_100, agent
from rtpcall import RtpCall
from sipp import run_sipp, write_uac_scenario

from convai import audio
from convai.sim import Scenario, Simulator

# chan_pjsip: the sid flavour only (scripts/test.sh selects by flavour).
pytestmark = pytest.mark.sip

FMT, CHUNK_MS, FRAME = "ulaw_8000", 100, 160
SILENCE = 0xFF
RESULT_RE = r"app_verbose\.c: RESULT status=(\S+) reason=(\S+) conv=(\w*)$"
# 7.6 s of continuous speech (no full stops: no long pauses), for cutting into.
LONG = (
    "Welcome to the simulated agent please stay on the line while I tell you a long story "
    "about the weather and the sea and the mountains"
)

AsteriskMaker = Callable[..., Asterisk]
SimMaker = Callable[..., Simulator]


def _asterisk(make: AsteriskMaker, sim: Simulator, allow: str = "ulaw") -> Asterisk:
    ast = make(
        agents={"sim": agent(sim)},
        dialplan=DIALPLAN_AGENT_100,
        sip_allow=allow,
        more_modules=["res_convert"],
        options=REALTIME,
    )
    assert_realtime(ast)
    return ast


def _phrase(sim: Simulator, text: str, fmt: str = FMT) -> bytes:
    """Everything the simulator would send for a phrase (it synthesises them at start)."""
    return b"".join(base64.b64decode(c.b64) for c in sim._phrases[(text, fmt, CHUNK_MS)])


@pytest.mark.timing
def test_ulaw_agent_audio_is_bit_exact_in_order_and_paced(
    simulator: SimMaker, convai_asterisk: AsteriskMaker, tmp_path: Path
) -> None:
    """PCMU caller, ulaw_8000 agent: greeting, the caller speaks, reply, the caller speaks,
    farewell, end_call. The received RTP payload is exactly the agent's audio (each utterance
    a contiguous, frame-aligned run, in order, its last frame padded with silence) and μ-law
    silence in between: nothing else. Packets arrive every 20 ms."""
    greeting = "Hello! You are talking to the simulator."
    sim = simulator(
        Scenario(greeting=greeting, replies=["I heard you, thank you."], end_after_turns=2)
    )
    ast = _asterisk(convai_asterisk, sim)
    speech = prompt(ast, "hello-world", "ulaw", tmp_path)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami, RtpCall(ast.sip_port, "100", codec="PCMU") as call:
        wait_for_bytes(call, _phrase(sim, greeting), 15, "the greeting")
        call.send_audio(speech)
        wait_for_bytes(call, _phrase(sim, "I heard you, thank you."), 15, "the reply")
        call.send_audio(speech)
        assert call.wait_bye(timeout=20), "Asterisk did not hang up"
        stats = ami.wait("ElevenLabsConvAIStats", timeout=5)[0]
    line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
    rec = sim.conversations[0]
    utts = sent_utterances(sim, rec, FMT, CHUNK_MS)
    stream = rtp_stream(call)
    rx = stream.payload

    # Every packet: 160 bytes, consecutive sequence numbers and timestamps.
    assert all(len(p.payload) == FRAME for p in stream.packets)
    seqs = [(b.seq - a.seq) & 0xFFFF for a, b in itertools.pairwise(stream.packets)]
    tss = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(stream.packets)]
    assert set(seqs) == {1} and set(tss) == {160}, (set(seqs), set(tss))

    # Each utterance, in order, as one contiguous frame-aligned run; silence everywhere else.
    assert [u.text for u in utts] == [greeting, "I heard you, thank you.", "Goodbye!"]
    covered = bytearray(len(rx))
    pos = 0
    for u in utts:
        at = rx.find(u.audio, pos)
        assert at >= 0, f"utterance [{u.event_id}] {u.text!r} not received bit-exact in order"
        assert at % FRAME == 0, f"[{u.event_id}] starts mid-frame at {at}"
        end = at + frames_of(len(u.audio), FRAME) * FRAME
        assert set(rx[at + len(u.audio) : end]) <= {SILENCE}, "tail frame not padded with silence"
        covered[at:end] = b"\x01" * (end - at)
        print(f"[{u.event_id}] {u.text!r}: {len(u.audio)} bytes at {at} (frame {at // FRAME})")
        pos = end
    stray = [i for i, b in enumerate(rx) if not covered[i] and b != SILENCE]
    assert not stray, f"{len(stray)} non-silent bytes outside the agent's utterances"

    # Pacing, seen by the caller (arrival times on loopback) and by the module itself.
    dev = interarrival_deviation_ms(stream.packets)
    assert all(p.kernel_ns for p in stream.packets), "no kernel receive timestamps"
    by_thread = [
        abs((b.arrival_ns - a.arrival_ns) / 1e6 - 20) for a, b in itertools.pairwise(stream.packets)
    ]
    print(f"RTP inter-arrival |interval - 20 ms| (ms), kernel stamps: {summary(dev)}")
    print(f"  (as the UA's Python thread saw them: {summary(by_thread)})")
    print(
        f"module playout deviation (µs): p50 {stats['PlayoutP50Us']} p99 {stats['PlayoutP99Us']}"
        f" max {stats['PlayoutMaxUs']}; first frame p99 {stats['FirstFrameP99Us']} µs;"
        f" frames played {stats['FramesPlayed']}, underruns {stats['Underruns']}"
    )
    assert percentile(dev, 99) < 2.0, summary(dev)
    assert max(dev) < 10.0, summary(dev)
    # First audio at once (c/call.c): the reply and the farewell start while the channel plays
    # silence, so their first frame is written as it arrives and the 20 ms clock re-phased to
    # it. That leaves one interval of 11-20 ms before each, never a burst under 10 ms nor a gap
    # (the bound above), and the RTP timestamps contiguous (checked above: every step 160).
    firsts = [stream.packet_at(rx.find(u.audio)) for u in utts[1:]]
    print(
        "first audio: the utterance's first chunk sent -> its first packet at the caller "
        + ", ".join(
            f"{1000 * (arrival_wall(p) - u.first_sent):.1f} ms"
            for p, u in zip(firsts, utts[1:], strict=True)
        )
        + f"; module FirstFrame p50 {stats['FirstFrameP50Us']} p99 {stats['FirstFrameP99Us']}"
        f" max {stats['FirstFrameMaxUs']} µs; Rephases {stats['Rephases']}"
    )
    assert stat(stats, "Rephases") >= len(firsts), stats["Rephases"]
    assert stat(stats, "PlayoutP99Us") <= 1000  # the target of issue 4
    assert stat(stats, "FramesPlayed") == expected_frames(utts, FRAME)
    assert stat(stats, "Underruns") == 0
    assert line.groups()[:2] == ("COMPLETED", "agent_ended_call"), line.group(0)
    assert len(rec.user_transcripts) == 2, rec.user_transcripts
    assert not ast.errors(), ast.errors()


@pytest.mark.timing
def test_barge_in_cuts_within_a_frame_and_stale_audio_never_plays(
    simulator: SimMaker, convai_asterisk: AsteriskMaker, tmp_path: Path
) -> None:
    """The caller talks over a long greeting that the agent is still sending (2x real time).
    The simulator interrupts, then sends one more chunk of the greeting with its old id
    (late_stale_audio). The cut: the greeting's frames play bit-exact up to one frame, then a
    fade of at most 8 ms and silence; no later byte of the greeting, and nothing of the late
    chunk, ever reaches the caller; the reply (with the interruption's id) plays in full."""
    sim = simulator(
        Scenario(greeting=LONG, burst_factor=2.0, late_stale_audio=True, end_after_turns=1)
    )
    ast = _asterisk(convai_asterisk, sim)
    speech = prompt(ast, "hello-world", "ulaw", tmp_path)
    full = _phrase(sim, LONG)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami, RtpCall(ast.sip_port, "100", codec="PCMU") as call:
        wait_for_bytes(call, full[: 40 * FRAME], 15, "0.8 s of the greeting")
        call.send_audio(speech)
        assert call.wait_bye(timeout=25), "Asterisk did not hang up"
        stats = ami.wait("ElevenLabsConvAIStats", timeout=5)[0]
        interruption = ami.of("ElevenLabsConvAIInterruption")
    line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
    rec = sim.conversations[0]
    greet, reply = sent_utterances(sim, rec, FMT, CHUNK_MS)
    stream = rtp_stream(call)
    rx = stream.payload
    iid = rec.interruptions[0]
    assert [int(e["EventID"]) for e in interruption] == rec.interruptions == [iid]
    assert reply.event_id == iid > greet.event_id
    assert len(greet.stale) == 1, "the simulator sent no late stale chunk"
    assert len(greet.audio) < len(full), "the greeting was sent in full before the interruption"

    # The greeting plays bit-exact up to the cut.
    start = rx.find(greet.audio[: 5 * FRAME])
    assert start >= 0 and start % FRAME == 0
    total = frames_of(len(greet.audio), FRAME)
    k = 0
    while (
        k < total
        and rx[start + k * FRAME : start + (k + 1) * FRAME]
        == greet.audio[k * FRAME : (k + 1) * FRAME]
    ):
        k += 1
    assert 40 <= k < total, (k, total)
    cut = rx[start + k * FRAME : start + (k + 1) * FRAME]
    fade = 8 * FRAME // 20  # samples of fade: 8 ms
    # At most 8 ms of fade (never louder than what it fades), then silence.
    assert set(cut[fade:]) == {SILENCE}, cut.hex()
    want = ulaw_decode(greet.audio[k * FRAME : k * FRAME + fade])
    got = ulaw_decode(cut[:fade])
    assert all(abs(g) <= abs(w) + 8 for g, w in zip(got, want, strict=True)), (got, want)
    # Silence from the cut to the reply; the reply in full, after it.
    at = rx.find(reply.audio, start)
    assert at > start + k * FRAME, "the reply to the interruption was not received bit-exact"
    assert set(rx[start + (k + 1) * FRAME : at]) == {SILENCE}
    # Stale audio: no later frame of the greeting, no 10 ms of the late chunk, anywhere.
    later = [f for f in iter_frames(greet.audio[(k + 1) * FRAME :], FRAME) if speechlike(f)]
    windows = [w for w in iter_frames(greet.stale[0], FRAME // 2) if speechlike(w, 16)]
    print(
        f"greeting: {total} frames sent before the interruption, {k} played, "
        f"{len(later)} later speech frames and {len(windows)} windows of the stale chunk "
        f"checked absent"
    )
    assert windows, "the stale chunk is silence: the check would prove nothing"
    assert not [f for f in later if f in rx], "a stale frame of the greeting was played"
    assert not [w for w in windows if w in rx], "the late stale chunk was played"

    # How fast: the packet that carried the cut vs. the interruption leaving the simulator.
    t_int = sim_event_time(rec, "interruption")[0]
    t_cut = arrival_wall(stream.packet_at(start + k * FRAME))
    t_last = arrival_wall(stream.packet_at(start + (k - 1) * FRAME))
    print(
        f"interruption sent -> last greeting frame {1000 * (t_last - t_int):+.1f} ms, "
        f"-> cut frame {1000 * (t_cut - t_int):+.1f} ms at the caller; module BargeIn p99 "
        f"{stats['BargeInP99Us']} µs (max {stats['BargeInMaxUs']}); frames dropped "
        f"{stats['FramesDropped']}"
    )
    assert -0.005 < t_cut - t_int < 0.045, "the cut came later than two frames"
    assert stat(stats, "BargeInP99Us") <= 20000
    assert stat(stats, "FramesPlayed") == k + frames_of(len(reply.audio), FRAME)
    assert stat(stats, "FramesDropped") > 0
    assert line.groups()[:2] == ("COMPLETED", "agent_ended_call"), line.group(0)
    assert not ast.errors(), ast.errors()


# timing: the caller's audio must reach the module on time to arrive bit-exact (late RTP is
# filled with silence, by design), and that is the test UA's timing on a loaded machine.
@pytest.mark.timing
def test_end_of_speech_sends_the_partial_chunk_at_once(
    simulator: SimMaker, convai_asterisk: AsteriskMaker, tmp_path: Path
) -> None:
    """Issue 12's uplink flush, with the seed's default 240 ms chunks: while the caller talks,
    caller audio reaches the agent in whole 240 ms chunks; when the speech ends (the channel
    thread's energy check, then CONVAI_UP_HANGOVER_FRAMES quiet frames), the partial chunk
    goes at once, and the next chunk counts afresh from there. Checked on the chunks the
    simulator received (sizes, order, bytes: μ-law end to end is bit-exact), against where
    the rule puts the boundaries in the caller's own audio; a call that only sent whole chunks
    would put them elsewhere (checked too)."""
    sim = simulator(
        Scenario(greeting="Hello.", replies=["I heard you, thank you."], end_after_turns=2)
    )
    ast = convai_asterisk(
        agents={"sim": agent(sim, elevenlabs_audio_frames_buffer_ms="240")},
        dialplan=DIALPLAN_AGENT_100,
        sip_allow="ulaw",
        more_modules=["res_convert"],
        options=REALTIME,
    )
    said = [prompt(ast, name, "ulaw", tmp_path) for name in ("hello-world", "tt-weasels")]
    with AmiEvents(ast) as ami, RtpCall(ast.sip_port, "100", codec="PCMU") as call:
        wait_for_bytes(call, _phrase(sim, "Hello."), 15, "the greeting")
        call.send_audio(said[0], wait=True)
        wait_for_bytes(call, _phrase(sim, "I heard you, thank you."), 15, "the reply")
        call.send_audio(said[1], wait=True)
        assert call.wait_bye(timeout=25), "Asterisk did not hang up"
        stats = ami.wait("ElevenLabsConvAIStats", timeout=5)[0]
    rec = sim.conversations[0]
    turns = uplink_turns(rec, call.sent_audio_ns, said, batch=240 // 20)
    for t in turns:
        print(
            f"utterance at {t.offset}: last speech frame {t.last_speech}, at the simulator "
            f"{t.latency_ms:.1f} ms after the caller sent it; chunk ends {t.chunk_ends} "
            f"(rule {t.expected_ends}, {t.flushes} end(s) of speech)"
        )
    print(f"UpFlushes {stats['UpFlushes']}, chunks {len(rec.caller_chunks)}")
    for t in turns:
        assert t.flushes >= 1 and t.chunk_ends == t.expected_ends, t
        assert t.chunk_ends[-1] == t.offset + (t.last_speech + 1 + UP_HANGOVER_FRAMES) * FRAME
    assert any(t.expected_ends != t.unflushed_ends for t in turns), "the check cannot tell"
    full = [n for _, n in rec.caller_chunks[1:]]  # past the early audio held before the start
    assert max(full) == 240 // 20 * FRAME and full.count(1920) > len(full) // 2, full
    assert stat(stats, "UpFlushes") == sum(t.flushes for t in turns)
    assert stat(stats, "UpOverflows") == 0
    assert not ast.errors(), ast.errors()


def test_g722_caller_runs_wideband_slin16_both_ways(
    simulator: SimMaker, convai_asterisk: AsteriskMaker, tmp_path: Path
) -> None:
    """G.722 caller, pcm_16000 agent: the channel runs in slin16 (no narrowband hop), the
    agent hears the caller, and the caller receives the agent's speech, wideband."""
    sim = simulator(
        Scenario(
            input_format="pcm_16000",
            output_format="pcm_16000",
            greeting="Hello! This is a wideband call.",
            end_after_turns=1,
        )
    )
    ast = _asterisk(convai_asterisk, sim, allow="g722")
    speech = prompt(ast, "hello-world", "g722", tmp_path)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami, RtpCall(ast.sip_port, "100", codec="G722") as call:
        start = ami.wait("ElevenLabsConvAIStart", timeout=15)[0]
        shown = ast.cli(f"core show channel {start['Channel']}")
        rec = sim.conversations[0]
        wait_until(lambda: rec.sent_audio, 10, "greeting audio")
        greeting_s = len(_phrase(sim, "Hello! This is a wideband call.", "pcm_16000")) / 32000
        # The greeting plays out (0.2 s margin) before the caller speaks: no interruption.
        wait_until(
            lambda: time.time() > rec.started_at + rec.sent_audio[0].t + greeting_s + 0.2,
            15,
            "greeting played",
        )
        call.send_audio(speech)
        assert call.wait_bye(timeout=20), (
            f"Asterisk did not hang up; the agent got {rec.caller_audio_bytes} B of caller "
            f"audio, VAD peak {max(rec.vad_scores, default=0)}, sent {rec.sent_types()[-8:]}"
        )
        stats = ami.wait("ElevenLabsConvAIStats", timeout=5)[0]
    line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
    started = ast.wait_for_log(r"started with agent \[sim\] \((\S+) in, (\S+) out\)", since=mark)
    fmt = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in shown.splitlines())}
    print(
        f"{started.group(0)}; channel: NativeFormats {fmt.get('NativeFormats')}, "
        f"ReadFormat {fmt.get('ReadFormat')}, WriteFormat {fmt.get('WriteFormat')}"
    )
    assert started.groups() == ("pcm_16000", "pcm_16000")
    assert fmt.get("WriteFormat") == "slin16" and fmt.get("ReadFormat") == "slin16", shown
    assert "g722" in fmt.get("NativeFormats", ""), shown

    # Up: the agent heard real speech and took a turn.
    print(f"agent side: VAD peak {max(rec.vad_scores):.3f}, transcripts {rec.user_transcripts}")
    assert max(rec.vad_scores) > 0.9 and len(rec.user_transcripts) == 1
    # Down: decode what the caller received (Asterisk's own G.722 decoder) and compare its
    # loud 20 ms frames, and its energy above 4 kHz, with what the agent sent.
    stream = rtp_stream(call)
    assert {len(p.payload) for p in stream.packets} == {160}
    (tmp_path / "rx.g722").write_bytes(stream.payload)
    rx = convert(ast, tmp_path / "rx.g722", tmp_path / "rx.sln16")
    sent = b"".join(u.audio for u in sent_utterances(sim, rec, "pcm_16000", CHUNK_MS))
    loud_rx = sum(audio.rms_dbfs(f) > -30 for f in iter_frames(rx, 640))
    loud_tx = sum(audio.rms_dbfs(f) > -30 for f in iter_frames(sent, 640))
    hf_rx, hf_tx = _high_band_share(rx), _high_band_share(sent)
    # The control: an 8 kHz prompt taken to 16 kHz has (next to) nothing above 4 kHz.
    narrow = convert(ast, tmp_path / "hello-world.g722", tmp_path / "narrow.sln16")
    hf_nb = _high_band_share(narrow)
    print(
        f"loud frames: agent sent {loud_tx}, caller got {loud_rx}; energy above 4 kHz: "
        f"sent {100 * hf_tx:.2f} %, received {100 * hf_rx:.2f} % (a narrowband prompt: "
        f"{100 * hf_nb:.3f} %)"
    )
    assert loud_rx >= 0.8 * loud_tx > 0
    assert hf_rx > 0.5 * hf_tx and hf_rx > 5 * hf_nb, "the agent reached the caller narrowband"
    assert line.groups()[:2] == ("COMPLETED", "agent_ended_call"), line.group(0)
    assert stat(stats, "Underruns") == 0
    assert not ast.errors(), ast.errors()


def _high_band_share(pcm16k: bytes) -> float:
    """The share of a 16 kHz signal's energy above 4 kHz: what a trip through 8 kHz removes.
    (The loudest second only, to keep pure-Python resampling cheap.)"""
    frames = list(iter_frames(pcm16k, 640))
    loud = sorted(range(len(frames)), key=lambda i: audio.rms_dbfs(frames[i]), reverse=True)
    x = b"".join(frames[i] for i in sorted(loud[:50]))
    y = audio.resample_s16(audio.resample_s16(x, 16000, 8000), 8000, 16000)
    xs = memoryview(x).cast("h")
    ys = memoryview(y).cast("h")
    n = min(len(xs), len(ys))
    total = sum(v * v for v in xs[:n])
    residual = sum((xs[i] - ys[i]) ** 2 for i in range(n))
    return residual / total if total else 0.0


def test_alaw_caller_is_transcoded_and_completes(
    simulator: SimMaker, convai_asterisk: AsteriskMaker, tmp_path: Path
) -> None:
    """PCMA caller, ulaw_8000 agent: Asterisk transcodes both ways; the agent hears the caller,
    the caller hears the agent (the A-law it gets is the agent's μ-law, sample for sample,
    within G.711 quantisation), and the conversation completes."""
    greeting = "Hello! This call is transcoded."
    sim = simulator(Scenario(greeting=greeting, end_after_turns=1))
    ast = _asterisk(convai_asterisk, sim, allow="alaw")
    speech = prompt(ast, "hello-world", "alaw", tmp_path)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami, RtpCall(ast.sip_port, "100", codec="PCMA") as call:
        start = ami.wait("ElevenLabsConvAIStart", timeout=15)[0]
        shown = ast.cli(f"core show channel {start['Channel']}")
        rec = sim.conversations[0]
        wait_until(lambda: rec.sent_audio, 10, "greeting audio")
        greeting_s = len(_phrase(sim, greeting)) / 8000
        wait_until(
            lambda: time.time() > rec.started_at + rec.sent_audio[0].t + greeting_s + 0.2,
            15,
            "greeting played",
        )
        call.send_audio(speech)
        assert call.wait_bye(timeout=20), "Asterisk did not hang up"
        stats = ami.wait("ElevenLabsConvAIStats", timeout=5)[0]
    line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
    fmt = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in shown.splitlines())}
    print(
        f"channel: NativeFormats {fmt.get('NativeFormats')}, ReadFormat {fmt.get('ReadFormat')},"
        f" WriteFormat {fmt.get('WriteFormat')}, WriteTranscode {fmt.get('WriteTranscode')}"
    )
    assert "alaw" in fmt.get("NativeFormats", "") and fmt.get("WriteFormat") == "ulaw", shown
    print(f"agent side: VAD peak {max(rec.vad_scores):.3f}, transcripts {rec.user_transcripts}")
    assert max(rec.vad_scores) > 0.9 and len(rec.user_transcripts) == 1
    assert line.groups()[:2] == ("COMPLETED", "agent_ended_call"), line.group(0)

    # Transcoding is sample for sample (no resampling, no delay): each received A-law frame
    # matches one μ-law frame the agent sent. Find the greeting's first loud frame, then
    # compare every frame of both utterances.
    rx = rtp_stream(call).payload
    sent = sent_utterances(sim, rec, FMT, CHUNK_MS)
    results = []
    for u in sent:
        frames = list(iter_frames(u.audio, FRAME))
        anchor = next(i for i, f in enumerate(frames) if audio.rms_dbfs(audio.ulaw_decode(f)) > -25)
        ref = ulaw_decode(frames[anchor])
        best = max(
            range(0, len(rx) - FRAME + 1, FRAME),
            key=lambda o: (
                -sum(abs(a - b) for a, b in zip(alaw_decode(rx[o : o + FRAME]), ref, strict=True))
            ),
        )
        at = best - anchor * FRAME
        n = len(frames) * FRAME
        snr = snr_db(ulaw_decode(u.audio[:n]), alaw_decode(rx[at : at + n]))
        results.append(snr)
        print(
            f"[{u.event_id}] {u.text!r}: received at {at}, SNR vs. what the agent sent {snr:.1f} dB"
        )
    assert all(snr > 30 for snr in results), results
    assert stat(stats, "Underruns") == 0
    assert not ast.errors(), ast.errors()


@pytest.mark.timing
def test_python_stall_of_200ms_is_not_heard(
    simulator: SimMaker, convai_asterisk: AsteriskMaker
) -> None:
    """Four SIP calls are playing the greeting when `elevenlabs test stall 200` blocks the
    Python loop: playout runs on from the rings. Every caller still receives the whole
    greeting bit-exact and contiguous (no gap, no inserted silence), with no late packet, and
    the module counts no underrun. The runtime's own log line dates the stall inside every
    call's greeting."""
    n = 4
    sim = simulator(Scenario(greeting=LONG, close_after_s=3.0))
    ast = _asterisk(convai_asterisk, sim)
    full = _phrase(sim, LONG)
    calls = [RtpCall(ast.sip_port, "100", codec="PCMU") for _ in range(n)]
    with AmiEvents(ast) as ami:
        try:
            for c in calls:
                c.start()
            for c in calls:
                wait_for_bytes(c, full[: 25 * FRAME], 15, "half a second of the greeting")
            print(ast.cli("elevenlabs test stall 200").strip())
            for c in calls:
                assert c.wait_bye(timeout=20), "Asterisk did not hang up"
            stats = ami.wait("ElevenLabsConvAIStats", timeout=5, count=n)
        finally:
            for c in calls:
                c.hangup()
                c.close()
    stalled = ast.wait_for_log(r"^.*test: stalling the Python loop for 200 ms$").group(0)
    t_stall = log_time(stalled)  # the runtime logs it as it starts blocking
    ends = {e["Reason"] for e in ami.of("ElevenLabsConvAIEnd")}
    problems = []
    for i, c in enumerate(calls):
        stream = rtp_stream(c)
        at = stream.payload.find(full)
        t_first = arrival_wall(stream.packet_at(max(at, 0)))
        t_end = arrival_wall(stream.packet_at(max(at, 0) + len(full) - 1))
        dev = interarrival_deviation_ms(stream.packets)
        print(
            f"call {i}: greeting at byte {at}, stall {t_stall - t_first:.2f} s into it "
            f"({t_end - t_first:.2f} s long); inter-arrival deviation (ms) {summary(dev)}"
        )
        if at < 0:
            problems.append(f"call {i}: the greeting did not arrive whole and contiguous")
        elif not t_first < t_stall < t_end:
            problems.append(f"call {i}: the stall was not during the greeting")
        late = [
            f"{1000 * (arrival_wall(b) - t_stall):+.0f} ms"
            for a, b in itertools.pairwise(sorted(stream.packets, key=arrival_wall))
            if abs((arrival_wall(b) - arrival_wall(a)) * 1000 - 20) > 10
        ]
        if late:
            problems.append(f"call {i}: packets off the 20 ms grid by > 10 ms at {late}")
    for s in stats:
        print(
            f"{s['Channel']}: Underruns {s['Underruns']} LateTicks {s['LateTicks']} "
            f"PlayoutMaxUs {s['PlayoutMaxUs']} UplinkMaxUs {s['UplinkMaxUs']}"
        )
    assert not problems, "\n".join(problems)
    assert all(stat(s, "Underruns") == 0 for s in stats)
    assert ends == {"completed"}, ends
    assert not ast.errors(), ast.errors()


@pytest.mark.sipp
def test_sipp_caller_completes_a_conversation(
    simulator: SimMaker, convai_asterisk: AsteriskMaker, tmp_path: Path
) -> None:
    """SIPp (PCMU) streams hello-world once, over the greeting, then sends no more RTP: the
    agent is interrupted, hears the caller out (the module fills the silence upstream),
    answers with its farewell and ends the call; SIPp gets the BYE and its scenario passes."""
    sim = simulator(Scenario(greeting="Hello! How can I help?", end_after_turns=1))
    ast = _asterisk(convai_asterisk, sim)
    speech = tmp_path / "hello-world.ulaw"
    speech.write_bytes(prompt(ast, "hello-world", "ulaw", tmp_path))
    scenario = write_uac_scenario(tmp_path / "uac.xml", codec="PCMU", audio=speech)
    mark = ast.log_mark()
    with AmiEvents(ast) as ami:
        result = run_sipp(scenario, ast.sip_port, "100", timeout=30)
        stats = ami.wait("ElevenLabsConvAIStats", timeout=5)[0]
    line = ast.wait_for_log(RESULT_RE, timeout=10, since=mark)
    rec = sim.conversations[0]
    print(
        f"sipp exit {result.returncode}; {line.group(0)}; interruptions {rec.interruptions};"
        f" caller audio {rec.caller_audio_bytes} B; frames up {stats['FramesUp']}"
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert line.groups()[:2] == ("COMPLETED", "agent_ended_call"), line.group(0)
    assert rec.user_transcripts and max(rec.vad_scores) > 0.9
    assert not ast.errors(), ast.errors()
