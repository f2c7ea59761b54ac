"""The test harness itself, against stock Asterisk (no ElevenLabs module)."""

from __future__ import annotations

import collections
import itertools
import statistics
import time
from pathlib import Path

import pytest
from asterisk import FLAVOUR, FLAVOUR_EXPECTS, HAVE_PJSIP, Asterisk, AsteriskFactory
from rtpcall import RtpCall
from sipp import run_sipp, write_uac_scenario

EXTENSIONS = """\
[test]
exten => 100,1,Answer()
 same => n,Playback(demo-thanks)
 same => n,Hangup()
exten => hello,1,Answer()
 same => n,Playback(hello-world)
 same => n,Hangup()
exten => echo,1,Answer()
 same => n,Echo()
 same => n,Hangup()
exten => dtmf,1,Answer()
 same => n,Read(DIGITS,,3,,,5)
 same => n,Verbose(1,DIGITS=${DIGITS})
 same => n,Hangup()
"""


def test_boots_and_answers_cli(asterisk_factory: AsteriskFactory) -> None:
    ast = asterisk_factory()
    assert ast.boot_seconds is not None
    print(f"Asterisk boot: {ast.boot_seconds:.2f} s")
    assert ast.boot_seconds < 15
    assert ast.is_running() and ast.pid
    major, pjsip = FLAVOUR_EXPECTS[FLAVOUR]
    assert f"Asterisk {major}." in ast.cli("core show version")
    mods = ast.cli("module show like chan_pjsip")
    if pjsip:
        assert "Running" in mods
    else:  # built without pjproject: the instance must not even try
        assert not HAVE_PJSIP and "chan_pjsip" not in ast.modules
    # every default module loaded, and the stand-in configs keep boot free of errors
    assert ast.errors() == [], ast.errors()
    assert "Failed" not in ast.log_text(), ast.log_text()


def test_local_channel_playback_echo(asterisk_factory: AsteriskFactory) -> None:
    ast = asterisk_factory(configs={"extensions.conf": EXTENSIONS})
    mark = ast.log_mark()
    ast.originate_local("100", app="Echo")
    ast.wait_for_log(r"Executing \[100@test:2\] Playback\(.*demo-thanks", since=mark)
    ast.wait_for_log(r"Playing 'demo-thanks\.", since=mark)
    ast.wait_for_log(r"Executing \[100@test:3\] Hangup", timeout=20, since=mark)
    ast.wait_no_channels(timeout=10)


def test_ami_login_and_events(asterisk_factory: AsteriskFactory) -> None:
    ast = asterisk_factory(configs={"extensions.conf": EXTENSIONS})
    with ast.ami() as ami:
        assert ami.banner.startswith("Asterisk Call Manager/")
        pong = ami.action("Ping")
        assert pong["Response"] == "Success" and pong.get("Ping") == "Pong"
        r = ami.action("UserEvent", UserEvent="ConvaiHarness", Foo="bar")
        assert r["Response"] == "Success", r
        ev = ami.wait_event("UserEvent", lambda e: e.get("UserEvent") == "ConvaiHarness")
        assert ev["Foo"] == "bar"
        # a call's events
        r = ami.action("Originate", Channel="Local/hello@test", Application="Echo", Async="true")
        assert r["Response"] == "Success", r
        new = ami.wait_event("Newchannel", lambda e: e.get("Exten") == "hello")
        hup = ami.wait_event("Hangup", lambda e: e.get("Uniqueid") == new["Uniqueid"], timeout=15)
        assert hup["Cause"] in ("16", "0"), hup
        resp, items = ami.action_list("CoreShowChannels")
        assert resp["Response"] == "Success" and items == []
        assert f"Asterisk {FLAVOUR_EXPECTS[FLAVOUR][0]}." in ami.command("core show version")


def _intervals_ms(call: RtpCall) -> list[float]:
    pkts = call.audio_packets()
    return [(b.arrival_ns - a.arrival_ns) / 1e6 for a, b in itertools.pairwise(pkts)]


