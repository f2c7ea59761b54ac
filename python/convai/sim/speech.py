"""Real speech for the simulator, synthesised with espeak-ng and cached.

The simulator must sound like an agent, not a tone: callers hear it in the demo and the
benchmarks measure real speech levels. Synthesis costs ~0.1 s of espeak-ng plus resampling, so
every phrase is cached on disk (shared across processes and runs) and in memory, already encoded
in the target ConvAI format.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

from convai import audio

__all__ = [
    "ESPEAK_ENV",
    "SpeechUnavailableError",
    "cache_dir",
    "espeak_binary",
    "espeak_pcm",
    "synthesize",
    "synthesize_async",
]

log = logging.getLogger("convai.sim")

ESPEAK_ENV = "CONVAI_SIM_ESPEAK"  # path of the espeak-ng binary, if not on PATH
CACHE_ENV = "CONVAI_SIM_CACHE_DIR"
VOICE = "en-us"
WORDS_PER_MINUTE = 160
# Bump when synthesis or resampling changes, so stale cache files are not reused.
_CACHE_VERSION = "1"
_MEMORY_LIMIT = 256  # phrases kept in memory per process

_memory: dict[tuple[str, str], bytes] = {}
_memory_lock = threading.Lock()


class SpeechUnavailableError(RuntimeError):
    """espeak-ng is missing or failed: the simulator has no tone fallback by design."""


def espeak_binary() -> str:
    """Path of espeak-ng, or SpeechUnavailableError with what to install."""
    configured = os.environ.get(ESPEAK_ENV)
    found = shutil.which(configured or "espeak-ng")
    if found is None:
        raise SpeechUnavailableError(
            f"espeak-ng not found ({'$' + ESPEAK_ENV + '=' + configured if configured else 'PATH'})"
            ": the ConvAI simulator speaks real synthesised speech and has no tone fallback; "
            "install it (Debian/Ubuntu: apt-get install espeak-ng) or set $" + ESPEAK_ENV
        )
    return found


def cache_dir() -> Path:
    """$CONVAI_SIM_CACHE_DIR, else $XDG_CACHE_HOME/convai-sim, else /tmp/convai-sim-cache-<uid>."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "convai-sim"
    # Per user: a directory another user created in /tmp would not be writable.
    return Path(tempfile.gettempdir()) / f"convai-sim-cache-{os.getuid()}"


def _parse_wav(wav: bytes) -> tuple[bytes, int]:
    """(s16le PCM, rate) from espeak-ng's WAV. Its stdout header carries placeholder sizes
    (0x7ffff000) because a pipe cannot be seeked, so the data chunk runs to the end."""
    if len(wav) < 12 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise SpeechUnavailableError("espeak-ng did not produce a WAV stream")
    pos, rate = 12, 0
    while pos + 8 <= len(wav):
        cid, size = wav[pos : pos + 4], struct.unpack_from("<I", wav, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            fmt_tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", wav, body)
            if fmt_tag != 1 or channels != 1 or bits != 16:
                raise SpeechUnavailableError(
                    f"unexpected espeak-ng WAV format: tag {fmt_tag}, {channels} ch, {bits} bit"
                )
        elif cid == b"data":
            if rate == 0:
                break
            data = wav[body : min(len(wav), body + size)]
            return data[: len(data) & ~1], rate
        pos = body + size + (size & 1)
    raise SpeechUnavailableError("espeak-ng WAV has no fmt/data chunk")


def espeak_pcm(text: str) -> tuple[bytes, int]:
    """Synthesise text with espeak-ng → (s16le PCM, sample rate, 22050 Hz in practice)."""
    binary = espeak_binary()
    try:
        # Text on stdin, so a phrase that starts with "-" is never read as an option.
        proc = subprocess.run(
            [binary, "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "--stdout"],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpeechUnavailableError(f"espeak-ng failed to run: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise SpeechUnavailableError(f"espeak-ng exited with {proc.returncode}: {err}")
    return _parse_wav(proc.stdout)


def _cache_path(text: str, fmt: str) -> Path:
    key = "\0".join((_CACHE_VERSION, VOICE, str(WORDS_PER_MINUTE), fmt, text))
    return cache_dir() / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:40]}.{fmt}.raw"


def _read_cache(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write_cache(path: Path, data: bytes) -> None:
    # Write-then-rename: concurrent simulators (the benchmark runs several) never see half a file.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs speed
        log.debug("speech cache not writable (%s): %s", path.parent, exc)


def synthesize(text: str, fmt: str) -> bytes:
    """Speech for text, encoded in the ConvAI format fmt (e.g. ulaw_8000). Cached; blocking."""
    audio.format_rate(fmt)  # reject unknown formats before doing any work
    key = (text, fmt)
    with _memory_lock:
        hit = _memory.get(key)
    if hit is not None:
        return hit
    path = _cache_path(text, fmt)
    data = _read_cache(path)
    if data is None:
        pcm, rate = espeak_pcm(text)
        data = audio.from_pcm16(pcm, rate, fmt)
        _write_cache(path, data)
    with _memory_lock:
        if len(_memory) >= _MEMORY_LIMIT:
            _memory.pop(next(iter(_memory)))
        _memory[key] = data
    return data


async def synthesize_async(text: str, fmt: str) -> bytes:
    """synthesize() off the event loop: a cache miss spends ~0.1-0.3 s in espeak-ng and Python."""
    with _memory_lock:
        hit = _memory.get((text, fmt))
    if hit is not None:
        return hit
    return await asyncio.get_running_loop().run_in_executor(None, synthesize, text, fmt)
