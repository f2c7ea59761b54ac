"""The phases of one conversation and how it ends: pure, no I/O and no asyncio.

Everything that affects the session's state machine lives here, in the spirit of h11's
``_state.py``; ``session.py`` performs the I/O each move implies. The machine::

    CONNECTING ──metadata──► TALKING
        │                       │
        └──────── end() ────────┴──► CLOSING ──run() returns──► DONE

* CONNECTING: signed URL, WebSocket handshake, waiting for the conversation metadata.
  Caller audio is buffered (newest 1 s), DTMF is held.
* TALKING: the metadata is accepted; audio and control frames flow both ways.
* CLOSING: :meth:`Lifecycle.end` has decided why the conversation ends. The first decision
  stands: a hangup that races the server's close stays a hangup, and a close frame that
  follows our own decision only fills in the close code. Nothing the server sends is
  processed any more; nothing more is sent except the close.
* DONE: ``Session.run()`` has returned the result.

A transfer (issue 10) adds TRANSFERRING between TALKING and CLOSING: enter it from TALKING
with :meth:`Lifecycle.to`, leave it back to TALKING, or end() from it like from any live
phase. Add it to :class:`Phase`, :data:`LIVE` if audio should keep flowing, and ``_NEXT``.

Play-out (issue 11 (4)): the agent audio already received is played to the caller before
the call ends when the conversation ended normally (COMPLETED), with a transfer, or by a
network loss (a TCP reset, no close frame): the server did not take those words back, they
were on their way to the caller, and a reset must not cut them off mid-sentence. It is not
played when the server broke the conversation off itself (an error, a policy decision, a
timeout: it disowns what it was saying, a policy violation may be the very words, and the
dialplan should reach its fallback at once), after a caller hangup (no one to hear it) or a
shutdown (Asterisk must stop promptly). :attr:`Outcome.play_out` carries the decision to the
host, and C obeys it (``call_on_end`` in ``c/call.c``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .protocol import EndReason, ErrorEvent, end_reason, printable

__all__ = ["LIVE", "Ending", "Lifecycle", "Outcome", "Phase", "Status", "close_outcome"]


class Phase(enum.Enum):
    CONNECTING = "connecting"
    TALKING = "talking"
    CLOSING = "closing"
    DONE = "done"


# Phases in which the session takes caller audio, DTMF and control frames.
LIVE: Final = frozenset({Phase.CONNECTING, Phase.TALKING})

_NEXT: Final[Mapping[Phase, frozenset[Phase]]] = {
    Phase.CONNECTING: frozenset({Phase.TALKING, Phase.CLOSING}),
    Phase.TALKING: frozenset({Phase.CLOSING}),
    Phase.CLOSING: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


class Status(enum.StrEnum):
    """``ELEVENLABS_STATUS``: the outcomes the dialplan sees."""

    COMPLETED = "COMPLETED"
    HANGUP = "HANGUP"
    FAILED = "FAILED"
    TRANSFER = "TRANSFER"  # a transfer tool handed the caller on (tools.py)


_COMPLETED_REASONS: Final = frozenset(
    {EndReason.COMPLETED, EndReason.AGENT_ENDED_CALL, EndReason.MAX_DURATION}
)
# Endings after which the agent's last words are played (see the module docstring).
_PLAY_OUT: Final = _COMPLETED_REASONS | {EndReason.TRANSFER, EndReason.NETWORK_LOSS}


def status_for(reason: EndReason) -> Status:
    if reason is EndReason.CALLER_HANGUP:
        return Status.HANGUP
    if reason is EndReason.TRANSFER:
        return Status.TRANSFER
    return Status.COMPLETED if reason in _COMPLETED_REASONS else Status.FAILED


@dataclass(frozen=True, slots=True)
class Ending:
    """The decision: why the conversation ends, and the close frame we send, if any."""

    reason: EndReason
    detail: str
    close: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``run()`` reports, derived from the decision and what the socket saw."""

    status: Status
    reason: EndReason
    detail: str
    close_code: int | None
    play_out: bool


class Lifecycle:
    """The phase of one conversation and its end; the only code that changes either."""

    def __init__(self) -> None:
        self.phase = Phase.CONNECTING
        self.ending: Ending | None = None
        self.close_code: int | None = None  # of the close handshake, once one was seen
        self.talked = False  # the metadata was accepted at some point

    @property
    def live(self) -> bool:
        return self.phase in LIVE

    def to(self, phase: Phase) -> None:
        """Move to ``phase``; a move the machine does not have is a bug of ours. CLOSING is
        entered only by :meth:`end`, so there is never a CLOSING without a decision."""
        if phase is Phase.CLOSING:
            raise RuntimeError("CLOSING is entered with end(), which says why")
        self._move(phase)

    def _move(self, phase: Phase) -> None:
        if phase not in _NEXT[self.phase]:
            raise RuntimeError(f"no move from {self.phase.name} to {phase.name}")
        self.phase = phase
        if phase is Phase.TALKING:
            self.talked = True

    def end(self, reason: EndReason, detail: str, close: tuple[int, str] | None = None) -> bool:
        """Decide the end (and move to CLOSING) unless it is decided already.

        Returns whether this call decided it, so the caller performs the close only then.
        """
        if self.ending is not None or not self.live:
            return False
        self.ending = Ending(reason, detail, close)
        self._move(Phase.CLOSING)
        return True

    def outcome(self) -> Outcome:
        ending = self.ending
        if ending is None:  # run() always decides; this is a guard, not a path
            ending = Ending(EndReason.SERVER_ERROR, "internal error: the end was not decided")
        return Outcome(
            status_for(ending.reason),
            ending.reason,
            ending.detail,
            self.close_code,
            self.talked and ending.reason in _PLAY_OUT,
        )


def close_outcome(
    *,
    rcvd: tuple[int, str] | None,
    sent: tuple[int, str] | None,
    we_closed_first: bool,
    error: ErrorEvent | None,
    saw_end_call: bool,
    max_message_bytes: int,
) -> tuple[EndReason, str]:
    """Why a conversation ended that *the connection* ended (nothing was decided before).

    ``rcvd``/``sent`` are the close frames (code, reason) received and sent, None when there
    was none. If we closed first without having decided to, websockets failed the
    connection itself because the server broke the protocol, and the close it sent names
    the cause (1009: a message over the size limit).
    """
    if sent is not None and we_closed_first:
        code, why = sent[0], printable(sent[1])
        if code == 1009:
            limit = max_message_bytes
            return EndReason.MESSAGE_TOO_BIG, (
                f"the server sent a message over the {limit}-byte limit"
                f" ({limit / 2**20:g} MiB); closed with 1009 ({why})"
            )
        if code == 1011 and "keepalive" in why:
            return EndReason.NETWORK_LOSS, f"the server stopped answering pings ({why})"
        return EndReason.SERVER_ERROR, f"closed the connection with {code} ({why})"
    reason = end_reason(rcvd[0] if rcvd is not None else None, error, saw_end_call)
    if error is not None and (error.error_type or error.message):
        detail = f"{error.error_type or 'error'}: {error.message or ''}".rstrip(": ")
    elif reason is EndReason.AGENT_ENDED_CALL:
        detail = "the agent ended the call"
    elif rcvd is not None:  # the close reason is the server's text: printable
        detail = f"server closed the connection with {rcvd[0]}" + (
            f" ({printable(rcvd[1])})" if rcvd[1] else ""
        )
    else:
        detail = "connection lost without a close frame"
    return reason, detail
