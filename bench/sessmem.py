#!/usr/bin/env python3
"""Memory and CPU of one ConvAI session, without Asterisk: N `convai.session.Session`s in this
process against the simulator (its own process), over ws:// or wss://, measured with tracemalloc
(the Python objects, by allocation site), RSS (everything: also OpenSSL's and the C libraries')
and this process's CPU while every call is up.

    python3 bench/sessmem.py --calls 50 --transport wss [--uvloop] [--ssl-read-kb 256]

Where a call's memory goes in the module is the sum of this (the Python loop's share) and the
C side (rings and the channel); bench/run.py measures the sum through Asterisk. This one is for
deciding: one knob at a time, the same N, a quiet few seconds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYDIR = Path(os.environ.get("CONVAI_PYTHON_DIR", str(ROOT / "python")))
sys.path[:0] = [str(HERE), str(PYDIR)]

import stats  # noqa: E402


def rss_kb() -> int:
    return stats.proc_rss_kb(os.getpid())


def start_sim(work: Path, tls: bool) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scenario = work / "scenario.json"
    # A long greeting at real speed keeps every conversation busy while we measure.
    scenario.write_text(json.dumps({"greeting": "Hello! " * 60, "burst_factor": 1.0}))
    cmd = [sys.executable, "-m", "convai.sim", "--port", str(port), "--scenario", str(scenario),
           "-q"]  # fmt: skip
    if tls:
        cmd += ["--tls-cert", str(work / "pki" / "good.pem"), "--tls-key",
                str(work / "pki" / "good.key")]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(PYDIR))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            break
        time.sleep(0.2)
    scheme = "https" if tls else "http"
    return proc, f"{scheme}://127.0.0.1:{port}/v1/convai/conversation/get-signed-url"


class Sink:
    """A SessionHandler that keeps nothing (the host pushes audio into C rings)."""

    def __init__(self) -> None:
        self.started = False
        self.audio = 0

    def on_started(self, started: Any) -> None:
        self.started = True

    def on_audio(self, event_id: int, audio: bytes) -> None:
        self.audio += len(audio)

    def on_interruption(self, event_id: int) -> None:
        pass

    def on_event(self, event: Any) -> None:
        pass


async def measure(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    import aiohttp

    from convai.session import AgentConfig, CallInfo, Session

    cfg = AgentConfig(name="mem", api_key="sk-mem-0000", signed_url_endpoint=endpoint,
                      agent_id="agent_mem")  # fmt: skip
    http = aiohttp.ClientSession() if args.shared_http else None
    # Warm-up: one conversation first, so one-time costs (CA store, imports) are not per call.
    sinks: list[Sink] = []
    sessions: list[Session] = []
    tasks: list[asyncio.Task[Any]] = []

    async def call(k: int) -> None:
        sink = Sink()
        sess = Session(cfg, CallInfo(channel=f"mem/{k}"), sink, http=http)
        sinks.append(sink)
        sessions.append(sess)
        tasks.append(asyncio.create_task(sess.run()))

    silence = b"\xff" * 160 * 12  # one 240 ms chunk of μ-law silence

    async def feed() -> None:
        while True:
            for s in sessions:
                s.feed_caller_audio(silence)
            await asyncio.sleep(0.24)

    feeder = asyncio.create_task(feed())
    await call(-1)
    await asyncio.sleep(3)
    gc.collect()
    rss0, (py0, _) = rss_kb(), tracemalloc.get_traced_memory()
    snap0 = tracemalloc.take_snapshot() if args.sites > 0 else None
    t0 = time.monotonic()
    for k in range(args.calls):
        await call(k)
        await asyncio.sleep(1 / args.cps)
    while sum(s.started for s in sinks) < len(sinks) and time.monotonic() - t0 < 60:
        await asyncio.sleep(0.1)
    c0, w0 = time.process_time(), time.monotonic()
    await asyncio.sleep(args.hold)
    cpu_ms_per_call_s = (time.process_time() - c0) * 1000 / ((time.monotonic() - w0) * args.calls)
    gc.collect()
    rss1, (py1, _) = rss_kb(), tracemalloc.get_traced_memory()
    fds = stats.proc_fds(os.getpid())
    sites: list[Any] = []
    if snap0 is not None:
        snap1 = tracemalloc.take_snapshot()
        for d in snap1.compare_to(snap0, "lineno")[: args.sites]:
            fr = d.traceback[0]
            sites.append([f"{Path(fr.filename).name}:{fr.lineno}",
                          round(d.size_diff / args.calls / 1024, 2), d.count_diff])  # fmt: skip
    for s in sessions:
        s.hangup()
    await asyncio.gather(*tasks, return_exceptions=True)
    feeder.cancel()
    if http is not None:
        await http.close()
    await asyncio.sleep(1)
    gc.collect()
    n = args.calls
    return {
        "calls": n,
        "transport": args.transport,
        "started": sum(s.started for s in sinks),
        "audio_bytes": sum(s.audio for s in sinks),
        "rss_per_call_kb": round((rss1 - rss0) / n, 1),
        # This process's CPU (the sessions' side only) while every call is up, per call-second.
        "cpu_ms_per_call_s": round(cpu_ms_per_call_s, 3),
        "tracemalloc_per_call_kb": round((py1 - py0) / n / 1024, 1),
        "fds_per_call": round((fds - 3) / (n + 1), 2),
        "rss_after_minus_before_kb": rss_kb() - rss0,
        "top_sites_kb_per_call": sites,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--transport", choices=("ws", "wss"), default="wss")
    ap.add_argument("--cps", type=float, default=25.0)
    ap.add_argument("--hold", type=float, default=4.0, help="s with every call up (4)")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    ap.add_argument("--shared-http", action="store_true", help="one aiohttp session for all")
    ap.add_argument(
        "--ssl-read-kb",
        type=int,
        default=0,
        help="asyncio.sslproto.SSLProtocol.max_size in KiB (0: as is, 256)",
    )
    ap.add_argument(
        "--host-tuning",
        action="store_true",
        help="what convai.host applies at boot (convai.host.tune_asyncio)",
    )
    ap.add_argument(
        "--sites",
        type=int,
        default=15,
        help="top allocation sites (0: none; -1: no tracemalloc, RSS only)",
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/sessmem"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # The re-exec below is marked by its own variable: SSL_CERT_FILE may be set already (to
    # the system bundle), which does not trust the test CA.
    if args.transport == "wss" and "SESSMEM_TEST_CA" not in os.environ:
        # The CA through the environment, as the module's admin gives it: set before this
        # process starts, since aiohttp builds its default SSL context when imported.
        from convai.sim.tls import make_test_pki

        pki = make_test_pki(args.work / "pki")
        for pair, name in ((pki.good, "good"),):
            (args.work / "pki" / f"{name}.pem").write_bytes(pair.cert.read_bytes())
            (args.work / "pki" / f"{name}.key").write_bytes(pair.key.read_bytes())
        os.environ["SSL_CERT_FILE"] = os.environ["SESSMEM_TEST_CA"] = str(pki.ca.cert)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sim, endpoint = start_sim(args.work, args.transport == "wss")
    try:
        if args.ssl_read_kb:
            from asyncio import sslproto

            sslproto.SSLProtocol.max_size = args.ssl_read_kb * 1024
        if args.sites >= 0:  # -1: RSS only (tracemalloc's own bookkeeping is in RSS too)
            tracemalloc.start(1)
        if args.uvloop:
            import uvloop

            res = uvloop.run(measure(args, endpoint))
        else:
            res = asyncio.run(measure(args, endpoint))
        res["uvloop"] = args.uvloop
        res["shared_http"] = args.shared_http
        res["ssl_read_kb"] = args.ssl_read_kb
        print(json.dumps(res))
    finally:
        os.killpg(sim.pid, 15)
        sim.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
