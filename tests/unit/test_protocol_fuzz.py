"""Property tests: nothing a server (or an attacker in its place) sends makes ``receive``
or the session's dispatch fail, and any id sequence reaches the ring unchanged.

"Fail" includes ``receive``'s last resort: a MalformedMessage marked ``internal`` is a bug
caught, not a frame handled, so every test rejects it. Every event that comes out must also
carry only values the rest of the module can take: event ids within 32 bits, identifiers
matching ``ID_PATTERN``. Each test counts the examples hypothesis ran and prints the count
(``pytest -s``): about 13,000 in all, 6,000 of them one exhaustive pass over every fixture
field and edge value; a few seconds."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convai import protocol as p
from convai.session import AgentConfig, CallInfo, Session, Started

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "convai-server-messages.jsonl"
MESSAGES: list[dict[str, Any]] = [
    json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line.strip()
]
TYPES = sorted({m["type"] for m in MESSAGES} | {"user_audio_chunk", "pong", ""})


def _keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


# The real field names make mutations hit the parser's branches, not just its first check.
KEYS = sorted(set().union(*(_keys(m) for m in MESSAGES)))

FAST = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(TYPES)
)
json_key = st.sampled_from(KEYS) | st.text(max_size=4)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_key, inner, max_size=3),
    max_leaves=6,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


# Seeded plain-random generators for the bulk: hypothesis' recursive strategies cost
# ~2.5 ms an example, these ~0.1 ms; the seed is the example, so failures still replay.
SEED = st.integers(0, 2**32 - 1)

_STRINGS = [
    "",
    "7",
    "-1",
    "AAE=",
    "@@@",
    "AA",
    "null",
    "ulaw_8000",
    "end_call",
    "é\u0000\ud7ff",
    "x" * 300,
    "conv\tid",
    "call_1\r\nEvent: Forged",
    "tool name",
    "x" * 129,
]
_NUMBERS = [
    0,
    1,
    -1,
    2**31,
    2**32 - 1,
    2**32,
    2**63,
    -(2**64),
    10**30,
    10**400,  # beyond float range: float() raises OverflowError
    0.5,
    -0.0,
    1e308,
    1e-300,
    3.0,
]


def rand_json(rnd: random.Random, depth: int = 0) -> Any:
    r = rnd.random()
    if depth < 3 and r < 0.2:
        return {rnd.choice(KEYS): rand_json(rnd, depth + 1) for _ in range(rnd.randint(0, 3))}
    if depth < 3 and r < 0.3:
        return [rand_json(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    pick = rnd.randrange(7)
    if pick == 0:
        return None
    if pick == 1:
        return rnd.random() < 0.5
    if pick == 2:
        return rnd.choice(_NUMBERS)
    if pick == 3:
        return rnd.randint(-5, 50)
    if pick == 4:
        return rnd.choice(TYPES)
    if pick == 5:
        return "".join(chr(rnd.randint(0, 0x2FFF)) for _ in range(rnd.randint(0, 8)))
    return rnd.choice(_STRINGS)


def mutate(rnd: random.Random, msg: Any) -> Any:
    msg = copy.deepcopy(msg)
    for _ in range(rnd.randint(1, 3)):
        path = rnd.choice(_paths(msg))
        if not path:
            msg = rand_json(rnd) if rnd.random() < 0.3 else msg
            continue
        parent = msg
        for key in path[:-1]:
            parent = parent[key]
        action = rnd.randrange(4)
        if action == 0 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == 1:
            parent[path[-1]] = [parent[path[-1]]]
        elif action == 2:
            parent[path[-1]] = json.dumps(parent[path[-1]])
        else:
            parent[path[-1]] = rand_json(rnd)
    return msg


def mutated_message(seed: int) -> str:
    rnd = random.Random(seed)
    return json.dumps(mutate(rnd, rnd.choice(MESSAGES)))


def run_counted(
    prop: Callable[[Any], None], strategy: st.SearchStrategy[Any], examples: int = 800
) -> int:
    count = 0

    @settings(FAST, max_examples=examples)
    @given(strategy)
    def wrapped(value: Any) -> None:
        nonlocal count
        count += 1
        prop(value)

    wrapped()
    return count


_ID_FIELDS = ("conversation_id", "tool_name", "tool_call_id")


def check_event(ev: p.Event) -> None:
    """``ev`` is a handled frame whose values are safe to pass on."""
    assert isinstance(ev, p.Event)
    if isinstance(ev, p.MalformedMessage):
        assert not ev.internal, ev.error
        assert not any(c in ev.excerpt for c in "\r\n\t\x00"), ev.excerpt
        return
    event_id = getattr(ev, "event_id", None)
    assert event_id is None or 0 <= event_id <= p.EVENT_ID_MAX, ev
    for name in _ID_FIELDS:
        value = getattr(ev, name, None)
        if value:  # optional ids are "" when absent
            assert p.ID_PATTERN.fullmatch(value), ev


def _never_raises(data: str | bytes) -> None:
    proto = p.ClientProtocol()
    events = proto.receive(data)
    assert events
    for ev in events:
        check_event(ev)
    for text in proto.data_to_send():
        json.loads(text)


def test_random_text_never_raises() -> None:
    n = run_counted(_never_raises, st.text(max_size=300))
    print(f"random text: {n} examples")
    assert n >= 500


def test_random_bytes_never_raise() -> None:
    n = run_counted(_never_raises, st.binary(max_size=300))
    print(f"random bytes: {n} examples")
    assert n >= 500


def test_random_json_never_raises() -> None:
    n = run_counted(lambda v: _never_raises(json.dumps(v)), json_value, examples=500)
    print(f"random JSON (hypothesis-built): {n} examples")
    assert n >= 200


def test_seeded_random_json_never_raises() -> None:
    n = run_counted(lambda seed: _never_raises(json.dumps(rand_json(random.Random(seed)))), SEED)
    print(f"random JSON (seeded): {n} examples")
    assert n >= 500


def test_random_typed_objects_never_raise() -> None:
    def typed(seed: int) -> str:
        rnd = random.Random(seed)
        msg = {rnd.choice(KEYS): rand_json(rnd) for _ in range(rnd.randint(0, 3))}
        msg["type"] = rnd.choice(TYPES)
        return json.dumps(msg)

    n = run_counted(lambda seed: _never_raises(typed(seed)), SEED)
    print(f"random objects with a known type: {n} examples")
    assert n >= 500


def test_mutated_fixtures_never_raise() -> None:
    n = run_counted(lambda seed: _never_raises(mutated_message(seed)), SEED)
    print(f"mutated fixture messages: {n} examples")
    assert n >= 500


_EDGE_VALUES: list[Any] = [None, True, [], {}, *_NUMBERS, *_STRINGS]


def test_every_field_with_every_edge_value() -> None:
    """Exhaustive, not random: each field of each fixture message, replaced in turn by each
    edge value (huge and negative integers, floats, control characters, wrong types)."""
    count = 0
    for msg in MESSAGES:
        for path in _paths(msg)[1:]:
            for value in _EDGE_VALUES:
                bad = copy.deepcopy(msg)
                parent = bad
                for key in path[:-1]:
                    parent = parent[key]
                parent[path[-1]] = value
                _never_raises(json.dumps(bad))
                count += 1
    print(f"fixture fields x edge values: {count} messages")
    assert count >= 5000


def test_truncated_fixtures_never_raise() -> None:
    lines = [json.dumps(m) for m in MESSAGES]
    n = run_counted(
        lambda lc: _never_raises(lc[0][: lc[1] % (len(lc[0]) + 1)]),
        st.tuples(st.sampled_from(lines), st.integers(0, 10_000)),
    )
    print(f"truncated fixture messages: {n} examples")
    assert n >= 200


def _interruption_rule(ops: list[tuple[str, int]]) -> None:
    proto = p.ClientProtocol()
    highest = 0
    for kind, event_id in ops:
        if kind == "i":
            proto.receive(
                json.dumps({"type": "interruption", "interruption_event": {"event_id": event_id}})
            )
            highest = max(highest, event_id)
            continue
        payload = base64.b64encode(b"\x01\x02").decode()
        (ev,) = proto.receive(
            json.dumps(
                {"type": "audio", "audio_event": {"audio_base_64": payload, "event_id": event_id}}
            )
        )
        # Every chunk comes out with its id, stale or not: the ring applies the rule
        # (test_ring.py's property test), so it must see every id unchanged.
        assert ev == p.Audio(event_id, b"\x01\x02", None, False)
    assert proto.last_interrupt_id == highest


def _interruption_rule_any_int(ops: list[tuple[str, int]]) -> None:
    """Ids outside 32 bits are malformed and change nothing; the others obey the rule."""
    in_range = [(k, i) for k, i in ops if 0 <= i <= p.EVENT_ID_MAX]
    proto = p.ClientProtocol()
    for kind, event_id in ops:
        if 0 <= event_id <= p.EVENT_ID_MAX:
            continue
        msg = (
            {"type": "interruption", "interruption_event": {"event_id": event_id}}
            if kind == "i"
            else {"type": "audio", "audio_event": {"audio_base_64": "AA==", "event_id": event_id}}
        )
        (ev,) = proto.receive(json.dumps(msg))
        assert isinstance(ev, p.MalformedMessage) and not ev.internal
        assert "outside 0..4294967295" in ev.error
    assert proto.last_interrupt_id == 0 and proto.last_event_id == 0
    _interruption_rule(in_range)


def test_interruption_rule_property() -> None:
    op = st.tuples(st.sampled_from(["a", "a", "i"]), st.integers(0, 30))
    n = run_counted(_interruption_rule, st.lists(op, max_size=30), examples=600)
    print(f"interruption sequences: {n} examples")
    assert n >= 500


def test_event_ids_of_any_size_property() -> None:
    edge = st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, -1, -(2**63)])
    wide = st.integers(-(2**70), 2**70)
    op = st.tuples(st.sampled_from(["a", "a", "i"]), edge | wide | st.integers(0, 30))
    n = run_counted(_interruption_rule_any_int, st.lists(op, max_size=20), examples=300)
    print(f"interruption sequences with ids of any size: {n} examples")
    assert n >= 200


def test_hostile_identifiers_are_rejected() -> None:
    """Ids with anything outside the pattern are malformed; valid ones pass unchanged."""

    def prop(args: tuple[str, str]) -> None:
        field, value = args
        ids = {"conversation_id": "conv_1", "tool_name": "lookup", "tool_call_id": "call_1"}
        ids[field] = value
        msgs = [
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": ids["conversation_id"]
                },
            },
            {
                "type": "client_tool_call",
                "client_tool_call": {
                    "tool_name": ids["tool_name"],
                    "tool_call_id": ids["tool_call_id"],
                    "parameters": {},
                },
            },
        ]
        valid = p.ID_PATTERN.fullmatch(value) is not None
        for msg in msgs:
            (ev,) = p.ClientProtocol().receive(json.dumps(msg))
            check_event(ev)
            carried = any(getattr(ev, f, None) == value for f in _ID_FIELDS if f == field)
            if valid:
                assert not isinstance(ev, p.MalformedMessage), ev
            elif field in json.dumps(msg):
                assert not carried, ev

    hostile = st.text(max_size=140) | st.sampled_from(["a\tb", "a\r\nEvent: X", "", " ", "a" * 129])
    fields = st.sampled_from(_ID_FIELDS)
    n = run_counted(prop, st.tuples(fields, hostile), examples=500)
    print(f"hostile identifiers: {n} examples")
    assert n >= 300


class _Sink:
    def __init__(self) -> None:
        self.count = 0

    def on_started(self, started: Started) -> None:
        self.count += 1

    def on_audio(self, event_id: int, audio: bytes) -> None:
        self.count += 1

    def on_interruption(self, event_id: int) -> None:
        self.count += 1

    def on_event(self, event: p.Event) -> None:
        self.count += 1
        check_event(event)


def test_session_dispatch_never_raises() -> None:
    """The session's handling of any frame (mutated fixtures, random JSON) never raises and
    never logs an internal error (a logged exception would mean a bug in the dispatch)."""
    log = logging.getLogger("test.fuzz.session")
    log.propagate = False
    errors: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info:
                errors.append(record)

    log.addHandler(Catch())
    log.setLevel(logging.DEBUG)
    loop = asyncio.new_event_loop()
    config = AgentConfig("fuzz", "k" * 32, "http://127.0.0.1:1/x", "agent_x")

    def feed(frames: list[str]) -> None:
        async def go() -> None:
            session = Session(config, CallInfo("PJSIP/fuzz-1"), _Sink(), log=log)
            for frame in frames:
                session._process(frame)  # the dispatch under test
            session.feed_caller_audio(b"\xff" * 4000)
            for task in list(session._tasks):  # let tool calls finish
                await task

        loop.run_until_complete(go())

    def frames(seed: int) -> list[str]:
        rnd = random.Random(seed)
        out = []
        for _ in range(rnd.randint(1, 6)):
            kind = rnd.randrange(3)
            if kind == 0:
                out.append(json.dumps(rnd.choice(MESSAGES)))
            elif kind == 1:
                out.append(json.dumps(mutate(rnd, rnd.choice(MESSAGES))))
            else:
                out.append(json.dumps(rand_json(rnd)))
        return out

    try:
        n = run_counted(lambda seed: feed(frames(seed)), SEED)
    finally:
        loop.close()
    print(f"session dispatch: {n} examples")
    assert n >= 500
    assert not errors, errors[0].getMessage()
