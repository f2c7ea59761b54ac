"""Client tools: the registry, the telephony tools the module carries out, and their checks.

An agent's ``client_tool_call`` is answered by a handler registered under the tool's name.
Which tools an agent offers, and what each does, comes from its section in
``elevenlabs.conf`` (``tool = name: action, ...`` and ``transfer_target = ...``; parsed and
validated by ``c/config.c``, handed to us as JSON). A tool that is not configured is answered
``is_error`` at once.

Everything in a tool call comes from an LLM and is hostile input. The rules here:

* a transfer names a *target*, which is looked up in the agent's allow-list; the dialplan
  location or dial string behind the name never leaves C, and nothing the LLM sent is ever
  put into one (an unknown name gets an error that lists the valid names);
* DTMF digits are ``0-9 * #`` plus ``w`` (0.5 s) and ``W`` (1 s) pauses, at most 64;
* a variable name must be on the tool's allow-list and is set as ``ELEVENLABS_VAR_<name>``;
  values lose control characters and are cut to 256 characters.

The module carries out transfer, hangup, DTMF and set-variable through a :class:`CallPort`
(the host, which talks to the channel thread); ``ami`` tools are answered by an external
AMI client with the ``ElevenLabsConvAIToolResult`` action, or time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias

from .protocol import AgentToolResponse, ClientToolCall

# Returns the result, or an awaitable of it.
ToolHandler: TypeAlias = Callable[[ClientToolCall], object]

DEFAULT_TOOL_TIMEOUT: Final = 30.0
ACTIONS: Final = ("transfer", "hangup", "dtmf", "set_variable", "ami")
TRANSFER_MODES: Final = ("blind", "warm")
DTMF_OUT: Final = frozenset("0123456789*#wW")
DTMF_MAX: Final = 64
VAR_PREFIX: Final = "ELEVENLABS_VAR_"
VAR_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
VALUE_MAX: Final = 256
# The agent's audio arrives faster than real time; once none came for this long, all of
# its words are with us (the channel thread still plays them out before it acts).
SETTLE_S: Final = 0.5
# After a result the agent waits for, its spoken reply may take a moment to start.
REPLY_GRACE_S: Final = 2.5
SPEECH_WAIT_MAX_S: Final = 20.0
C_REPLY_TIMEOUT_S: Final = 5.0  # the channel thread answers a transfer request at once
# System tools whose agent_tool_response is worth telling the operator about.
SYSTEM_TOOLS: Final = frozenset(
    {"end_call", "transfer_to_number", "voicemail_detection", "play_keypad_touch_tone"}
)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: str
    is_error: bool
    error_type: str | None = None
    # Runs once the result has been sent (a transfer leaves after the agent's last words).
    after: Callable[[], Awaitable[None]] | None = field(default=None, compare=False)


class ToolError(Exception):
    """A handler's refusal: its text is the ``is_error`` result the agent reads."""

    def __init__(self, text: str, error_type: str | None = None) -> None:
        super().__init__(text)
        self.error_type = error_type


class ToolRegistry:
    """Maps client tool names (as configured on the agent) to handlers."""

    def __init__(self, timeout: float | None = DEFAULT_TOOL_TIMEOUT) -> None:
        self.timeout = timeout
        self._handlers: dict[str, tuple[ToolHandler, float | None]] = {}

    def register(self, name: str, handler: ToolHandler, timeout: float | None = None) -> None:
        """``timeout`` bounds an async handler (default: the registry's)."""
        self._handlers[name] = (handler, self.timeout if timeout is None else timeout)

    def tool(self, name: str) -> Callable[[ToolHandler], ToolHandler]:
        """Decorator form of :meth:`register`."""

        def deco(fn: ToolHandler) -> ToolHandler:
            self.register(name, fn)
            return fn

        return deco

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def names(self) -> list[str]:
        return sorted(self._handlers)

    async def call(self, call: ClientToolCall) -> ToolOutcome:
        """Run the handler for ``call``. Never raises except ``CancelledError``."""
        entry = self._handlers.get(call.tool_name)
        if entry is None:
            # Same wording idea as the JS client: the agent must not wait for a tool we lack.
            return ToolOutcome(f"Client tool {call.tool_name!r} is not available", True)
        handler, timeout = entry
        try:
            value = handler(call)
            if inspect.isawaitable(value):
                async with asyncio.timeout(timeout):
                    value = await value
        except TimeoutError:
            return ToolOutcome(f"Client tool {call.tool_name!r} timed out", True, "client_timeout")
        except ToolError as exc:
            return ToolOutcome(str(exc), True, exc.error_type)
        except Exception as exc:
            return ToolOutcome(f"{type(exc).__name__}: {exc}", True)
        if isinstance(value, ToolOutcome):
            return value
        return ToolOutcome(_as_text(call.tool_name, value), False)


