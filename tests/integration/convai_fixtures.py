"""Fixtures and helpers for tests of app_elevenlabs_convai against a real Asterisk and the
simulator. conftest.py makes the fixtures (``simulator``, ``convai_asterisk``) available to
every test here; tests import the helpers they use:

    from convai_fixtures import agent

    def test_something(simulator, convai_asterisk):
        sim = simulator(Scenario(end_after_turns=1))
        ast = convai_asterisk(agents={"sim": agent(sim)})
        ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from asterisk import Asterisk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from convai.sim import Scenario, Simulator

TEST_KEY = "sk-test-0123456789abcdef0123456789abcdef"  # grep target of the redaction tests

# The agent on exten 100; the result is logged from the h extension, so it shows whether the
# app hung up (the default) or returned to the dialplan.
RESULT = (
    "Verbose(1,RESULT status=${ELEVENLABS_STATUS} reason=${ELEVENLABS_END_REASON}"
    " conv=${ELEVENLABS_CONVERSATION_ID})"
)
DIALPLAN_AGENT_100 = f"""
[test]
exten => 100,1,Answer()
 same => n,ElevenLabsConvAI(sim)
 same => n,Verbose(1,CONTINUED)
 same => n,Hangup()
exten => h,1,{RESULT}
"""


def agent(sim: Simulator, **keys: str) -> dict[str, str]:
    """An agent section pointing at the simulator; ``keys`` override or add settings."""
    section = {
        "elevenlabs_api_key": TEST_KEY,
        "elevenlabs_get_signed_url_endpoint": sim.signed_url_endpoint,
        "elevenlabs_agent_id": "agent_test",
        "elevenlabs_send_caller_number": "yes",
        "elevenlabs_audio_frames_buffer_ms": "100",
    }
    section.update(keys)
    return section


def elevenlabs_conf(
    agents: Mapping[str, Mapping[str, str]],
    python_dir: Path,
    debug: bool = False,
    general: str = "",
) -> str:
    lines = ["[general]", f"debug = {'yes' if debug else 'no'}", f"python_path = {python_dir}"]
    if general:
        lines.append(general)
    for name, keys in agents.items():
        lines += ["", f"[{name}]"] + [f"{k} = {v}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def simulator() -> Iterator[Callable[..., Simulator]]:
    """``make(scenario=None, **Simulator kwargs) -> Simulator``: a running simulator (own loop
    in a thread), stopped at teardown; e.g. ``ssl_context=`` for https/wss.

    Every message either way is checked against ElevenLabs' AsyncAPI contract
    (convai.sim.contract): a violation by the module or by the simulator fails the test."""
    made: list[Simulator] = []
    with ExitStack() as stack:

        def make(scenario: Scenario | None = None, **kwargs: Any) -> Simulator:
            sim = stack.enter_context(Simulator(scenario, **kwargs).run_in_thread())
            made.append(sim)
            return sim

        yield make
    violations = [
        f"{rec.conversation_id}: {v}"
        for sim in made
        for rec in sim.conversations
        for v in rec.contract_violations
    ]
    if violations:
        head = f"{len(violations)} message(s) off ElevenLabs' contract:"
        pytest.fail("\n".join([head, *violations[:20]]), pytrace=False)


@pytest.fixture
def convai_asterisk(
    asterisk_factory: Callable[..., Asterisk], convai_module: Path, convai_python_dir: Path
) -> Callable[..., Asterisk]:
    """``make(agents, dialplan, debug=False, general="", configs=None, **Asterisk kwargs)``:
    a started Asterisk with the freshly built module loaded and elevenlabs.conf written
    (mode 0640). ``agents`` maps section names to keys (see ``agent()``)."""

    def make(
        agents: Mapping[str, Mapping[str, str]],
        dialplan: str = DIALPLAN_AGENT_100,
        debug: bool = False,
        general: str = "",
        configs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Asterisk:
        conf: dict[str, Any] = {
            "extensions.conf": dialplan,
            "elevenlabs.conf": elevenlabs_conf(agents, convai_python_dir, debug, general),
        }
        conf.update(configs or {})
        ast = asterisk_factory(start=False, configs=conf, extra_modules=[convai_module], **kwargs)
        ast.write_configs()
        os.chmod(ast.etc / "elevenlabs.conf", 0o640)
        ast.start()
        return ast

    return make


# --- operator-surface helpers (tests/integration/test_config.py, test_operator.py) ----------------


def write_elevenlabs_conf(ast: Asterisk, text: str, mode: int = 0o640) -> None:
    """Replace elevenlabs.conf of a running instance (then reload it); mode 0640 by default.
    The mtime is bumped so ``module reload`` (which skips unchanged files) sees the change."""
    import time as _time

    path = ast.etc / "elevenlabs.conf"
    old = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(text)
    os.chmod(path, mode)
    new = max(_time.time(), old + 2.0)
    os.utime(path, (new, new))


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (which is returned)."""
    import time as _time

    deadline = _time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if _time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what or predicate}")
        _time.sleep(0.05)


def live_calls(ast: Asterisk) -> list[dict[str, str]]:
    """The rows of ``elevenlabs show calls``, as dicts keyed by the column headers."""
    out = ast.cli("elevenlabs show calls")
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Channel"))
    names = [
        "Channel", "Agent", "Conversation", "Duration", "Format", "Queued ms", "Event ID",
        "Intr", "RTT ms", "Under", "Bytes up", "Bytes down",
    ]  # fmt: skip
    rows = []
    for line in lines[header + 1 :]:
        if "active conversation(s)" in line or not line.strip():
            continue
        rows.append(dict(zip(names, line.split(), strict=True)))
    return rows


def wait_for_conversation(
    ast: Asterisk, agent: str | None = None, timeout: float = 15.0
) -> dict[str, str]:
    """The first row of ``elevenlabs show calls`` (for ``agent``) once it has a conversation id."""

    def ready() -> dict[str, str] | None:
        for row in live_calls(ast):
            if row["Conversation"].startswith("conv_") and agent in (None, row["Agent"]):
                return row
        return None

    return wait_until(ready, timeout, f"a conversation with agent {agent}")


# Any extension of letters, digits and _ (starting with a letter) calls the agent of that name;
# the h extension logs the result, whether the app hung up or the dialplan went on.
DIALPLAN_BY_AGENT = """
[test]
exten => _[a-z].,1,Set(AGENT=${EXTEN})
 same => n,Answer()
 same => n,ElevenLabsConvAI(${EXTEN})
 same => n,Hangup()
exten => h,1,Verbose(1,RESULT agent=${AGENT} chan=${CHANNEL} status=${ELEVENLABS_STATUS} \
reason=${ELEVENLABS_END_REASON} conv=${ELEVENLABS_CONVERSATION_ID})
"""


def call_agent(ast: Asterisk, agent: str, wait_s: int = 60) -> None:
    """A Local channel into DIALPLAN_BY_AGENT: one leg talks to ``agent``, the other waits."""
    ast.originate_local(agent, app="Wait", data=str(wait_s))


def wait_result(ast: Asterisk, agent: str, since: int = 0, timeout: float = 30.0) -> dict[str, str]:
    """The RESULT line of the next call to ``agent`` as a dict (agent, chan, status, ...)."""
    m = ast.wait_for_log(
        rf"RESULT agent={agent} chan=(\S+) status=(\S*) reason=(\S*) conv=([^\s\"]*)$",
        timeout=timeout,
        since=since,
    )
    return {
        "agent": agent,
        "chan": m.group(1),
        "status": m.group(2),
        "reason": m.group(3),
        "conv": m.group(4),
    }