@pytest.mark.sip
@pytest.mark.timing
def test_sip_call_rtp_pacing(asterisk_factory: AsteriskFactory) -> None:
    ast = asterisk_factory(configs={"extensions.conf": EXTENSIONS})
    with RtpCall(ast.sip_port, "100", codec="PCMU") as call:
        assert call.wait_bye(timeout=30), "Asterisk did not hang up"
    pkts = call.audio_packets()
    assert len(pkts) > 200, len(pkts)
    # contiguous sequence numbers and 160-sample timestamps: nothing lost on loopback
    assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in itertools.pairwise(pkts))
    sizes = collections.Counter(len(p.payload) for p in pkts[:-1])
    assert set(sizes) == {160}, sizes  # the prompt's last frame may be short
    steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(pkts[:-1])}
    assert steps == {160}, steps
    iv = _intervals_ms(call)
    span_s = (pkts[-1].arrival_ns - pkts[0].arrival_ns) / 1e9
    rate = (len(pkts) - 1) / span_s
    med = statistics.median(iv)
    p99 = sorted(iv)[int(len(iv) * 0.99)]
    print(f"RTP: {len(pkts)} packets, {rate:.2f} pkt/s, median {med:.2f} ms, p99 {p99:.2f} ms")
    assert 49.0 <= rate <= 51.0
    assert 19.0 <= med <= 21.0
    assert p99 < 40.0
    # it is the prompt, not silence
    assert sum(1 for b in call.audio() if b not in (0xFF, 0x7F)) > len(call.audio()) // 4


@pytest.mark.sip
@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_sip_codecs(asterisk_factory: AsteriskFactory, codec: str) -> None:
    ast = asterisk_factory(configs={"extensions.conf": EXTENSIONS}, sip_allow="ulaw,alaw,g722")
    with RtpCall(ast.sip_port, "hello", codec=codec) as call:
        assert call.wait_bye(timeout=15)
    pkts = call.audio_packets()
    assert pkts and {p.pt for p in pkts} == {call.pt}
    assert 60 <= len(pkts) <= 90, len(pkts)  # hello-world is 1.4 s
    sizes = collections.Counter(len(p.payload) for p in pkts[:-1])
    assert set(sizes) == {160}, sizes  # the prompt's last frame may be short
    assert "active call" in ast.cli("core show channels")  # the instance is still healthy


@pytest.mark.sip
def test_echo_is_bit_exact_ulaw(asterisk_factory: AsteriskFactory) -> None:
    """What the UA sends comes back unchanged through Echo (ulaw end to end)."""
    ast = asterisk_factory(configs={"extensions.conf": EXTENSIONS})
    frames = 50
    sent = bytes((i * 7 + 3) % 256 for i in range(160 * frames))
    with RtpCall(ast.sip_port, "echo", codec="PCMU", fill_silence=False) as call:
        call.send_audio(sent, wait=True)
        deadline = time.monotonic() + 5
        while len(call.audio_packets()) < frames and time.monotonic() < deadline:
            time.sleep(0.02)
    assert call.audio() == sent, (len(sent), len(call.audio()))


@pytest.mark.sip
def test_rfc4733_dtmf_reaches_the_dialplan(asterisk_factory: AsteriskFactory) -> None:
    ast = asterisk_factory(configs={"extensions.conf": EXTENSIONS}, more_modules=["app_read"])
    with RtpCall(ast.sip_port, "dtmf") as call:
        ast.wait_for_log(r"Executing \[dtmf@test:2\] Read")
        call.send_dtmf("42#")
        ast.wait_for_log(r"DIGITS=42$", timeout=10)
        assert call.wait_bye(timeout=5)
    assert "DTMF end '4' received" in ast.log_text(full=True)


@pytest.mark.sip
@pytest.mark.sipp
def test_sipp_call(asterisk_factory: AsteriskFactory, tmp_path: Path) -> None:
    ast = asterisk_factory(configs={"extensions.conf": EXTENSIONS})
    audio = tmp_path / "silence.ulaw"
    audio.write_bytes(b"\xff" * 8000 * 2)
    scenario = write_uac_scenario(tmp_path / "uac.xml", codec="PCMU", audio=audio)
    result = run_sipp(scenario, ast.sip_port, "hello", timeout=20)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stop_is_clean(asterisk_factory: AsteriskFactory) -> None:
    ast: Asterisk = asterisk_factory()
    pid = ast.pid
    assert ast.stop(timeout=10), "needed SIGKILL"
    assert not ast.killed and ast.exit_code == 0
    assert ast.stop_seconds is not None and ast.stop_seconds < 5
    print(f"Asterisk stop: {ast.stop_seconds:.2f} s (pid {pid})")
    assert not ast.is_running()
    assert "Asterisk cleanly ending" in ast.log_text(full=True)
