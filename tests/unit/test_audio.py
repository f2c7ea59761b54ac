"""convai.audio: G.711 μ-law bit-exactness against sox, the resampler, levels and formats."""

from __future__ import annotations

import itertools
import math
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convai import audio

ALL_S16 = struct.pack("<65536h", *range(-32768, 32768))
ALL_ULAW = bytes(range(256))


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> bytes:
    n = int(rate * seconds)
    return struct.pack(
        f"<{n}h",
        *(round(amplitude * 32767 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)),
    )


def samples(pcm: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(pcm) // 2}h", pcm)


def test_ulaw_decode_known_values() -> None:
    # G.711 μ-law: 0xFF/0x7F are ±0, 0x80/0x00 the extremes (±32124), 0xEF is +8 (bias - 132 + ...).
    decoded = samples(audio.ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00, 0xFE, 0x7E])))
    assert decoded == (0, 0, 32124, -32124, 8, -8)


def test_ulaw_round_trip_is_exact_on_code_points() -> None:
    decoded = audio.ulaw_decode(ALL_ULAW)
    reencoded = audio.ulaw_encode(decoded)
    # Every code comes back except negative zero (0x7F), which encodes as +0 (0xFF).
    assert [u for u in range(256) if reencoded[u] != u] == [0x7F]
    assert reencoded[0x7F] == 0xFF
    assert audio.ulaw_decode(reencoded) == decoded


def test_ulaw_quantisation_error_is_bounded() -> None:
    back = samples(audio.ulaw_decode(audio.ulaw_encode(ALL_S16)))
    for x, y in zip(range(-32768, 32768, 7), back[::7], strict=True):
        # Half a step at most, and the step is about |x|/16 (it doubles per segment); beyond
        # the largest code (32124) it saturates.
        limit = abs(x) // 16 + 10 if abs(x) <= 32124 else abs(x) - 32124 + 10
        assert abs(x - y) <= limit, x


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed: no reference coder")
def test_ulaw_bit_exact_against_sox(tmp_path: Path) -> None:
    src, enc, dec = tmp_path / "in.raw", tmp_path / "out.ulaw", tmp_path / "dec.raw"
    src.write_bytes(ALL_S16)
    # -D: sox dithers by default when it reduces the word length, which would add noise.
    raw16 = ["-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1"]
    rawu = ["-t", "raw", "-r", "8000", "-e", "u-law", "-b", "8", "-c", "1"]
    subprocess.run(
        ["sox", "-D", *raw16, str(src), *rawu, str(enc)], check=True, capture_output=True
    )
    assert audio.ulaw_encode(ALL_S16) == enc.read_bytes()
    enc.write_bytes(ALL_ULAW)
    subprocess.run(
        ["sox", "-D", *rawu, str(enc), *raw16, str(dec)], check=True, capture_output=True
    )
    assert audio.ulaw_decode(ALL_ULAW) == dec.read_bytes()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_ulaw_codec_shapes(data: bytes) -> None:
    pcm = audio.ulaw_decode(data)
    assert len(pcm) == 2 * len(data)
    assert audio.ulaw_encode(pcm + b"\x01") == audio.ulaw_encode(pcm)  # odd byte ignored
    assert audio.ulaw_decode(audio.ulaw_encode(pcm)) == pcm  # decoded values are fixed points


def test_rms_dbfs() -> None:
    assert audio.rms_dbfs(b"") == audio.SILENCE_DBFS
    assert audio.rms_dbfs(bytes(320)) == audio.SILENCE_DBFS
    assert audio.rms_dbfs(struct.pack("<4h", 32767, -32767, 32767, -32767)) == pytest.approx(
        0, abs=0.01
    )
    assert audio.rms_dbfs(sine(1000, 8000, 0.5, 1.0)) == pytest.approx(-3.01, abs=0.05)
    assert audio.rms_dbfs(sine(1000, 8000, 0.5, 0.1)) == pytest.approx(-23.01, abs=0.05)


@pytest.mark.parametrize(
    ("fmt", "length"), [("ulaw_8000", 160), ("pcm_8000", 320), ("pcm_16000", 640)]
)
def test_silence_and_format_sizes(fmt: str, length: int) -> None:
    data = audio.silence(fmt, 20)
    assert len(data) == length
    assert audio.bytes_per_ms(fmt) * 20 == length
    pcm, rate = audio.to_pcm16(data, fmt)
    assert rate == audio.format_rate(fmt)
    assert audio.rms_dbfs(pcm) == audio.SILENCE_DBFS
    assert audio.duration_ms(len(data), fmt) == 20


def test_unknown_format_rejected() -> None:
    with pytest.raises(ValueError, match="alaw_8000"):
        audio.silence("alaw_8000", 20)


@pytest.mark.parametrize(
    ("src", "dst"), [(8000, 16000), (16000, 8000), (22050, 8000), (22050, 16000)]
)
def test_resample_keeps_a_pass_band_tone(src: int, dst: int) -> None:
    tone = sine(1000, src, 0.5)
    out = audio.resample_s16(tone, src, dst)
    assert len(out) // 2 == len(tone) // 2 * dst // src
    # Level kept (edges excluded: the stateless filter fades in and out over a few ms).
    inner = out[2 * dst // 50 : -2 * dst // 50]
    assert audio.rms_dbfs(inner) == pytest.approx(audio.rms_dbfs(tone), abs=0.2)
    # Frequency kept: count zero crossings.
    s = samples(inner)
    crossings = sum(1 for a, b in itertools.pairwise(s) if (a < 0) != (b < 0))
    assert crossings / (len(s) / dst) / 2 == pytest.approx(1000, rel=0.02)


def test_resample_suppresses_aliases() -> None:
    # 6 kHz cannot exist at 8 kHz: without a low-pass it would fold to 2 kHz at full level.
    out = audio.resample_s16(sine(6000, 22050, 0.5), 22050, 8000)
    assert audio.rms_dbfs(out[400:-400]) < audio.rms_dbfs(sine(6000, 22050, 0.5)) - 40


def test_resample_edges() -> None:
    assert audio.resample_s16(b"", 8000, 16000) == b""
    assert audio.resample_s16(b"\x01\x02\x03", 8000, 8000) == b"\x01\x02"
    dc = struct.pack("<800h", *([1000] * 800))
    assert set(samples(audio.resample_s16(dc, 8000, 16000)[200:-200])) == {1000}
    with pytest.raises(ValueError):
        audio.resample_s16(dc, 0, 8000)


@pytest.mark.parametrize("fmt", ["ulaw_8000", "pcm_8000", "pcm_16000"])
def test_format_round_trip(fmt: str) -> None:
    tone = sine(440, 16000, 0.2)
    encoded = audio.from_pcm16(tone, 16000, fmt)
    assert len(encoded) == pytest.approx(0.2 * 1000 * audio.bytes_per_ms(fmt), abs=2)
    pcm, rate = audio.to_pcm16(encoded, fmt)
    assert rate == audio.format_rate(fmt)
    back = audio.resample_s16(pcm, rate, 16000)
    assert audio.rms_dbfs(back[400:-400]) == pytest.approx(audio.rms_dbfs(tone), abs=0.3)
