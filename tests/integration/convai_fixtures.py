"""Fixtures for tests of app_elevenlabs_convai against a real Asterisk and the simulator.

Import the fixtures you use into the test module (pytest finds them there):

    from convai_fixtures import convai_asterisk, simulator  # noqa: F401

    def test_something(simulator, convai_asterisk):
        sim = simulator(Scenario(end_after_turns=1))
        ast = convai_asterisk(agents={"sim": agent(sim)}, dialplan=CALL_100)
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
    """``make(scenario=None) -> Simulator``: a running simulator (own loop in a thread),
    stopped at teardown."""
    with ExitStack() as stack:

        def make(scenario: Scenario | None = None) -> Simulator:
            return stack.enter_context(Simulator(scenario).run_in_thread())

        yield make


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
