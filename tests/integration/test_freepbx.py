"""docs/FREEPBX.md's dialplan, verbatim, in a real Asterisk laid out as FreePBX 17 lays it out:
extensions.conf includes extensions_custom.conf, and from-internal includes
from-internal-custom. The block is the one after `<!-- tested: freepbx-dialplan -->`, taken by
testbed/install-md.sh (as INSTALL.md's are), so the page and the test cannot drift."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from asterisk import Asterisk
from convai_fixtures import agent, wait_until

from convai.sim import Scenario, Simulator

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "FREEPBX.md"

# What FreePBX generates around the admin's file, cut to what the snippet relies on: the include
# of extensions_custom.conf, from-internal including from-internal-custom, and extension 100
# (the snippet's fallback) as a stand-in for a phone.
FREEPBX_EXTENSIONS = """
#include extensions_custom.conf

[from-internal]
include => from-internal-custom
exten => 100,1,Verbose(1,FALLBACK reached extension 100)
 same => n,Hangup()
"""


def doc_block(name: str) -> str:
    return subprocess.run(
        ["bash", str(ROOT / "testbed" / "install-md.sh"), name, str(DOC)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def custom_destination_target() -> tuple[str, str]:
    """The custom destination's Target as the page gives it: (context, extension)."""
    m = re.search(r"^- Target: `([\w-]+),(\w+),1`$", DOC.read_text(), re.M)
    assert m, "docs/FREEPBX.md names no custom destination Target"
    return m.group(1), m.group(2)


def freepbx_asterisk(make: Callable[..., Asterisk], agents: dict[str, dict[str, str]]) -> Asterisk:
    return make(
        agents=agents,
        dialplan=FREEPBX_EXTENSIONS,
        configs={"extensions_custom.conf": doc_block("freepbx-dialplan")},
    )


def conversation_end(ast: Asterisk, agent_name: str) -> str:
    m = ast.wait_for_log(
        rf"conversation \S+ with agent \[{agent_name}\] (ended: \w+|failed: \w+)", timeout=30
    )
    return m.group(1)


def test_dialling_7000_reaches_the_agent_and_completes_without_the_fallback(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator(Scenario(greeting="Hello.", end_after_turns=None, close_after_s=2.0))
    context, exten = custom_destination_target()
    ast = freepbx_asterisk(convai_asterisk, {exten: agent(sim)})
    assert "ElevenLabsConvAI(${EXTEN},c)" in ast.cli(f"dialplan show {exten}@{context}")

    ast.originate_local("7000", context="from-internal", app="Wait", data="20")
    assert conversation_end(ast, exten) == "ended: COMPLETED"
    wait_until(lambda: sim.conversations, 5, "the simulator's conversation")
    ast.wait_no_channels(timeout=15)
    assert "FALLBACK" not in ast.log_text()


def test_the_custom_destination_falls_back_to_extension_100_when_the_agent_fails(
    convai_asterisk: Callable[..., Asterisk],
) -> None:
    context, exten = custom_destination_target()
    # Nothing listens on port 9 (discard) of the loopback: the signed-URL request is refused.
    broken = {
        "elevenlabs_api_key": "sk-test-0123456789abcdef0123456789abcdef",
        "elevenlabs_get_signed_url_endpoint": "http://127.0.0.1:9/v1/convai/conversation/get-signed-url",
        "elevenlabs_agent_id": "agent_test",
    }
    ast = freepbx_asterisk(convai_asterisk, {exten: broken})

    # As FreePBX's Goto(app-elevenlabs,sales,1) from an inbound route would.
    ast.originate_local(exten, context=context, app="Wait", data="20")
    assert conversation_end(ast, exten).startswith("failed")
    ast.wait_for_log(r"FALLBACK reached extension 100", timeout=15)
