"""Pure playout bookkeeping for agent audio: cutting it into exact 20 ms frames.

No I/O and no asyncio here, so it is tested on its own (tests/unit/test_playout.py).
"""

from __future__ import annotations


class Framer:
    """Cuts agent audio of any length into exact frames, one event id per run of frames.

    ``feed`` returns runs: ``(event_id, data)`` with ``len(data)`` a whole, non-zero number
    of frames, so the host queues a chunk's frames into the ring in one C call. Audio of a new
    event id first pads and emits what is left of the previous one, so no frame ever mixes
    two turns.
    """

    def __init__(self, frame_bytes: int, silence_byte: int) -> None:
        self.frame_bytes = frame_bytes
        self._silence = bytes([silence_byte]) * frame_bytes
        self._tail = b""
        self._tail_id = 0

    def feed(self, event_id: int, audio: bytes) -> list[tuple[int, bytes]]:
        out = self.flush() if self._tail and event_id != self._tail_id else []
        data = self._tail + audio if self._tail else audio
        self._tail_id = event_id
        n = len(data) - len(data) % self.frame_bytes
        if n:
            out.append((event_id, data if n == len(data) else data[:n]))
        self._tail = data[n:]
        return out

    def flush(self) -> list[tuple[int, bytes]]:
        """Pad the partial frame left over, if any, with silence."""
        if not self._tail:
            return []
        frame = self._tail + self._silence[len(self._tail) :]
        self._tail = b""
        return [(self._tail_id, frame)]

    @property
    def pending(self) -> bool:
        return bool(self._tail)