def _as_text(name: str, value: object) -> str:
    if value is None:
        return f"Client tool: {name} called successfully."
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


# --- configuration (from C) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One ``tool = name: action, ...`` line of an agent section."""

    name: str
    action: str  # one of ACTIONS
    timeout: float = 20.0  # ami: how long to wait for ElevenLabsConvAIToolResult
    param: str = ""  # the parameter that holds the target name / the digits
    variables: tuple[str, ...] = ()  # set_variable: the names the agent may set


@dataclass(frozen=True, slots=True)
class TransferTarget:
    """One ``transfer_target`` of an agent section; where it leads stays in C."""

    name: str
    mode: str  # "blind" | "warm"
    timeout: int = 25  # warm: seconds the target may ring


DEFAULT_PARAM: Final = {"transfer": "destination", "dtmf": "digits"}


def config_from_json(data: Mapping[str, Any]) -> tuple[list[ToolSpec], list[TransferTarget]]:
    """The ``tools`` and ``transfer_targets`` C put into the session's extra JSON.

    C has validated them (file, line, section, key); entries that still do not make sense
    are skipped rather than trusted."""
    specs: list[ToolSpec] = []
    for raw in data.get("tools") or ():
        if not isinstance(raw, dict) or raw.get("action") not in ACTIONS:
            continue
        name, action = str(raw.get("name", "")), str(raw["action"])
        if not name:
            continue
        variables = tuple(str(v) for v in raw.get("variables") or () if VAR_NAME.fullmatch(str(v)))
        specs.append(
            ToolSpec(
                name=name,
                action=action,
                timeout=float(raw.get("timeout") or 20.0),
                param=str(raw.get("param") or DEFAULT_PARAM.get(action, "")),
                variables=variables,
            )
        )
    targets: list[TransferTarget] = []
    for raw in data.get("transfer_targets") or ():
        if isinstance(raw, dict) and raw.get("mode") in TRANSFER_MODES and raw.get("name"):
            targets.append(
                TransferTarget(str(raw["name"]), str(raw["mode"]), int(raw.get("timeout") or 25))
            )
    return specs, targets


# --- checks on what the LLM sent (pure) ---------------------------------------------------------


def clean_text(value: object, limit: int = VALUE_MAX) -> str:
    """``value`` as text without control or format characters (CR, LF, NUL, bidi...),
    cut to ``limit`` characters: safe for a channel variable, a log line or an AMI field."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    out = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)
    return out.strip()[:limit]


def check_dtmf(value: object) -> str:
    """The digits to send, or ToolError. ``w`` pauses 0.5 s and ``W`` 1 s, as in
    ElevenLabs' play_keypad_touch_tone and Asterisk's SendDTMF."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)  # an LLM sometimes sends {"digits": 1234}
    if not isinstance(value, str) or not value:
        raise ToolError("digits must be a non-empty string of 0-9, *, #, w or W")
    digits = value.replace(" ", "").replace("-", "")
    bad = sorted({c for c in digits if c not in DTMF_OUT})
    if bad:
        shown = "".join(clean_text(c, 1) or "?" for c in bad[:8])
        raise ToolError(f"invalid DTMF characters {shown!r}: only 0-9, *, #, w and W are allowed")
    if len(digits) > DTMF_MAX:
        raise ToolError(f"at most {DTMF_MAX} DTMF characters at once")
    if not digits.strip("wW"):
        raise ToolError("no digits to send (only pauses)")
    return digits


def find_target(value: object, targets: Iterable[TransferTarget]) -> TransferTarget:
    """The allow-listed target the agent named (case-insensitive), or ToolError listing the
    valid names so the agent can recover."""
    targets = list(targets)
    names = ", ".join(t.name for t in targets) or "(none configured)"
    if isinstance(value, str):
        wanted = value.strip().lower()
        for target in targets:
            if target.name.lower() == wanted:
                return target
        shown = clean_text(value, 40)
        raise ToolError(f"unknown transfer destination {shown!r}; valid destinations: {names}")
    raise ToolError(f"the destination must be one of: {names}")


