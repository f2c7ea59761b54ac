"""Sans-I/O core of the ElevenLabs Conversational AI ("ConvAI") WebSocket protocol.

Feed every server text frame to :meth:`ClientProtocol.receive` and get typed events back;
take the frames the protocol wants sent (pongs) from :meth:`ClientProtocol.data_to_send`;
build client messages with the builder methods. Nothing here touches a socket or an event
loop, so the whole wire format is tested without I/O (the asyncio glue is ``session.py``).

``receive`` never raises: bad JSON, non-objects, missing or ill-typed fields and bad base64
come out as :class:`MalformedMessage`, unknown types as :class:`UnknownMessage`. Unknown
*fields* are ignored, as the official clients do, so additive server changes do not break us.
A bug of ours becomes a MalformedMessage with ``internal`` set; the fuzz tests fail on it.

Hostile values. Everything here comes from the network, so two kinds of field are checked
before they reach the rest of the module:

* Event ids are the server's turn counters, small and non-negative. The down ring stores
  them as unsigned 32-bit integers, so an id outside ``0..2**32-1`` (2**63, -1) cannot be
  honoured: clamping a huge interruption id would silence the rest of the call and wrapping
  it would let stale audio play. Such a message is malformed and skipped, with a warning.
  Ids that go down or were never seen are valid: audio plays unless it is older than the
  highest interruption (below); a lower interruption id never lowers that mark.
* Identifiers (``conversation_id``, ``tool_name``, ``tool_call_id``) go into AMI headers,
  log lines, channel variables and the C command codec. They must match :data:`ID_PATTERN`
  (letters, digits, ``_ . : -``, 1 to 128 of them), so no tab, CR/LF, space or NUL ever
  passes; a message with any other value is malformed and skipped.

Interruption rule. Agent audio whose ``event_id`` is lower than the last interruption's is
stale and must never play; audio with an equal or higher id plays (the official JS client's
rule; the original module's ``<=`` swallowed real replies, elevenlabs-python#829). This core
does not apply it: it reports every :class:`Audio` and :class:`Interruption` with its id, and
the down ring's watermark (``c/convai_ring.h``, ``convai_ring_stale``) is the one authority,
for audio already queued and audio that arrives late alike (see ``host.py``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

__all__ = [
    "AUDIO_FORMATS",
    "EVENT_ID_MAX",
    "ID_PATTERN",
    "RESERVED_VARIABLE_PREFIX",
    "AgentResponse",
    "AgentResponseComplete",
    "AgentResponseCorrection",
    "AgentToolRequest",
    "AgentToolResponse",
    "Audio",
    "AudioFormat",
    "ClientProtocol",
    "ClientToolCall",
    "ConversationInitiationMetadata",
    "EndReason",
    "ErrorEvent",
    "Event",
    "Informational",
    "Interruption",
    "MalformedMessage",
    "Ping",
    "UnknownMessage",
    "UserTranscript",
    "VadScore",
    "bytes_for_ms",
    "end_reason",
    "format_interruption",
    "format_vad",
    "frame_bytes",
    "printable",
]

# Dynamic variables with this prefix are the server's own (system__caller_id, ...);
# sending one makes the server reject the conversation.
RESERVED_VARIABLE_PREFIX: Final = "system__"

EXCERPT_CHARS: Final = 120

# Event ids travel through the down ring as uint32 (c/convai_ring.h).
EVENT_ID_MAX: Final = 2**32 - 1
# Ids the server chooses and we pass on (AMI headers, logs, channel variables).
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# WebSocket close codes (RFC 6455 §7.4); an error event's ``code`` outside them is ignored.
_CLOSE_CODES: Final = range(1000, 5000)

# --------------------------------------------------------------------------- audio formats


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One of the agent audio formats (reference §5). PCM is s16le mono.

    The Python home of these facts (``audio.py`` and the simulator read them from here); the
    C side's table of the three a channel can run in is ``convai_format()`` in
    ``c/convai_shared.h``, and ``tests/unit/test_audio.py`` checks that the two agree.
    """

    name: str
    encoding: str  # "ulaw" | "pcm_s16le"
    sample_rate: int
    sample_width: int  # bytes per sample
    frame_bytes: int  # bytes per 20 ms frame
    silence_byte: int  # the byte digital silence is made of (μ-law 0xFF, PCM 0)


