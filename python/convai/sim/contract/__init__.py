"""ElevenLabs' own contract for the agent WebSocket, checked on every message the simulator
sends and receives.

``agent.asyncapi.yaml`` here is ElevenLabs' AsyncAPI 2.6 file, unchanged (MIT, ``LICENSE``
beside it; from ``elevenlabs/packages``, ``packages/types/schemas/agent.asyncapi.yaml``, commit
2a9057e). ``agent.asyncapi.json`` is the same document as JSON, so that nothing needs a YAML
parser at run time; it records the sha256 of the YAML it was made from, and a unit test checks
that the two agree. After updating the YAML, with PyYAML at hand:
``python3 python/convai/sim/contract/__init__.py --regenerate``.

The channel's ``subscribe`` messages are what a client sends (client → server), ``publish``
what the server sends. :class:`Contract` validates a decoded message against the payload
schema its ``type`` selects (``user_audio_chunk`` is the one message without a type) with a
small JSON-schema validator of exactly the keywords the file uses, including OpenAPI's
``nullable``. A keyword it does not know makes loading fail, so no constraint is skipped
silently.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

__all__ = ["Contract", "load"]

HERE: Final = Path(__file__).resolve().parent
YAML_FILE: Final = HERE / "agent.asyncapi.yaml"
JSON_FILE: Final = HERE / "agent.asyncapi.json"

# Keywords that only document (no constraint) and the ones the validator enforces.
_ANNOTATIONS: Final = frozenset({"description", "default", "format", "title", "example"})
_ENFORCED: Final = frozenset(
    {
        "type", "nullable", "properties", "required", "additionalProperties", "items",
        "enum", "const", "minimum", "maximum", "minItems", "maxItems", "allOf", "oneOf",
        "anyOf", "$ref",
    }
)  # fmt: skip
_TYPES: Final[dict[str, Callable[[Any], bool]]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class Contract:
    """The message schemas of one AsyncAPI document (``load()`` gives ElevenLabs')."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self._schemas: dict[str, Any] = doc["components"]["schemas"]
        messages = doc["components"]["messages"]
        channel = doc["channels"]["AgentMessages"]
        self.client_types = self._by_type(channel["subscribe"], messages)
        self.server_types = self._by_type(channel["publish"], messages)
        for schema in self._schemas.values():
            _check_keywords(schema)

    def _by_type(self, side: dict[str, Any], messages: dict[str, Any]) -> dict[str | None, Any]:
        """``type`` value (None for the typeless audio chunk) -> payload schema."""
        out: dict[str | None, Any] = {}
        for ref in side["message"]["oneOf"]:
            payload = self._resolve(messages[ref["$ref"].rsplit("/", 1)[1]]["payload"])
            const = payload.get("properties", {}).get("type", {}).get("const")
            out[const] = payload
        return out

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/components/schemas/"):
                raise ValueError(f"unsupported $ref {ref}")
            schema = self._schemas[ref.rsplit("/", 1)[1]]
        return schema

    # --- checking messages ---
    def client_message(self, msg: Any) -> list[str]:
        """Why ``msg`` (decoded JSON) is not a valid client → server message; [] if it is."""
        return self._message(msg, self.client_types, "client")

    def server_message(self, msg: Any) -> list[str]:
        """Why ``msg`` is not a valid server → client message; [] if it is."""
        return self._message(msg, self.server_types, "server")

    def _message(self, msg: Any, types: dict[str | None, Any], side: str) -> list[str]:
        if not isinstance(msg, dict):
            return [f"a {side} message must be an object, not {type(msg).__name__}"]
        key = msg.get("type")
        if key is None and "user_audio_chunk" in msg:
            key = None
        elif not isinstance(key, str) or key not in types:
            return [f"type {key!r} is not a {side} message of the contract"]
        return list(self._errors(msg, types[key], key or "user_audio_chunk"))

    def _errors(self, value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
        schema = self._resolve(schema)
        if value is None and schema.get("nullable"):
            return
        want = schema.get("type")
        if want is not None and not _TYPES[want](value):
            yield f"{path}: {_show(value)} is not of type {want}"
            return
        if "const" in schema and value != schema["const"]:
            yield f"{path}: {_show(value)} is not {schema['const']!r}"
        if "enum" in schema and value not in schema["enum"]:
            yield f"{path}: {_show(value)} is not one of {schema['enum']}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                yield f"{path}: {value} < minimum {schema['minimum']}"
            if "maximum" in schema and value > schema["maximum"]:
                yield f"{path}: {value} > maximum {schema['maximum']}"
        if isinstance(value, dict):
            yield from self._object(value, schema, path)
        if isinstance(value, list):
            if "minItems" in schema and len(value) < schema["minItems"]:
                yield f"{path}: {len(value)} items < minItems {schema['minItems']}"
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                yield f"{path}: {len(value)} items > maxItems {schema['maxItems']}"
            if "items" in schema:
                for i, item in enumerate(value):
                    yield from self._errors(item, schema["items"], f"{path}[{i}]")
        for sub in schema.get("allOf", ()):
            yield from self._errors(value, sub, path)
        for keyword, need in (("oneOf", 1), ("anyOf", 0)):
            if keyword in schema:
                ok = sum(1 for sub in schema[keyword] if not any(self._errors(value, sub, path)))
                if (need and ok != need) or (not need and ok == 0):
                    yield f"{path}: {_show(value)} matches {ok} of the {keyword} schemas"

    def _object(self, value: dict[str, Any], schema: dict[str, Any], path: str) -> Iterator[str]:
        props: dict[str, Any] = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                yield f"{path}: required {name!r} is missing"
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                yield from self._errors(item, props[name], f"{path}.{name}")
            elif extra is False:
                yield f"{path}: {name!r} is not a property of the contract"
            elif isinstance(extra, dict):
                yield from self._errors(item, extra, f"{path}.{name}")


def _check_keywords(schema: Any) -> None:
    if isinstance(schema, list):
        for item in schema:
            _check_keywords(item)
        return
    if not isinstance(schema, dict):
        return
    unknown = set(schema) - _ANNOTATIONS - _ENFORCED
    if unknown:
        raise ValueError(f"schema keywords this validator does not enforce: {sorted(unknown)}")
    if "type" in schema and schema["type"] not in _TYPES:
        raise ValueError(f"unknown type {schema['type']!r}")
    for key, sub in schema.items():
        if key == "properties":
            for prop in sub.values():
                _check_keywords(prop)
        elif key in ("items", "additionalProperties", "allOf", "oneOf", "anyOf"):
            _check_keywords(sub)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


_loaded: Contract | None = None


def load() -> Contract:
    """ElevenLabs' contract (agent.asyncapi.json), parsed once per process."""
    global _loaded
    if _loaded is None:
        _loaded = Contract(json.loads(JSON_FILE.read_text(encoding="utf-8")))
    return _loaded


def yaml_sha256() -> str:
    return hashlib.sha256(YAML_FILE.read_bytes()).hexdigest()


def _regenerate() -> None:
    import yaml  # type: ignore[import-untyped]  # only here: PyYAML is not a dependency

    doc = yaml.safe_load(YAML_FILE.read_bytes())
    out = {
        "x-convai-generated-from": {
            "file": YAML_FILE.name,
            "sha256": yaml_sha256(),
            "by": "python3 python/convai/sim/contract/__init__.py --regenerate (needs PyYAML)",
        },
        "channels": doc["channels"],
        "components": doc["components"],
    }
    JSON_FILE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {JSON_FILE}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python3 python/convai/sim/contract/__init__.py --regenerate")
    _regenerate()
