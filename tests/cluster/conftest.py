"""Fixtures for the scale-out tests (bash scripts/cluster-test.sh runs them in the testbed).

One topology (tests/cluster/cluster.py) serves every test of the module; each test starts by
bringing every node back up, so a failed test does not leave the next one a broken farm. The
figures the tests measure are collected in ``results`` and written, as JSON, to
CONVAI_CLUSTER_RESULTS (default out/cluster-results.json) and to the terminal summary.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import KAMAILIO, REPO, Cluster

MODULE = Path(os.environ.get("CONVAI_MODULE", "/var/tmp/convai-build/app_elevenlabs_convai.so"))
PYTHON_DIR = Path(os.environ.get("CONVAI_PYTHON_DIR", "/var/tmp/convai-stage/python"))
REQUIRED = os.environ.get("CONVAI_REQUIRE_INTEGRATION", "") not in ("", "0", "no", "false")
RESULTS = Path(os.environ.get("CONVAI_CLUSTER_RESULTS", REPO / "out" / "cluster-results.json"))

_results: dict[str, Any] = {}
_t0 = time.monotonic()


def _unavailable() -> str | None:
    for what, path in (("kamailio", Path(KAMAILIO)), ("the module", MODULE)):
        if not path.is_file():
            return f"{what} ({path}) is missing: run bash scripts/cluster-test.sh"
    if not (PYTHON_DIR / "convai").is_dir():
        return f"the Python package dir {PYTHON_DIR} is missing: run bash scripts/cluster-test.sh"
    return None


@pytest.fixture(scope="session")
def results() -> dict[str, Any]:
    return _results


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = _unavailable()
    if why:
        if REQUIRED:
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    base = tmp_path_factory.mktemp("cluster")
    t = time.monotonic()
    with Cluster(base, MODULE, PYTHON_DIR, nodes=3) as c:
        _results["setup_s"] = round(time.monotonic() - t, 1)
        yield c
    shutil.rmtree(base / "sipp", ignore_errors=True)


@pytest.fixture
def farm(cluster: Cluster) -> Cluster:
    """The topology with every node running and active in the dispatcher."""
    cluster.ensure_all_up()
    return cluster


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _results:
        return
    _results["wall_s"] = round(time.monotonic() - _t0, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(_results, indent=2, sort_keys=True) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _results:
        return
    tr = terminalreporter
    tr.write_sep("-", f"cluster figures (also in {RESULTS})")
    for key in sorted(_results):
        tr.write_line(f"{key}: {json.dumps(_results[key])}")
