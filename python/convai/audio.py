"""Pure audio helpers: G.711 μ-law, a small resampler, levels and the ConvAI audio formats.

No audioop (removed in Python 3.13): everything is table driven so the per-call cost stays
small. PCM is always signed 16-bit little-endian mono ("s16le"), whatever the host's byte order.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Callable, Sequence
from functools import lru_cache
from operator import mul

from .protocol import AUDIO_FORMATS, AudioFormat

__all__ = [
    "FORMATS",
    "SILENCE_DBFS",
    "bytes_per_ms",
    "duration_ms",
    "format_rate",
    "from_pcm16",
    "is_ulaw",
    "resample_s16",
    "rms_dbfs",
    "silence",
    "to_pcm16",
    "ulaw_decode",
    "ulaw_encode",
]

# Every format the agent API accepts (reference §5); their facts live in protocol.py.
FORMATS: tuple[str, ...] = tuple(AUDIO_FORMATS)

# rms_dbfs() of digital silence: a finite floor keeps comparisons, logs and JSON simple.
SILENCE_DBFS = -120.0

_BIG_ENDIAN = sys.byteorder == "big"


# --- G.711 μ-law ------------------------------------------------------------------------------
# Bit-exact with sox: the sample is rounded to 14 bits (half up, saturating), then coded by the
# Sun/ITU reference segment search. Asterisk's default table codes each group of four samples
# from its last member instead of rounding, so it picks the neighbouring code for 510 of the
# 65536 inputs (next to step boundaries): one quantisation step. Decoding is identical.
_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _ulaw_encode_sample(sample: int) -> int:
    v = min((sample + 2) >> 2, 8191)  # round to 14 bits like sox's SOX_SAMPLE_TO_SIGNED(14)
    if v < 0:
        v = -v
        mask = 0x7F
    else:
        mask = 0xFF
    v = min(v, 8159) + 33
    for seg, end in enumerate(_SEG_END):
        if v <= end:
            return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask
    return 0x7F ^ mask


def _ulaw_decode_byte(u: int) -> int:
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


# Encoder table indexed by the sample read as unsigned 16-bit: 64 KiB, built once at import.
_ENC = bytes(_ulaw_encode_sample(i - 65536 if i >= 32768 else i) for i in range(65536))
_DEC = tuple(_ulaw_decode_byte(u) for u in range(256))
# Decoding is two bytes.translate() calls (low and high byte of each sample), interleaved: C speed.
_DEC_LO = bytes(v & 0xFF for v in _DEC)
_DEC_HI = bytes((v >> 8) & 0xFF for v in _DEC)


def _samples(pcm: bytes | bytearray | memoryview, typecode: str = "h") -> array[int]:
    """s16le bytes → array of native ints (a trailing odd byte is ignored)."""
    a: array[int] = array(typecode)
    mv = memoryview(pcm)
    a.frombytes(mv[: len(mv) & ~1])
    if _BIG_ENDIAN:
        a.byteswap()
    return a


def _to_bytes(a: array[int]) -> bytes:
    if _BIG_ENDIAN:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def ulaw_encode(pcm: bytes | bytearray | memoryview) -> bytes:
    """s16le PCM → G.711 μ-law, one byte per sample."""
    return bytes(map(_ENC.__getitem__, _samples(pcm, "H")))


def ulaw_decode(data: bytes | bytearray | memoryview) -> bytes:
    """G.711 μ-law → s16le PCM, two bytes per input byte."""
    src = bytes(data)
    out = bytearray(2 * len(src))
    out[0::2] = src.translate(_DEC_LO)
    out[1::2] = src.translate(_DEC_HI)
    return bytes(out)


# --- levels -----------------------------------------------------------------------------------
_Dot = Callable[[Sequence[float], Sequence[float]], float]
_sumprod: _Dot | None = getattr(math, "sumprod", None)  # Python ≥ 3.12


def _dot_fallback(a: Sequence[float], b: Sequence[float]) -> float:
    return float(sum(map(mul, a, b)))


def _sum_squares(a: array[int]) -> float:
    if _sumprod is not None:  # one C loop
        return float(_sumprod(a, a))
    return float(sum(map(mul, a, a)))


def rms_dbfs(pcm: bytes | bytearray | memoryview) -> float:
    """RMS level of s16le PCM in dB relative to full scale (a full-scale square wave is 0 dBFS;
    a full-scale sine is about -3). Silence and empty input give SILENCE_DBFS."""
    a = _samples(pcm)
    if not a:
        return SILENCE_DBFS
    ms = _sum_squares(a) / len(a)
    if ms <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(ms / (32768.0 * 32768.0)))


# --- resampling -------------------------------------------------------------------------------
_Taps = tuple[float, ...]  # one polyphase branch
_ZERO_CROSSINGS = 10  # sinc lobes kept each side, at the lower of the two rates
_ROLLOFF = 0.92  # pass band edge as a fraction of the lower Nyquist frequency


@lru_cache(maxsize=32)
def _filter_bank(src_rate: int, dst_rate: int) -> tuple[int, int, int, tuple[_Taps, ...]]:
    """Polyphase windowed-sinc bank for src→dst: (L, M, half width in input samples, phases)."""
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    ratio = min(1.0, dst_rate / src_rate)
    fc = 0.5 * ratio * _ROLLOFF  # cut-off in cycles per input sample: anti-alias when going down
    half = math.ceil(_ZERO_CROSSINGS / ratio)
    bank: list[tuple[float, ...]] = []
    for p in range(up):
        frac = p / up
        taps: list[float] = []
        for d in range(-half + 1, half + 1):
            x = d - frac
            u = x / half
            window = 0.42 + 0.5 * math.cos(math.pi * u) + 0.08 * math.cos(2.0 * math.pi * u)
            arg = 2.0 * fc * x
            sinc = 1.0 if arg == 0.0 else math.sin(math.pi * arg) / (math.pi * arg)
            taps.append(2.0 * fc * sinc * window)
        total = sum(taps)
        bank.append(tuple(t / total for t in taps))  # unity DC gain in every phase
    return up, down, half, tuple(bank)


def resample_s16(pcm: bytes | bytearray | memoryview, src_rate: int, dst_rate: int) -> bytes:
    """Resample s16le mono PCM with a band-limited (windowed-sinc, polyphase) interpolator.

    Stateless: each call treats its input as a whole signal padded with silence, so use it on
    whole utterances or long blocks, not on 20 ms frames of a stream (edges would click).
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} → {dst_rate}")
    x = _samples(pcm)
    if src_rate == dst_rate or not x:
        return _to_bytes(x)
    up, down, half, bank = _filter_bank(src_rate, dst_rate)
    padded = [0] * half + x.tolist() + [0] * half
    n_out = len(x) * up // down
    width = 2 * half
    dot = _sumprod if _sumprod is not None else _dot_fallback
    out = array("h", bytes(2 * n_out))
    for n in range(n_out):
        i, p = divmod(n * down, up)
        v = round(dot(bank[p], padded[i + 1 : i + 1 + width]))
        out[n] = 32767 if v > 32767 else -32768 if v < -32768 else v
    return _to_bytes(out)


