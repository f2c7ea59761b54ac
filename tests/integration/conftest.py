"""Fixtures for tests against a real Asterisk (inside the testbed: testbed/testbed.sh).

Outside the testbed (no /usr/sbin/asterisk) these tests are skipped, unless
CONVAI_REQUIRE_INTEGRATION=1 (scripts/test.sh sets it), which makes that an error instead.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asterisk import ASTERISK, Asterisk, AsteriskFactory

# The module's own fixtures, for every test in this directory.
from convai_fixtures import convai_asterisk, simulator  # noqa: F401

HERE = Path(__file__).resolve().parent
MODULE = Path(os.environ.get("CONVAI_MODULE", "/var/tmp/convai-build/app_elevenlabs_convai.so"))
PYTHON_DIR = Path(os.environ.get("CONVAI_PYTHON_DIR", "/var/tmp/convai-stage/python"))
REQUIRED = os.environ.get("CONVAI_REQUIRE_INTEGRATION", "") not in ("", "0", "no", "false")
AVAILABLE = Path(ASTERISK).is_file() and os.access(ASTERISK, os.X_OK)
UNAVAILABLE_REASON = (
    f"no Asterisk here ({ASTERISK} missing): integration tests run inside the testbed "
    "(bash scripts/test.sh, or testbed/testbed.sh run python3 -m pytest tests/integration)"
)

_boot_times: list[float] = []
_stop_times: list[float] = []


def _ours(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _ours(item):
            item.add_marker(pytest.mark.integration)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not _ours(item) or AVAILABLE:
        return
    if REQUIRED:
        pytest.fail(f"CONVAI_REQUIRE_INTEGRATION=1 but {UNAVAILABLE_REASON}", pytrace=False)
    pytest.skip(UNAVAILABLE_REASON)


def _missing(what: str, path: Path) -> None:
    msg = f"{what} {path} does not exist: build it first (bash scripts/build.sh in the testbed)"
    if REQUIRED:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def convai_module() -> Path:
    """The freshly built app_elevenlabs_convai.so (CONVAI_MODULE)."""
    if not MODULE.is_file():
        _missing("the module", MODULE)
    return MODULE


@pytest.fixture(scope="session")
def convai_python_dir() -> Path:
    """The directory holding the staged convai package (CONVAI_PYTHON_DIR)."""
    if not (PYTHON_DIR / "convai").is_dir():
        _missing("the Python package dir", PYTHON_DIR)
    return PYTHON_DIR


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    instances: list[Asterisk] = getattr(item, "_convai_asterisks", [])
    if report.when == "call":
        item._convai_call_passed = report.passed  # type: ignore[attr-defined]
    if report.failed and instances:
        for ast in instances:
            report.sections.append((f"Asterisk {ast.name} ({ast.base})", ast.diagnostics(lines=60)))


@pytest.fixture
def asterisk_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AsteriskFactory]:
    """``make(name=None, start=True, **Asterisk kwargs) -> Asterisk``: instances under
    tmp_path, started by default, always stopped at teardown. When the test fails, the tails of
    each instance's console output and messages.log are attached to the report. A stop that
    needs SIGKILL fails an otherwise passing test."""
    instances: list[Asterisk] = []
    request.node._convai_asterisks = instances

    def make(name: str | None = None, start: bool = True, **kwargs: Any) -> Asterisk:
        base = tmp_path / (name or f"ast{len(instances) + 1}")
        ast = Asterisk(base, **kwargs)
        instances.append(ast)
        if start:
            ast.start()
            if ast.boot_seconds is not None:
                _boot_times.append(ast.boot_seconds)
        return ast

    yield make

    # `core stop gracefully` waits for calls to end: a passing test gets 10 s, a failed one 5 s.
    passed = getattr(request.node, "_convai_call_passed", True)
    killed = []
    for ast in instances:
        was_running = ast.is_running()
        if not ast.stop(timeout=10 if passed else 5):
            killed.append(ast.name)
        if was_running and ast.stop_seconds is not None:
            _stop_times.append(ast.stop_seconds)
    if killed and passed:
        pytest.fail(
            f"Asterisk {', '.join(killed)} did not stop gracefully and was SIGKILLed",
            pytrace=False,
        )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _boot_times:
        return
    tr = terminalreporter
    tr.write_sep("-", "Asterisk instances")

    def line(label: str, values: list[float]) -> None:
        if values:
            tr.write_line(
                f"{label}: n={len(values)} min={min(values):.2f}s "
                f"median={statistics.median(values):.2f}s max={max(values):.2f}s"
            )

    line("boot (start to fully booted)", _boot_times)
    line("stop (core stop gracefully to exit)", _stop_times)
