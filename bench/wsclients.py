#!/usr/bin/env python3
"""The WebSocket client library's CPU per message in our traffic: N connections to a server in
another process that sends each of them, 20 times a second, alternately an `audio` message
(800 bytes of audio, base64) and a `vad_score`; each client sends a 240 ms caller chunk every
240 ms and decodes every message's JSON. Clients: `websockets` (what session.py uses) or
aiohttp's `ws_connect`; each measured in its own process, alternately.

    python3 bench/wsclients.py [--tls] [--calls 50] [--repeats 3] websockets aiohttp

Prints one JSON line per measurement: messages per second, client CPU per message (µs) and per
connection-second (ms). It decides between the libraries, not our own code (bench/hotpath.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RATE = 20  # server messages per connection-second (the simulator sends ~19)
AUDIO = json.dumps({"type": "audio", "audio_event": {
    "audio_base_64": base64.b64encode(os.urandom(800)).decode(), "event_id": 3}})  # fmt: skip
VAD = json.dumps({"type": "vad_score", "vad_score_event": {"vad_score": 0.12345}})
UP = '{"user_audio_chunk":"' + base64.b64encode(b"\xff" * 1920).decode() + '"}'


async def server(port: int, tls: bool) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def handler(ws: ServerConnection) -> None:
        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.ensure_future(drain())
        try:
            for i in range(10**9):
                await ws.send(VAD if i % 2 else AUDIO)
                await asyncio.sleep(1 / RATE)
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()

    ctx = None
    if tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(os.environ["BENCH_CERT"], os.environ["BENCH_KEY"])
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=2**24, ssl=ctx):
        await asyncio.Future()


async def client(kind: str, url: str, ctx: ssl.SSLContext | None, counts: list[int]) -> None:
    kw: dict[str, Any] = {"ssl": ctx} if ctx else {}
    if kind == "websockets":
        from websockets.asyncio.client import connect

        ws = await connect(url, compression=None, max_size=2**24, **kw)

        async def up() -> None:
            while True:
                await asyncio.sleep(0.24)
                await ws.send(UP)

        task = asyncio.ensure_future(up())
        while True:
            json.loads(await ws.recv())
            counts[0] += 1
    else:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            wsa = await http.ws_connect(url, max_msg_size=2**24, compress=0, **kw)

            async def up_a() -> None:
                while True:
                    await asyncio.sleep(0.24)
                    await wsa.send_str(UP)

            task = asyncio.ensure_future(up_a())
            while True:
                msg = await wsa.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                json.loads(msg.data)
                counts[0] += 1
    task.cancel()


async def measure(kind: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    from asyncio import sslproto

    sslproto.SSLProtocol.max_size = 16 * 1024  # as convai.host does (TLS_READ_BYTES)
    ctx = ssl.create_default_context(cafile=os.environ["BENCH_CA"]) if args.tls else None
    url = f"{'wss' if args.tls else 'ws'}://127.0.0.1:{port}/"
    counts = [0]
    tasks = []
    for _ in range(args.calls):
        tasks.append(asyncio.ensure_future(client(kind, url, ctx, counts)))
        await asyncio.sleep(0.01)
    await asyncio.sleep(2)
    c0, n0, w0 = time.process_time(), counts[0], time.monotonic()
    await asyncio.sleep(args.hold)
    c1, n1, w1 = time.process_time(), counts[0], time.monotonic()
    for t in tasks:
        t.cancel()
    return {
        "client": kind,
        "tls": args.tls,
        "calls": args.calls,
        "msgs_per_s": round((n1 - n0) / (w1 - w0)),
        "us_per_msg": round((c1 - c0) * 1e6 / max(1, n1 - n0), 1),
        "ms_per_call_s": round((c1 - c0) * 1000 / (args.calls * (w1 - w0)), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clients", nargs="+", choices=("websockets", "aiohttp"))
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--hold", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsclients"))
    args = ap.parse_args()
    if args.role == "server":
        asyncio.run(server(args.port, args.tls))
        return 0
    if args.role == "client":
        print(json.dumps(asyncio.run(measure(args.clients[0], args.port, args))), flush=True)
        return 0
    if args.tls:
        sys.path.insert(0, str(HERE.parent / "python"))
        from convai.sim.tls import make_test_pki

        pki = make_test_pki(args.work / "pki")
        os.environ.update(BENCH_CA=str(pki.ca.cert), BENCH_CERT=str(pki.good.cert),
                          BENCH_KEY=str(pki.good.key))  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    me = [sys.executable, __file__, "--port", str(port), "--calls", str(args.calls),
          "--hold", str(args.hold)] + (["--tls"] if args.tls else [])  # fmt: skip
    srv = subprocess.Popen([*me, "--role", "server", "websockets"], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        for _ in range(args.repeats):
            for kind in args.clients:
                subprocess.run([*me, "--role", "client", kind], check=False)
    finally:
        srv.kill()
        srv.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