def _fmt(name: str, encoding: str, rate: int, width: int) -> AudioFormat:
    silence = 0xFF if encoding == "ulaw" else 0
    return AudioFormat(name, encoding, rate, width, rate * 20 // 1000 * width, silence)


AUDIO_FORMATS: Final[Mapping[str, AudioFormat]] = {
    f.name: f
    for f in (
        _fmt("ulaw_8000", "ulaw", 8000, 1),
        _fmt("pcm_8000", "pcm_s16le", 8000, 2),
        _fmt("pcm_16000", "pcm_s16le", 16000, 2),
        _fmt("pcm_22050", "pcm_s16le", 22050, 2),
        _fmt("pcm_24000", "pcm_s16le", 24000, 2),
        _fmt("pcm_44100", "pcm_s16le", 44100, 2),
        _fmt("pcm_48000", "pcm_s16le", 48000, 2),
    )
}

# The JS client assumes this when the metadata omits a format; it is also the agent default.
DEFAULT_AUDIO_FORMAT: Final = "pcm_16000"


def frame_bytes(fmt: str) -> int:
    """Bytes in one 20 ms frame of ``fmt``; ``ValueError`` for an unknown format."""
    try:
        return AUDIO_FORMATS[fmt].frame_bytes
    except KeyError:
        raise ValueError(f"unknown audio format {fmt!r}") from None


def bytes_for_ms(fmt: str, ms: int) -> int:
    """Bytes in ``ms`` milliseconds of ``fmt``, rounded down to whole samples."""
    try:
        f = AUDIO_FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown audio format {fmt!r}") from None
    return f.sample_rate * ms // 1000 * f.sample_width


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of everything :meth:`ClientProtocol.receive` returns."""


@dataclass(frozen=True, slots=True)
class ConversationInitiationMetadata(Event):
    conversation_id: str
    agent_output_audio_format: str
    user_input_audio_format: str


@dataclass(frozen=True, slots=True)
class Audio(Event):
    """Agent audio. Whether it still plays is the down ring's decision (the module docstring)."""

    event_id: int
    audio: bytes
    alignment: dict[str, Any] | None
    is_final: bool


@dataclass(frozen=True, slots=True)
class Interruption(Event):
    event_id: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class Ping(Event):
    """A server ping; the pong is already queued in ``data_to_send``."""

    event_id: int
    ping_ms: int | None


@dataclass(frozen=True, slots=True)
class VadScore(Event):
    score: float


@dataclass(frozen=True, slots=True)
class UserTranscript(Event):
    text: str
    event_id: int | None
    tentative: bool


@dataclass(frozen=True, slots=True)
class AgentResponse(Event):
    text: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentResponseCorrection(Event):
    original: str
    corrected: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentResponseComplete(Event):
    event_id: int | None


@dataclass(frozen=True, slots=True)
class ClientToolCall(Event):
    tool_name: str
    tool_call_id: str
    parameters: dict[str, Any]
    event_id: int | None
    expects_response: bool  # absent on the wire means true (reference §6.6)


@dataclass(frozen=True, slots=True)
class AgentToolRequest(Event):
    """A server-side (system/webhook/mcp) tool is about to run. Informational."""

    tool_name: str
    tool_call_id: str
    tool_type: str | None
    event_id: int | None
    expects_response: bool | None


@dataclass(frozen=True, slots=True)
class AgentToolResponse(Event):
    """Result of a server-side tool; ``tool_name == "end_call"`` means the agent hung up.

    Also produced for ``agent_tool_response_full_payload`` (``full_payload`` true), which
    adds the verbatim result.
    """

    tool_name: str
    tool_call_id: str
    tool_type: str | None
    is_error: bool
    event_id: int | None
    is_called: bool | None = None
    is_blocked: bool = False
    full_payload: bool = False
    full_tool_result: str | None = None
    truncated: bool | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent(Event):
    """``error`` (JS contract) or ``client_error`` (server AsyncAPI) event.

    Parsed leniently: a field of the wrong type becomes None instead of making the whole
    message malformed, because this event decides the end reason of the call.
    """

    code: int | None
    error_type: str | None
    message: str | None
    reason: str | None = None
    wire_type: str = "error"


@dataclass(frozen=True, slots=True)
class Informational(Event):
    """A known message type the bridge takes no action on; ``payload`` is its inner object."""

    type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownMessage(Event):
    type: str


@dataclass(frozen=True, slots=True)
class MalformedMessage(Event):
    """A frame we could not use. ``type`` is its message type when it had a valid one;
    ``internal`` marks a bug of ours caught by ``receive``'s last resort."""

    error: str
    excerpt: str
    type: str | None = None
    internal: bool = False


# type -> name of the payload object, for the types reported as Informational.
INFORMATIONAL_TYPES: Final[Mapping[str, str]] = {
    "asr_initiation_metadata": "asr_initiation_metadata_event",
    "internal_turn_probability": "turn_probability_internal_event",
    "internal_tentative_agent_response": "tentative_agent_response_internal_event",
    "agent_chat_response_part": "text_response_part",
    "agent_reasoning_response_part": "reasoning_response_part",
    "agent_response_metadata": "agent_response_metadata_event",
    "mcp_tool_call": "mcp_tool_call",
    "mcp_connection_status": "mcp_connection_status",
    "context_usage": "context_usage_event",
    "guardrail_triggered": "guardrail_triggered_event",
    "rich_content": "rich_content",
    "agent_typing": "agent_typing_event",
    "external_agent_connected": "external_agent_connected_event",
    "external_agent_disconnected": "external_agent_disconnected_event",
    "audio_alignment": "audio_alignment_event",
    "dtmf_request": "dtmf_request_event",
}


# --------------------------------------------------------------------------- end reasons


class EndReason(enum.StrEnum):
    COMPLETED = "completed"
    AGENT_ENDED_CALL = "agent_ended_call"
    MAX_DURATION = "max_duration"
    TIMEOUT = "timeout"
    POLICY_VIOLATION = "policy_violation"
    SERVER_ERROR = "server_error"
    NETWORK_LOSS = "network_loss"
    CALLER_HANGUP = "caller_hangup"
    SIGNED_URL_FAILED = "signed_url_failed"
    CONNECT_FAILED = "connect_failed"
    UNSUPPORTED_FORMAT = "unsupported_format"
    SHUTDOWN = "shutdown"
    MESSAGE_TOO_BIG = "message_too_big"  # a server message over max_message_bytes (1009)
    TRANSFER = "transfer"  # a transfer tool handed the caller on (convai/tools.py)


TIMEOUT_ERROR_TYPES: Final = frozenset(
    {"transport_receive_timeout", "llm_timeout", "asyncio_timeout", "redis_timeout_error"}
)
# safety_violation closes with 1002 on the wire but is a policy decision, not a fault.
POLICY_ERROR_TYPES: Final = frozenset({"safety_violation", "policy_violation"})


def end_reason(close_code: int | None, error: ErrorEvent | None, saw_end_call: bool) -> EndReason:
    """Why the conversation ended (reference §4.15, §6.7).

    The error event, when there is one, is more specific than the close code, so it is
    consulted first; ``close_code`` None (or 1006) means no close frame arrived.
    """
    etype = (error.error_type or "").lower() if error is not None else ""
    if etype == "max_duration_exceeded":
        return EndReason.MAX_DURATION
    if etype in TIMEOUT_ERROR_TYPES or etype.endswith("_timeout"):
        return EndReason.TIMEOUT
    if etype in POLICY_ERROR_TYPES or "safety" in etype or "policy" in etype:
        return EndReason.POLICY_VIOLATION
    if saw_end_call:
        return EndReason.AGENT_ENDED_CALL
    code = close_code
    if code in (None, 1006) and error is not None and error.code is not None:
        code = error.code  # the error announced the close that never arrived
    if code is None or code == 1006:
        return EndReason.NETWORK_LOSS
    if code == 1000:
        return EndReason.COMPLETED
    if code == 1008:
        return EndReason.POLICY_VIOLATION
    return EndReason.SERVER_ERROR


# --------------------------------------------------------------------------- debug formatters


VAD_HIGH: Final = 0.7
VAD_MEDIUM: Final = 0.3


def format_vad(score: float, timestamp: str) -> list[str]:
    """Debug lines for a VAD score, in the original module's format.

    Levels: HIGH for score >= 0.7, MEDIUM for >= 0.3, LOW below.
    """
    level = "HIGH" if score >= VAD_HIGH else "MEDIUM" if score >= VAD_MEDIUM else "LOW"
    return [
        "=== VAD SCORE MESSAGE ===",
        f"VAD Score: {score:.3f}",
        f"Timestamp: {timestamp}",
        f"{level} voice activity detected (score={score:.3f})",
        "=== END VAD SCORE ===",
    ]


def format_interruption(event_id: int, removed: Sequence[int], remaining: int) -> list[str]:
    """Debug lines for an interruption, in the original module's format with the ``<`` rule."""
    lines = [
        "=== INTERRUPTION MESSAGE ===",
        f"Event ID: {event_id}",
        "User interrupted AI speech - stopping playback",
        f"Processing interruption for event_id={event_id} - clearing older audio",
    ]
    lines += [f"Removing audio chunk with event_id={r} (<{event_id})" for r in removed]
    lines += [
        f"Interruption processing complete: removed {len(removed)} audio chunks"
        f" with event_id < {event_id}",
        f"Remaining audio chunks in queue: {remaining}",
        "=== END INTERRUPTION ===",
    ]
    return lines


# --------------------------------------------------------------------------- parsing helpers


class _Bad(Exception):
    """A field problem; becomes a MalformedMessage."""


def _type_name(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _payload(msg: dict[str, Any], key: str) -> dict[str, Any]:
    v = msg.get(key)
    if not isinstance(v, dict):
        raise _Bad(f"{key}: expected object, got {_type_name(v)}")
    return v


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _req_event_id(d: dict[str, Any], key: str, where: str) -> int:
    v = d.get(key)
    if not _is_int(v):
        raise _Bad(f"{where}.{key}: expected integer, got {_type_name(v)}")
    if not 0 <= v <= EVENT_ID_MAX:
        raise _Bad(f"{where}.{key}: {_short_int(v)} is outside 0..{EVENT_ID_MAX}")
    return int(v)


def _opt_event_id(d: dict[str, Any], key: str, where: str) -> int | None:
    return None if d.get(key) is None else _req_event_id(d, key, where)


def _short_int(v: int) -> str:
    return str(v) if v.bit_length() < 200 else f"a {v.bit_length()}-bit integer"


def _req_id(d: dict[str, Any], key: str, where: str) -> str:
    v = _req_str(d, key, where)
    if ID_PATTERN.fullmatch(v) is None:
        raise _Bad(f"{where}.{key}: {_excerpt(v, 40)!r} is not a valid identifier")
    return v


def _opt_id(d: dict[str, Any], key: str, where: str) -> str:
    """An optional identifier; absent (or null) is ""."""
    return "" if d.get(key) is None else _req_id(d, key, where)


def _req_str(d: dict[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise _Bad(f"{where}.{key}: expected string, got {_type_name(v)}")
    return v


def _opt_str(d: dict[str, Any], key: str, where: str) -> str | None:
    v = d.get(key)
    if v is None or isinstance(v, str):
        return v
    raise _Bad(f"{where}.{key}: expected string, got {_type_name(v)}")


def _opt_bool(d: dict[str, Any], key: str, where: str) -> bool | None:
    v = d.get(key)
    if v is None or isinstance(v, bool):
        return v
    raise _Bad(f"{where}.{key}: expected boolean, got {_type_name(v)}")


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        return float(v)
    except OverflowError:  # an integer beyond the float range
        return None


def _b64(s: str, where: str) -> bytes:
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Bad(f"{where}: invalid base64 ({exc})") from None


def _reject_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; the server never sends them.
    raise ValueError(f"non-standard JSON constant {name}")


# One decoder for every message: json.loads() with options builds a new one per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_json(text: str) -> Any:
    """``_DECODER.decode(text)``, without its two whitespace regex matches for the usual
    frame (an object, nothing around it): ~19 frames per call-second come through here.
    Anything else takes ``decode`` itself, so what is accepted and refused is unchanged."""
    if text[:1] == "{":
        msg, end = _DECODER.raw_decode(text)
        if end == len(text):
            return msg
    return _DECODER.decode(text)


# Control characters (C0, DEL, C1, line and paragraph separators) shown escaped, so an
# excerpt can never split or forge a log line.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _excerpt(data: object, chars: int = EXCERPT_CHARS) -> str:
    """At most ``chars`` characters of ``data`` (then "…"), control characters escaped."""
    if isinstance(data, bytes | bytearray | memoryview):
        text = bytes(data[: chars * 4]).decode("utf-8", errors="replace")
    else:
        text = data if isinstance(data, str) else repr(data)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text[: chars + 1])
    return text if len(text) <= chars else text[:chars] + "…"


def printable(text: str, limit: int = 300) -> str:
    """Server text made safe for one log line or result detail: control characters (CR, LF,
    tab, NUL...) escaped, at most ``limit`` characters."""
    return _excerpt(text, limit)


def _dumps(obj: object) -> str:
    """Compact JSON that is always valid UTF-8: a lone surrogate (JSON lets a server send
    "\\ud800", and a tool may echo it back) is written as an escape instead of breaking the
    WebSocket send."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text


# --------------------------------------------------------------------------- the protocol


class ClientProtocol:
    """Client side of one ConvAI conversation. Not thread-safe; one per call."""

    def __init__(self) -> None:
        self.conversation_id: str | None = None
        self.input_format: str | None = None
        self.output_format: str | None = None
        self.last_event_id: int = 0  # highest turn id seen (pings excluded: own counter)
        self.last_interrupt_id: int = 0  # highest interruption seen; the ring applies the rule
        self.last_ping_ms: int | None = None
        self.last_error: ErrorEvent | None = None
        self.saw_end_call: bool = False
        self._out: list[str] = []

    # ---- incoming

    def receive(self, data: str | bytes) -> list[Event]:
        """Decode one server frame into events. Never raises."""
        try:
            return self._receive(data)
        except Exception as exc:  # last resort: the contract is "never raises"
            error = f"internal error: {type(exc).__name__}: {exc}"
            return [MalformedMessage(error, _excerpt(data), internal=True)]

    @property
    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` has anything (asked per frame; no list built)."""
        return bool(self._out)

    def data_to_send(self) -> list[str]:
        """Frames the protocol queued itself (pongs), in order; clears the queue."""
        out, self._out = self._out, []
        return out

    def _receive(self, data: str | bytes) -> list[Event]:
        if isinstance(data, str):  # text frames: what the server sends
            text = data
        elif isinstance(data, bytes | bytearray | memoryview):
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError as exc:
                return [MalformedMessage(f"invalid UTF-8: {exc}", _excerpt(data))]
        else:
            return [MalformedMessage(f"unsupported frame type {type(data).__name__}", "")]
        try:
            msg = _decode_json(text)
        except (ValueError, RecursionError) as exc:
            return [MalformedMessage(f"invalid JSON: {exc}", _excerpt(text))]
        if not isinstance(msg, dict):
            return [
                MalformedMessage(f"expected a JSON object, got {_type_name(msg)}", _excerpt(text))
            ]
        mtype = msg.get("type")
        if not isinstance(mtype, str):
            return [
                MalformedMessage(f"type: expected string, got {_type_name(mtype)}", _excerpt(text))
            ]
        try:
            event = self._decode(mtype, msg)
        except _Bad as exc:
            return [MalformedMessage(str(exc), _excerpt(text), mtype[:64])]
        return [event]

    def _seen(self, event_id: int | None) -> None:
        if event_id is not None and event_id > self.last_event_id:
            self.last_event_id = event_id

    def _decode(self, mtype: str, msg: dict[str, Any]) -> Event:
        handler = _DECODERS.get(mtype)
        if handler is not None:
            return handler(self, msg)
        key = INFORMATIONAL_TYPES.get(mtype)
        if key is not None:
            payload = msg.get(key)
            if not isinstance(payload, dict):
                payload = {k: v for k, v in msg.items() if k != "type"}
            return Informational(mtype, payload)
        return UnknownMessage(mtype)

    def _metadata(self, msg: dict[str, Any]) -> Event:
        w = "conversation_initiation_metadata_event"
        p = _payload(msg, w)
        conv = _req_id(p, "conversation_id", w)
        out = _opt_str(p, "agent_output_audio_format", w) or DEFAULT_AUDIO_FORMAT
        inp = _opt_str(p, "user_input_audio_format", w) or DEFAULT_AUDIO_FORMAT
        self.conversation_id, self.output_format, self.input_format = conv, out, inp
        return ConversationInitiationMetadata(conv, out, inp)

    def _audio(self, msg: dict[str, Any]) -> Event:
        if "audio_event" not in msg and isinstance(msg.get("audio"), dict):
            return self._legacy_audio(msg["audio"])
        w = "audio_event"
        p = _payload(msg, w)
        event_id = _req_event_id(p, "event_id", w)
        audio = _b64(_req_str(p, "audio_base_64", w), f"{w}.audio_base_64")
        alignment = p.get("alignment")
        if alignment is not None and not isinstance(alignment, dict):
            raise _Bad(f"{w}.alignment: expected object, got {_type_name(alignment)}")
        is_final = bool(_opt_bool(p, "is_final", w))
        self._seen(event_id)
        return Audio(event_id, audio, alignment, is_final)

    def _legacy_audio(self, p: dict[str, Any]) -> Event:
        # {"type":"audio","audio":{"chunk":...}} from old examples (UNCONFIRMED shape). It
        # carries no id, so it is taken as part of the latest turn seen.
        audio = _b64(_req_str(p, "chunk", "audio"), "audio.chunk")
        event_id = _opt_event_id(p, "event_id", "audio")
        if event_id is None:
            event_id = self.last_event_id
        return Audio(event_id, audio, None, False)

    def _interruption(self, msg: dict[str, Any]) -> Event:
        w = "interruption_event"
        p = _payload(msg, w)
        event_id = _req_event_id(p, "event_id", w)
        reason = _opt_str(p, "reason", w)
        self.last_interrupt_id = max(self.last_interrupt_id, event_id)
        self._seen(event_id)
        return Interruption(event_id, reason)

    def _ping(self, msg: dict[str, Any]) -> Event:
        w = "ping_event"
        p = _payload(msg, w)
        event_id = _req_event_id(p, "event_id", w)
        raw_ms = _number(p.get("ping_ms"))
        ping_ms = round(raw_ms) if raw_ms is not None and abs(raw_ms) < 1e12 else None
        if ping_ms is not None:
            self.last_ping_ms = ping_ms
        self._out.append(self.pong(event_id))
        return Ping(event_id, ping_ms)

    def _vad(self, msg: dict[str, Any]) -> Event:
        w = "vad_score_event"
        p = _payload(msg, w)
        raw = p.get("vad_score")
        score = _number(raw)
        if score is None:
            got = "an integer beyond float range" if _is_int(raw) else _type_name(raw)
            raise _Bad(f"{w}.vad_score: expected number, got {got}")
        return VadScore(score)

    def _transcript(self, msg: dict[str, Any]) -> Event:
        tentative = msg["type"] == "tentative_user_transcript"
        w = "tentative_user_transcription_event" if tentative else "user_transcription_event"
        p = _payload(msg, w)
        text = _req_str(p, "user_transcript", w)
        event_id = _opt_event_id(p, "event_id", w)
        self._seen(event_id)
        return UserTranscript(text, event_id, tentative)

    def _agent_response(self, msg: dict[str, Any]) -> Event:
        w = "agent_response_event"
        p = _payload(msg, w)
        text = _req_str(p, "agent_response", w)
        event_id = _opt_event_id(p, "event_id", w)
        self._seen(event_id)
        return AgentResponse(text, event_id)

    def _correction(self, msg: dict[str, Any]) -> Event:
        w = "agent_response_correction_event"
        p = _payload(msg, w)
        original = _req_str(p, "original_agent_response", w)
        corrected = _req_str(p, "corrected_agent_response", w)
        event_id = _opt_event_id(p, "event_id", w)
        self._seen(event_id)
        return AgentResponseCorrection(original, corrected, event_id)

    def _complete(self, msg: dict[str, Any]) -> Event:
        w = "agent_response_complete_event"
        p = msg.get(w)
        event_id = _opt_event_id(p, "event_id", w) if isinstance(p, dict) else None
        self._seen(event_id)
        return AgentResponseComplete(event_id)

    def _client_tool_call(self, msg: dict[str, Any]) -> Event:
        w = "client_tool_call"
        p = _payload(msg, w)
        name = _req_id(p, "tool_name", w)
        call_id = _req_id(p, "tool_call_id", w)
        params = p.get("parameters")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise _Bad(f"{w}.parameters: expected object, got {_type_name(params)}")
        event_id = _opt_event_id(p, "event_id", w)
        expects = _opt_bool(p, "expects_response", w)
        self._seen(event_id)
        return ClientToolCall(name, call_id, params, event_id, expects is not False)

    def _agent_tool_request(self, msg: dict[str, Any]) -> Event:
        w = "agent_tool_request"
        p = _payload(msg, w)
        name = _req_id(p, "tool_name", w)
        call_id = _opt_id(p, "tool_call_id", w)
        event_id = _opt_event_id(p, "event_id", w)
        self._seen(event_id)
        return AgentToolRequest(
            name,
            call_id,
            _opt_str(p, "tool_type", w),
            event_id,
            _opt_bool(p, "expects_response", w),
        )

    def _agent_tool_response(self, msg: dict[str, Any]) -> Event:
        full = msg["type"] == "agent_tool_response_full_payload"
        w = "agent_tool_response_full_payload" if full else "agent_tool_response"
        p = _payload(msg, w)
        name = _req_id(p, "tool_name", w)
        event_id = _opt_event_id(p, "event_id", w)
        ev = AgentToolResponse(
            tool_name=name,
            tool_call_id=_opt_id(p, "tool_call_id", w),
            tool_type=_opt_str(p, "tool_type", w),
            is_error=bool(_opt_bool(p, "is_error", w)),
            event_id=event_id,
            is_called=_opt_bool(p, "is_called", w),
            is_blocked=bool(_opt_bool(p, "is_blocked", w)),
            full_payload=full,
            full_tool_result=_opt_str(p, "full_tool_result", w) if full else None,
            truncated=_opt_bool(p, "truncated", w) if full else None,
        )
        self._seen(event_id)
        if name == "end_call":
            self.saw_end_call = True  # the JS client ends the session on this
        return ev

    def _error(self, msg: dict[str, Any]) -> Event:
        p = msg.get("error_event")
        if not isinstance(p, dict):
            p = {}

        def s(key: str) -> str | None:  # logged and put in the call's result: printable
            v = p.get(key)
            return printable(v) if isinstance(v, str) else None

        code = p.get("code")
        ev = ErrorEvent(
            code=code if _is_int(code) and code in _CLOSE_CODES else None,
            error_type=s("error_type") or s("error_name"),
            message=s("message"),
            reason=s("reason"),
            wire_type=msg["type"],
        )
        self.last_error = ev
        return ev

    # ---- outgoing builders (each returns one JSON text frame)

    def initiation(
        self,
        dynamic_variables: Mapping[str, object] | None = None,
        overrides: Mapping[str, object] | None = None,
        user_id: str | None = None,
        custom_llm_extra_body: Mapping[str, object] | None = None,
        source_info: Mapping[str, str] | None = None,
    ) -> str:
        """``conversation_initiation_client_data``; send it first. ``overrides`` is the
        ``conversation_config_override`` tree. Raises ``TypeError``/``ValueError`` if a
        value is not JSON-serialisable."""
        msg: dict[str, object] = {"type": "conversation_initiation_client_data"}
        if overrides is not None:
            msg["conversation_config_override"] = dict(overrides)
        if custom_llm_extra_body is not None:
            msg["custom_llm_extra_body"] = dict(custom_llm_extra_body)
        if dynamic_variables is not None:
            msg["dynamic_variables"] = dict(dynamic_variables)
        if user_id is not None:
            msg["user_id"] = user_id
        if source_info is not None:
            msg["source_info"] = dict(source_info)
        return _dumps(msg)

    @staticmethod
    def audio_chunk(data: bytes) -> str:
        # Hot path: base64 never needs JSON escaping, so skip the encoder.
        return '{"user_audio_chunk":"' + base64.b64encode(data).decode("ascii") + '"}'

    @staticmethod
    def pong(event_id: int) -> str:
        return _dumps({"type": "pong", "event_id": event_id})

    @staticmethod
    def tool_result(
        tool_call_id: str, result: str, is_error: bool, error_type: str | None = None
    ) -> str:
        msg: dict[str, object] = {
            "type": "client_tool_result",
            "tool_call_id": tool_call_id,
            "result": result,
            "is_error": is_error,
        }
        if error_type is not None:
            msg["error_type"] = error_type
        return _dumps(msg)

    @staticmethod
    def contextual_update(text: str, context_id: str | None = None) -> str:
        msg: dict[str, object] = {"type": "contextual_update", "text": text}
        if context_id is not None:
            msg["context_id"] = context_id
        return _dumps(msg)

    @staticmethod
    def user_message(text: str) -> str:
        return _dumps({"type": "user_message", "text": text})

    @staticmethod
    def user_activity() -> str:
        return _dumps({"type": "user_activity"})

    @staticmethod
    def feedback(event_id: int, score: str | None) -> str:
        """``score``: "like", "dislike" or None."""
        return _dumps({"type": "feedback", "event_id": event_id, "score": score})

    @staticmethod
    def mcp_tool_approval_result(tool_call_id: str, is_approved: bool) -> str:
        return _dumps(
            {
                "type": "mcp_tool_approval_result",
                "tool_call_id": tool_call_id,
                "is_approved": is_approved,
            }
        )

    @staticmethod
    def multimodal_message(text: str, file_id: str) -> str:
        return _dumps(
            {
                "type": "multimodal_message",
                "text": {"type": "user_message", "text": text},
                "file": {"type": "file_input", "file_id": file_id},
            }
        )


_Decoder = Callable[[ClientProtocol, dict[str, Any]], Event]

_DECODERS: Final[Mapping[str, _Decoder]] = {
    "conversation_initiation_metadata": ClientProtocol._metadata,
    "audio": ClientProtocol._audio,
    "interruption": ClientProtocol._interruption,
    "ping": ClientProtocol._ping,
    "vad_score": ClientProtocol._vad,
    "user_transcript": ClientProtocol._transcript,
    "tentative_user_transcript": ClientProtocol._transcript,
    "agent_response": ClientProtocol._agent_response,
    "agent_response_correction": ClientProtocol._correction,
    "agent_response_complete": ClientProtocol._complete,
    "client_tool_call": ClientProtocol._client_tool_call,
    "agent_tool_request": ClientProtocol._agent_tool_request,
    "agent_tool_response": ClientProtocol._agent_tool_response,
    "agent_tool_response_full_payload": ClientProtocol._agent_tool_response,
    "error": ClientProtocol._error,
    "client_error": ClientProtocol._error,
}