# --- ConvAI formats ---------------------------------------------------------------------------
def _format(fmt: str) -> AudioFormat:
    try:
        return AUDIO_FORMATS[fmt]
    except KeyError:
        raise ValueError(
            f"unsupported ConvAI audio format {fmt!r}; expected one of {FORMATS}"
        ) from None


def format_rate(fmt: str) -> int:
    """Sample rate of a ConvAI format, e.g. 8000 for ulaw_8000."""
    return _format(fmt).sample_rate


def is_ulaw(fmt: str) -> bool:
    return _format(fmt).encoding == "ulaw"


def bytes_per_ms(fmt: str) -> float:
    """Encoded bytes per millisecond (8.0 for ulaw_8000, 32.0 for pcm_16000)."""
    f = _format(fmt)
    return f.sample_rate * f.sample_width / 1000.0


def duration_ms(data_len: int, fmt: str) -> float:
    """Duration of data_len encoded bytes of fmt, in milliseconds."""
    return data_len / bytes_per_ms(fmt)


def silence(fmt: str, ms: int) -> bytes:
    """ms milliseconds of digital silence, encoded in fmt."""
    f = _format(fmt)
    return bytes([f.silence_byte]) * (f.sample_rate * ms // 1000 * f.sample_width)


def to_pcm16(data: bytes | bytearray | memoryview, fmt: str) -> tuple[bytes, int]:
    """Audio encoded in a ConvAI format → (s16le PCM, sample rate)."""
    rate = format_rate(fmt)
    if is_ulaw(fmt):
        return ulaw_decode(data), rate
    mv = memoryview(data)
    return bytes(mv[: len(mv) & ~1]), rate


def from_pcm16(pcm: bytes | bytearray | memoryview, rate: int, fmt: str) -> bytes:
    """s16le PCM at rate → audio encoded in a ConvAI format (resampled when the rates differ)."""
    out = resample_s16(pcm, rate, format_rate(fmt))
    return ulaw_encode(out) if is_ulaw(fmt) else out
