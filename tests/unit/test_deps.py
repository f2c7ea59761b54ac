"""convai.deps: the minimum versions (one place), the refusal line, the lock file, the docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from convai import deps

REPO = Path(__file__).resolve().parents[2]
INSTALL_MD = REPO / "docs" / "INSTALL.md"
LOCK = REPO / "python" / "deps.lock"


def test_parse_compares_release_numbers() -> None:
    assert deps.parse("10.4") < deps.parse("13.0") <= deps.parse("13.0.1") < deps.parse("15")
    assert deps.parse("3.8.4") >= deps.parse("3.8")
    assert deps.parse("13.1.post1") == (13, 1)
    assert deps.parse("1.15.1+ds") == (1, 15, 1)


def _with(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str | None]) -> None:
    def fake(name: str) -> tuple[str, str] | None:
        v = versions.get(name, "99")
        return None if v is None else (v, "/usr/lib/python3/dist-packages")

    monkeypatch.setattr(deps, "installed", fake)
    for name in deps.MINIMUM:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_check_passes_when_everything_is_new_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, {"websockets": "13.0", "aiohttp": "3.8.4", "cffi": "1.15.1"})
    assert deps.check() is None


def test_too_old_names_package_found_minimum_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, {"websockets": "10.4"})
    line = deps.check()
    assert line is not None and "\n" not in line
    assert line.startswith("websockets 10.4 (in /usr/lib/python3/dist-packages) is too old")
    assert "needs websockets >= 13.0" in line
    assert (
        "fix: rebuild with the bundled copy (meson setup --reconfigure -Dpython_deps=auto" in line
    )


def test_missing_and_old_cffi(monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, {"aiohttp": None})
    line = deps.check()
    assert line is not None and line.startswith(
        "aiohttp is missing: the module needs aiohttp >= 3.8"
    )
    assert "apt install python3-aiohttp" in line
    _with(monkeypatch, {"cffi": "1.14.0"})
    line = deps.check()
    assert line is not None and "cffi 1.14.0" in line and ">= 1.15" in line
    assert "fix: apt install python3-cffi-backend" in line  # not bundled: cffi builds the module


def test_an_old_copy_left_imported_asks_for_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, {})
    old = type(sys)("websockets")
    old.__version__ = "10.4"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "websockets", old)
    line = deps.check()
    assert line is not None and "websockets 10.4 is too old" in line
    assert "restart Asterisk" in line
    assert "websockets 10.4 imported" in deps.restart_note()


def test_too_old_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deps, "MINIMUM_PYTHON", (99, 0))
    line = deps.check()
    assert line is not None and "is too old: the module needs Python >= 99.0" in line


def test_the_lock_pins_every_bundled_package_with_hashes_at_or_above_the_minimum() -> None:
    sections = deps.lock_sections(str(LOCK))
    assert sorted(sections) == sorted(deps.BUNDLED)
    for name in deps.BUNDLED:
        pins = {r.split("==")[0]: r.split()[0].split("==")[1] for r in sections[name]}
        assert deps.parse(pins[name]) >= deps.parse(deps.MINIMUM[name]), (name, pins[name])
        for req in sections[name]:
            assert re.match(r"[a-z0-9-]+==[0-9][^ ]* (--hash=sha256:[0-9a-f]{64} ?)+$", req), req


def test_install_md_states_the_minimums_of_deps_py() -> None:
    text = INSTALL_MD.read_text()
    table = text.split("<!-- minimums:", 1)[1].split("\n\n", 1)[0]
    rows = {
        cells[0]: cells[1]
        for line in table.splitlines()[3:]
        if (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    want = {"Python": ".".join(map(str, deps.MINIMUM_PYTHON)), **deps.MINIMUM}
    assert rows.keys() >= want.keys(), rows
    assert {k: rows[k] for k in want} == want


def test_meson_reads_the_same_numbers() -> None:
    script = str(REPO / "python" / "convai" / "deps.py")
    run = [sys.executable, script, "minimum"]
    assert subprocess.run([*run, "python"], capture_output=True, text=True, check=True).stdout == (
        ".".join(map(str, deps.MINIMUM_PYTHON)) + "\n"
    )
    out = subprocess.run([*run, "websockets"], capture_output=True, text=True, check=True).stdout
    assert out == deps.MINIMUM["websockets"] + "\n"


def test_every_tested_install_md_block_exists() -> None:
    names = subprocess.run(
        ["bash", str(REPO / "testbed" / "install-md.sh"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"prerequisites-bookworm", "prerequisites-trixie", "build-source", "load-source"} <= set(
        names
    )
    block = subprocess.run(
        ["bash", str(REPO / "testbed" / "install-md.sh"), "build-source"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert block.startswith("meson setup build") and "meson install -C build" in block
    assert "-g asterisk" not in block  # a source-built Asterisk has no such group