def check_variables(params: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, str]:
    """``{ELEVENLABS_VAR_name: value}`` for every parameter, or ToolError when any name is
    not allowed (then nothing is set)."""
    allowed_by_lower = {a.lower(): a for a in allowed}
    out: dict[str, str] = {}
    bad: list[str] = []
    for key, value in params.items():
        name = allowed_by_lower.get(str(key).lower())
        if name is None:
            bad.append(clean_text(key, 40))
            continue
        out[VAR_PREFIX + name] = clean_text("" if value is None else value)
    if bad or not out:
        valid = ", ".join(allowed_by_lower.values()) or "(none)"
        what = f"variables {', '.join(repr(b) for b in bad)} are" if bad else "no variable is"
        raise ToolError(f"{what} not allowed; allowed: {valid}")
    return out


# --- the tools the module carries out --------------------------------------------------------


class CallPort(Protocol):
    """What the host does for the tools; every call returns at once."""

    def transfer(self, tool_call_id: str, target: TransferTarget) -> None:
        """Ask the channel thread to start a transfer; it answers with on_transfer_state."""

    def send_dtmf(self, digits: str) -> None: ...

    def set_variable(self, name: str, value: str) -> None: ...

    def end_conversation(self, reason: str, detail: str) -> None:
        """Close the conversation (1000); the channel thread plays out what is queued, then
        acts on ``reason``: ``transfer`` or ``agent_ended_call``."""

    def tell_agent(self, text: str) -> None:
        """A contextual_update for the agent."""


