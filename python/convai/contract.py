"""The C<->Python contract, Python's half: the command codec and the shared tables.

Everything here is read from ``c/convai_shared.h`` through cffi (``convai._native``): the
command types and their records, the formats the channel can run in, the statuses and the
end reasons. Nothing is copied from C, so nothing can drift; ``tests/unit/test_c_contract.py``
checks the conventions the codec relies on.

A command is one fixed C record (``CONVAI_CMD_FOO`` -> ``struct convai_cmd_foo``) in one slot
of a command ring, its type in the slot's event id. :func:`encode` fills a record from
keyword arguments, cutting strings to fit; :func:`decode` checks a popped record's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ._native import ffi, lib  # type: ignore[import-not-found]

# Event ids travel through the rings as uint32.
RING_ID_MAX: Final = 0xFFFFFFFF


def _enum(name: str) -> dict[str, int]:
    return dict(ffi.typeof(name).relements)


COMMANDS: Final[dict[int, str]] = {
    value: f"struct {name.lower()}" for name, value in _enum("enum convai_cmd_type").items()
}


def encode(kind: int, **fields: object) -> Any:
    """The record of command ``kind`` with ``fields`` set; str values are UTF-8, cut (at a
    character boundary) to fit their char array with its NUL."""
    rec = ffi.new(COMMANDS[kind] + " *")
    types = {name: field.type for name, field in ffi.typeof(rec[0]).fields}
    for name, value in fields.items():
        if name not in types:
            raise AttributeError(f"{COMMANDS[kind]} has no field {name!r}")
        if isinstance(value, str):
            raw = value.encode("utf-8", errors="replace")[: ffi.sizeof(types[name]) - 1]
            value = raw.decode("utf-8", errors="ignore").encode("utf-8")
        setattr(rec, name, value)
    return rec


def size(kind: int) -> int:
    """The record size C expects for ``kind`` (0: a type C does not know)."""
    return int(lib.convai_cmd_size(kind))


def decode(kind: int, buf: Any, n: int) -> Any | None:
    """The record popped into ``buf`` (``n`` bytes), or None if ``kind`` is unknown or the
    size is not its record's."""
    if kind not in COMMANDS or n != size(kind):
        return None
    return ffi.cast(COMMANDS[kind] + " *", buf)


def text(field: Any) -> str:
    """A record's char array as str (C terminates it; invalid UTF-8 is replaced)."""
    return str(ffi.string(field).decode("utf-8", errors="replace"))


def ring_id(event_id: int) -> int:
    """``event_id`` clamped into the rings' uint32 range.

    The protocol core already refuses ids outside it; this keeps any integer from reaching
    cffi as an OverflowError. Clamping keeps the order that the interruption rule relies on.
    """
    return RING_ID_MAX if event_id > RING_ID_MAX else max(event_id, 0)


# --- shared tables ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Format:
    """A format the channel can run in (``struct convai_format_info``)."""

    code: int
    name: str
    sample_rate: int
    frame_bytes: int
    silence: int  # the byte a silent frame is filled with


def _formats() -> dict[str, Format]:
    out = {}
    for code in range(1, lib.CONVAI_FMT_MAX):
        info = lib.convai_format(code)
        name = text(info.name)
        out[name] = Format(code, name, info.sample_rate, info.frame_bytes, info.silence)
    return out


FORMATS: Final[dict[str, Format]] = _formats()
STATUSES: Final[dict[str, int]] = {
    text(lib.convai_status_name(i)): i for i in range(lib.CONVAI_STATUS_MAX)
}
REASONS: Final[dict[str, int]] = {
    text(lib.convai_reason_name(i)): i for i in range(1, lib.CONVAI_REASON_MAX)
}
# enum convai_xfer_state -> "accepted", "dialing", ... (what tools.Telephony expects).
XFER_STATES: Final[dict[int, str]] = {
    value: name.removeprefix("CONVAI_XFER_").lower()
    for name, value in _enum("enum convai_xfer_state").items()
}
