"""Property tests: nothing a server (or an attacker in its place) sends makes ``receive``
or the session's dispatch raise, and the interruption rule holds for any id sequence.

Each test counts the examples hypothesis ran and prints the count (``pytest -s``)."""

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
]
_NUMBERS = [0, 1, -1, 2**31, 2**63, -(2**64), 10**30, 0.5, -0.0, 1e308, 1e-300, 3.0]


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
    prop: Callable[[Any], None], strategy: st.SearchStrategy[Any], examples: int = 2000
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


def _never_raises(data: str | bytes) -> None:
    proto = p.ClientProtocol()
    events = proto.receive(data)
    assert events and all(isinstance(e, p.Event) for e in events)
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
        if event_id < highest:
            assert ev == p.StaleAudio(event_id, 2, highest)
        else:
            assert isinstance(ev, p.Audio) and ev.event_id == event_id


def test_interruption_rule_property() -> None:
    op = st.tuples(st.sampled_from(["a", "a", "i"]), st.integers(0, 30))
    n = run_counted(_interruption_rule, st.lists(op, max_size=30), examples=1000)
    print(f"interruption sequences: {n} examples")
    assert n >= 500


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
