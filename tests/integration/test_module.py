"""The module in a real Asterisk: load, registration, the decline path, unload, shutdown."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from asterisk import Asterisk
from convai_fixtures import TEST_KEY, agent

from convai.sim import Scenario, Simulator


def module_status(ast: Asterisk) -> str:
    out = ast.cli("module show like elevenlabs")
    line = next(ln for ln in out.splitlines() if ln.startswith("app_elevenlabs_convai.so"))
    return "Not Running" if "Not Running" in line else "Running"


def test_module_loads_and_registers_everything(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator()
    t0 = time.monotonic()
    ast = convai_asterisk(agents={"sim": agent(sim)})
    print(
        f"Asterisk with the module booted in {ast.boot_seconds:.2f} s "
        f"({time.monotonic() - t0:.2f} s with config)"
    )
    assert module_status(ast) == "Running"
    # Asterisk's logger thread writes messages.log after "Asterisk Ready" may have been seen.
    m = ast.wait_for_log(r"runtime up in (\d+) ms", timeout=5)
    print(f"module load (Python runtime start): {m.group(1)} ms")

    doc = ast.cli("core show application ElevenLabsConvAI")
    assert "Talk to an ElevenLabs Conversational AI agent" in doc
    assert "ELEVENLABS_STATUS" in doc and "ELEVENLABS_END_REASON" in doc
    assert re.search(r"\[Since\]\s+app_elevenlabs_convai 0\.1\.0", doc), doc
    event = ast.cli("manager show event ElevenLabsConvAIEnd")
    assert "ElevenLabsConvAIEnd" in event and "app_elevenlabs_convai 0.1.0" in event, event

    assert "enabled" in ast.cli("elevenlabs debug on")
    assert "disabled" in ast.cli("elevenlabs debug off")
    assert "reloaded" in ast.cli("elevenlabs reload")
    agents = ast.cli("elevenlabs show agents")
    assert "sim" in agents and "agent_test" in agents
    assert TEST_KEY not in agents and "****" + TEST_KEY[-4:] in agents
    assert "0 active conversation(s)" in ast.cli("elevenlabs show calls")


def test_a_call_completes_and_sets_the_result_variables(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator(Scenario(greeting="Hello.", end_after_turns=None, close_after_s=3.0))
    ast = convai_asterisk(agents={"sim": agent(sim)})
    ast.originate_local("100", app="Wait", data="20")
    line = ast.wait_for_log(r"RESULT status=\S+ reason=\S+ conv=\S*", timeout=20).group(0)
    assert "status=COMPLETED" in line and "reason=completed" in line, line
    assert re.search(r"conv=conv_\w+", line), line
    ast.wait_no_channels(timeout=10)
    assert not ast.errors("app_elevenlabs_convai|elevenlabs"), ast.errors()


def test_unknown_agent_fails_the_call_and_the_dialplan_goes_on(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator()
    dialplan = (
        "[test]\nexten => 100,1,ElevenLabsConvAI(nosuch)\n"
        " same => n,Verbose(1,RESULT status=${ELEVENLABS_STATUS} reason=${ELEVENLABS_END_REASON})\n"
        " same => n,Hangup()\n"
    )
    ast = convai_asterisk(agents={"sim": agent(sim)}, dialplan=dialplan)
    ast.originate_local("100", app="Wait", data="5")
    line = ast.wait_for_log(r"RESULT status=\S+ reason=\S+", timeout=10).group(0)
    assert "status=FAILED reason=unknown_agent" in line
    assert ast.wait_for_log(r"agent \[nosuch\] is not configured", timeout=5)


def test_declines_cleanly_without_its_python_package(
    asterisk_factory: Callable[..., Asterisk], convai_module: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "no-python-here"
    empty.mkdir()
    conf = f"[general]\npython_path = {empty}\n"
    ast = asterisk_factory(
        configs={"elevenlabs.conf": conf, "extensions.conf": "[test]\n"},
        extra_modules=[convai_module],
    )
    assert module_status(ast) == "Not Running"
    errors = ast.errors("elevenlabs: ")  # the prefix of every line the module logs
    assert any(
        "Python runtime is unavailable" in e
        and "cannot import convai.host" in e
        and str(empty) in e
        for e in errors
    ), errors
    assert "uptime" in ast.cli("core show uptime").lower()  # Asterisk runs on


def test_unload_is_refused_and_shutdown_is_clean(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator()
    ast = convai_asterisk(agents={"sim": agent(sim)})
    out = ast.cli("module unload app_elevenlabs_convai")
    print(out)
    assert module_status(ast) == "Running"
    t0 = time.monotonic()
    assert ast.stop(timeout=10), "Asterisk had to be killed"
    took = time.monotonic() - t0
    print(f"core stop gracefully took {took:.2f} s")
    assert took < 5
    assert ast.exit_code == 0, ast.exit_code


def test_python_runs_below_the_media_threads_under_realtime_priority(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    """Under `asterisk -p` the channel threads are SCHED_RR; the Python thread must not be."""
    sim = simulator()
    ast = convai_asterisk(agents={"sim": agent(sim)}, options="highpriority = yes")
    assert ast.pid is not None
    tasks = Path(f"/proc/{ast.pid}/task")
    names = {int(t.name): (t / "comm").read_text().strip() for t in tasks.iterdir()}
    python = [tid for tid, name in names.items() if name == "convai-python"]
    assert len(python) == 1, names
    assert os.sched_getscheduler(ast.pid) == os.SCHED_RR  # Asterisk itself is realtime
    assert os.sched_getscheduler(python[0]) == os.SCHED_OTHER
