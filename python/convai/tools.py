"""Registry of client tools: handlers for the agent's ``client_tool_call`` messages.

A handler receives the :class:`~convai.protocol.ClientToolCall` and returns the result (a
string is sent as is, ``None`` becomes a generic success text, anything else is sent as
JSON) or raises to report an error to the agent. Handlers run on the event loop: async
handlers may await, sync handlers must return at once (they run inline so that telephony
actions such as a transfer are ordered with the audio).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from .protocol import ClientToolCall

# Returns the result, or an awaitable of it.
ToolHandler: TypeAlias = Callable[[ClientToolCall], object]

DEFAULT_TOOL_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: str
    is_error: bool


class ToolRegistry:
    """Maps client tool names (as configured on the agent) to handlers."""

    def __init__(self, timeout: float | None = DEFAULT_TOOL_TIMEOUT) -> None:
        self.timeout = timeout
        self._handlers: dict[str, ToolHandler] = {}

    def register(self, name: str, handler: ToolHandler) -> None:
        self._handlers[name] = handler

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
        handler = self._handlers.get(call.tool_name)
        if handler is None:
            # Same wording idea as the JS client: the agent must not wait for a tool we lack.
            return ToolOutcome(f"Client tool {call.tool_name!r} is not available", True)
        try:
            value = handler(call)
            if inspect.isawaitable(value):
                async with asyncio.timeout(self.timeout):
                    value = await value
        except TimeoutError:
            return ToolOutcome(f"Client tool {call.tool_name!r} timed out", True)
        except Exception as exc:
            return ToolOutcome(f"{type(exc).__name__}: {exc}", True)
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
