"""Prometheus metrics through res_prometheus, and a module that works without it."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

import pytest
from asterisk import Asterisk, free_port
from convai_fixtures import agent

from convai.sim import Scenario, Simulator


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def value(text: str, metric: str) -> float:
    m = re.search(rf"^{re.escape(metric)} (\S+)$", text, re.M)
    assert m, f"{metric} not in:\n{text}"
    return float(m.group(1))


@pytest.mark.sip  # res_prometheus requires res_pjsip (Asterisk 20 and 23 alike)
def test_metrics_are_exported_when_res_prometheus_is_loaded(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator(Scenario(greeting="Hello there.", close_after_s=2.5))
    port = free_port(udp=False, tcp=True)
    ast = convai_asterisk(
        agents={"sim": agent(sim)},
        more_modules=["res_prometheus"],
        configs={
            "http.conf": f"[general]\nenabled = yes\nbindaddr = 127.0.0.1\nbindport = {port}\n",
            "prometheus.conf": (
                "[general]\nenabled = yes\nuri = metrics\ncore_metrics_enabled = no\n"
            ),
        },
    )
    # Asterisk writes its log on a thread of its own: wait for the line, do not race it.
    ast.wait_for_log(r"Prometheus metrics registered", timeout=10)
    before = scrape(port)
    assert value(before, "asterisk_elevenlabs_active_calls") == 0
    assert value(before, 'asterisk_elevenlabs_calls_total{status="COMPLETED"}') == 0

    ast.originate_local("100", app="Wait", data="20")
    ast.wait_for_log(r"RESULT status=COMPLETED", timeout=20)
    after = scrape(port)
    print(after)
    assert value(after, 'asterisk_elevenlabs_calls_total{status="COMPLETED"}') == 1
    assert value(after, 'asterisk_elevenlabs_calls_total{status="FAILED"}') == 0
    assert value(after, "asterisk_elevenlabs_active_calls") == 0
    assert value(after, "asterisk_elevenlabs_underruns_total") == 0
    assert value(after, "asterisk_elevenlabs_first_audio_seconds_count") >= 1
    assert value(after, 'asterisk_elevenlabs_first_audio_seconds_bucket{le="+Inf"}') >= 1
    # A call that fails before it starts is counted too.
    ast.cli("dialplan add extension 200,1,ElevenLabsConvAI(nosuch) into test")
    ast.originate_local("200", app="Wait", data="2")
    ast.wait_for_log(r"agent \[nosuch\]", timeout=10)
    assert value(scrape(port), 'asterisk_elevenlabs_calls_total{status="FAILED"}') == 1
    # Low cardinality: no per-call or per-channel labels anywhere.
    assert "Local/" not in after and "conv_" not in after


def test_no_metrics_and_no_harm_without_res_prometheus(
    simulator: Callable[..., Simulator], convai_asterisk: Callable[..., Asterisk]
) -> None:
    sim = simulator(Scenario(greeting="Hello there.", close_after_s=2.0))
    ast = convai_asterisk(agents={"sim": agent(sim)})
    assert "Prometheus metrics registered" not in ast.log_text()
    ast.originate_local("100", app="Wait", data="20")
    assert "status=COMPLETED" in ast.wait_for_log(r"RESULT status=\S+", timeout=20).group(0)