class Telephony:
    """The configured tools of one call, and the state they share (one transfer at a time)."""

    def __init__(
        self,
        port: CallPort,
        specs: Iterable[ToolSpec],
        targets: Iterable[TransferTarget],
        log: logging.Logger,
        tag: str,
    ) -> None:
        self.port = port
        self.specs = {s.name: s for s in specs}
        self.targets = list(targets)
        self.log = log
        self.tag = tag
        self.registry = ToolRegistry()
        self._last_audio = time.monotonic()
        self._audio_seq = 0
        self._xfer_id: str | None = None  # the tool call of the transfer under way
        self._xfer_states: asyncio.Queue[tuple[str, str]] | None = None
        self._ami_waits: dict[str, asyncio.Future[tuple[str, bool]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_system_transfer = False
        self.leaving = False  # a transfer or hangup tool is ending the conversation
        for spec in self.specs.values():
            self.registry.register(spec.name, self._handler(spec), self._timeout(spec))

    def _timeout(self, spec: ToolSpec) -> float | None:
        # Transfers bound their own waits; an ami tool's wait is its configured timeout
        # (plus a moment, so our own timeout message wins).
        return spec.timeout + 1.0 if spec.action == "ami" else None

    def _handler(self, spec: ToolSpec) -> ToolHandler:
        fn = {
            "transfer": self._transfer,
            "hangup": self._hangup,
            "dtmf": self._dtmf,
            "set_variable": self._set_variable,
            "ami": self._ami,
        }[spec.action]
        return lambda call: fn(spec, call)

    def handler_kind(self, name: str) -> str:
        """For the ToolCall AMI event: module, ami or none."""
        spec = self.specs.get(name)
        return "none" if spec is None else "ami" if spec.action == "ami" else "module"

    # --- from the host ---
    def on_agent_audio(self) -> None:
        self._last_audio = time.monotonic()
        self._audio_seq += 1

    def on_transfer_state(self, tool_call_id: str, state: str, detail: str) -> None:
        """The channel thread's word on a transfer: accepted (blind), dialing, ringing,
        answered or failed."""
        if tool_call_id != self._xfer_id or self._xfer_states is None:
            self.log.debug("%s: transfer state %s for an old transfer ignored", self.tag, state)
            return
        self._xfer_states.put_nowait((state, detail))

    def on_tool_result(self, tool_call_id: str, result: str, is_error: bool) -> bool:
        """An ElevenLabsConvAIToolResult; False when no ami tool call waits for it."""
        fut = self._ami_waits.get(tool_call_id)
        if fut is None or fut.done():
            return False
        fut.set_result((result, is_error))
        return True

    def on_system_tool(self, ev: AgentToolResponse) -> None:
        if ev.tool_name not in SYSTEM_TOOLS:
            return
        self.log.debug(
            "%s: system tool %s ran on the agent's side (is_error=%s)",
            self.tag,
            ev.tool_name,
            ev.is_error,
        )
        if ev.tool_name == "transfer_to_number" and not self._warned_system_transfer:
            self._warned_system_transfer = True
            names = [s.name for s in self.specs.values() if s.action == "transfer"]
            self.log.warning(
                "%s: the agent used the system tool transfer_to_number, which does nothing on "
                "a WebSocket call; give the agent the client tool configured for transfers "
                "(%s) instead",
                self.tag,
                ", ".join(names) or "none configured: add tool = <name>: transfer",
            )

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for fut in self._ami_waits.values():
            if not fut.done():
                fut.cancel()

    # --- waiting for the agent's words ---
    async def agent_finished(self, grace: float) -> None:
        """Until the agent has sent all it is going to say: no audio for SETTLE_S, and, with
        ``grace``, audio seen after now or ``grace`` seconds passed (its reply to a result)."""
        start, seq = time.monotonic(), self._audio_seq
        while True:
            now = time.monotonic()
            quiet = now - self._last_audio >= SETTLE_S
            replied = self._audio_seq != seq or now - start >= grace
            if (quiet and replied) or now - start >= SPEECH_WAIT_MAX_S:
                return
            await asyncio.sleep(0.05)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("%s: client tool follow-up failed", self.tag)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the handlers ---
    async def _transfer(self, spec: ToolSpec, call: ClientToolCall) -> ToolOutcome:
        target = find_target(call.parameters.get(spec.param), self.targets)
        if self._xfer_id is not None or self.leaving:
            raise ToolError("a transfer is already under way")
        self._xfer_id, self._xfer_states = call.tool_call_id, asyncio.Queue()
        self.log.info("%s: %s transfer to %s requested", self.tag, target.mode, target.name)
        self.port.transfer(call.tool_call_id, target)
        try:
            async with asyncio.timeout(C_REPLY_TIMEOUT_S):
                state, detail = await self._xfer_states.get()
        except TimeoutError:
            self._xfer_done()
            raise ToolError(f"transfer to {target.name} failed: no answer from the PBX") from None
        if state == "failed":
            self._xfer_done()
            raise ToolError(f"transfer to {target.name} failed: {detail}")
        if target.mode == "blind":
            self.leaving = True
            return ToolOutcome(
                f"Transferring the caller to {target.name} now.",
                False,
                after=lambda: self._leave("transfer", target.name, call.expects_response),
            )
        self._spawn(self._watch_warm(target))
        return ToolOutcome(
            f"ringing: calling {target.name} now (up to {target.timeout} s); the caller stays "
            "with you until they answer",
            False,
        )

    async def _watch_warm(self, target: TransferTarget) -> None:
        assert self._xfer_states is not None
        while True:
            state, detail = await self._xfer_states.get()
            if state == "ringing":
                self.log.debug("%s: transfer target %s is ringing", self.tag, target.name)
            elif state == "answered":
                self.leaving = True
                self.port.end_conversation("transfer", target.name)
                return
            elif state == "failed":
                self._xfer_done()
                self.port.tell_agent(
                    f"The transfer to {target.name} did not go through: {detail}. "
                    "The caller is still on the line with you."
                )
                return

    def _xfer_done(self) -> None:
        self._xfer_id, self._xfer_states = None, None

    async def _leave(self, reason: str, detail: str, expects_response: bool) -> None:
        await self.agent_finished(REPLY_GRACE_S if expects_response else 0.0)
        self.port.end_conversation(reason, detail)

    async def _hangup(self, spec: ToolSpec, call: ClientToolCall) -> ToolOutcome:
        if self.leaving:
            raise ToolError("the call is already ending")
        self.leaving = True
        return ToolOutcome(
            "The call ends after your last words.",
            False,
            after=lambda: self._leave("agent_ended_call", "hangup tool", call.expects_response),
        )

    async def _dtmf(self, spec: ToolSpec, call: ClientToolCall) -> str:
        digits = check_dtmf(call.parameters.get(spec.param))
        self.port.send_dtmf(digits)
        return f"Sending DTMF {digits}."

    async def _set_variable(self, spec: ToolSpec, call: ClientToolCall) -> str:
        values = check_variables(call.parameters, spec.variables)
        for name, value in values.items():
            self.port.set_variable(name, value)
        return "Saved " + ", ".join(n.removeprefix(VAR_PREFIX) for n in values) + "."

    async def _ami(self, spec: ToolSpec, call: ClientToolCall) -> ToolOutcome:
        fut: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self._ami_waits[call.tool_call_id] = fut
        self.log.debug(
            "%s: tool %s waits up to %g s for ElevenLabsConvAIToolResult",
            self.tag,
            spec.name,
            spec.timeout,
        )
        try:
            async with asyncio.timeout(spec.timeout):
                result, is_error = await fut
        except TimeoutError:
            return ToolOutcome(
                f"no answer from the {spec.name} handler within {spec.timeout:g} s",
                True,
                "client_timeout",
            )
        finally:
            with contextlib.suppress(KeyError):
                del self._ami_waits[call.tool_call_id]
        return ToolOutcome(result, is_error)
