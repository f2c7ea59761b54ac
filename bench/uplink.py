#!/usr/bin/env python3
"""Turn latency on the way up (issue 12): from the caller's last speech frame to its arrival
at the agent, through real SIP/RTP calls.

One Asterisk with the built module (PJSIP, PCMU only, `ulaw_8000` end to end, so the caller's
bytes reach the simulator bit-exact), the simulator in this process (its records say when each
`user_audio_chunk` arrived and how long it was), and the caller in a child process of its own
(tests/integration/rtpcall.py's UA on its absolute 20 ms clock; it records when each frame of
speech left), so neither's GIL delays the other. Both stamp with CLOCK_MONOTONIC, which the
two processes share. Each call: the greeting, then the caller says Asterisk's prompts in turn
with a pause after each (1.2 s and a random part of a chunk's length, so that each utterance
ends at its own point of a chunk being filled; the agent's replies run over them, which does
not matter here), then hangs up.

For each utterance, its last frame at or above CONVAI_UP_SPEECH_LEVEL (the module's own
energy check, c/convai_shared.h) is found in the received caller audio; the latency is that
frame's send time at the caller to the arrival of the chunk holding it at the simulator. With
the flush, that is CONVAI_UP_HANGOVER_FRAMES frames plus the path; without it, the wait for
the `elevenlabs_audio_frames_buffer_ms` chunk to fill (up to 240 ms by default). The run also
says whether every chunk boundary fell where the flush rule puts it (`flush_rule_held`).

Inside the testbed, after scripts/build.sh (see bench/README.md):

    CONVAI_MODULE=... CONVAI_PYTHON_DIR=... python3 bench/uplink.py --calls 5 --out R.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests" / "integration"), str(ROOT / "python")]

from asterisk import Asterisk  # noqa: E402
from calls_util import (  # noqa: E402
    REALTIME,
    UP_HANGOVER_FRAMES,
    UP_SPEECH_LEVEL,
    prompt,
    uplink_turns,
)
from rtpcall import RtpCall  # noqa: E402

import stats  # noqa: E402
from convai.sim import Scenario, Simulator  # noqa: E402

MODULE = Path(os.environ.get("CONVAI_MODULE", "/var/tmp/convai-build/app_elevenlabs_convai.so"))
PYDIR = Path(os.environ.get("CONVAI_PYTHON_DIR", "/var/tmp/convai-stage/python"))
PROMPTS = ("hello-world", "tt-weasels", "vm-goodbye")
GREETING = "Hello."
DIALPLAN = (
    "[test]\nexten => 100,1,Answer()\n same => n,ElevenLabsConvAI(sim)\n same => n,Hangup()\n"
)


def caller(sip_port: int, utterances: list[bytes], pauses: list[float], out: Any) -> None:
    """The child process: one call, each utterance then a pause; its send times go back."""
    with RtpCall(sip_port, "100", codec="PCMU") as call:
        deadline = time.monotonic() + 15
        while not any(set(p.payload) - {0xFF} for p in call.audio_packets()):
            if time.monotonic() > deadline:
                raise SystemExit("no greeting within 15 s")
            time.sleep(0.02)
        time.sleep(1.0)  # the greeting plays out
        for utt, pause in zip(utterances, pauses, strict=True):
            call.send_audio(utt, wait=True)
            time.sleep(pause)
        call.hangup()
        out.put(call.sent_audio_ns)


def one_call(ast: Asterisk, said: list[bytes], pauses: list[float]) -> list[int]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=caller, args=(ast.sip_port, said, pauses, q))
    proc.start()
    sent: list[int] = q.get(timeout=60 + sum(pauses) + 4 * len(said))
    proc.join(10)
    if proc.exitcode != 0:
        raise SystemExit(f"the caller failed (exit {proc.exitcode})")
    return sent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=5, help="calls, one after the other")
    ap.add_argument("--rounds", type=int, default=4, help="times each call says the prompts")
    ap.add_argument("--buffer-ms", type=int, default=240, help="elevenlabs_audio_frames_buffer_ms")
    ap.add_argument("--pause", type=float, default=1.2, help="seconds of silence after each")
    ap.add_argument("--seed", type=int, default=12, help="of the pauses' random part")
    ap.add_argument("--realtime", action="store_true", help="Asterisk under -p (highpriority)")
    ap.add_argument("--label", default="", help="a name for this run in the JSON")
    ap.add_argument("--out", type=Path, help="also add the result to this JSON list")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/bench-uplink"))
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    scenario = Scenario(greeting=GREETING, replies=["OK."], end_after_turns=None)
    latencies: list[float] = []
    held = total = 0
    missing: list[int] = []  # utterances not received bit-exact (silence filled in): skipped
    per_call: list[dict[str, Any]] = []
    with Simulator(scenario).run_in_thread() as sim:
        conf = (
            f"[general]\ndebug = no\npython_path = {PYDIR}\n\n[sim]\n"
            "elevenlabs_api_key = sk-bench-0000000000000000000000000000\n"
            f"elevenlabs_get_signed_url_endpoint = {sim.signed_url_endpoint}\n"
            "elevenlabs_agent_id = agent_bench\n"
            f"elevenlabs_audio_frames_buffer_ms = {args.buffer_ms}\n"
        )
        ast = Asterisk(
            tempfile.mkdtemp(prefix="asterisk-", dir=args.work),  # its own, empty
            configs={"extensions.conf": DIALPLAN, "elevenlabs.conf": conf},
            extra_modules=[MODULE],
            more_modules=["res_convert"],
            sip_allow="ulaw",
            verbose=0,
            options=REALTIME if args.realtime else "",
        )
        ast.write_configs()
        os.chmod(ast.etc / "elevenlabs.conf", 0o640)
        ast.start()
        try:
            said = [prompt(ast, p, "ulaw", args.work) for p in PROMPTS] * args.rounds
            rng = random.Random(args.seed)
            for n in range(args.calls):
                # A random part of a chunk more each time, so each utterance ends at its own
                # point of the chunk being filled (as a caller's would), not in step.
                pauses = [args.pause + rng.uniform(0, args.buffer_ms / 1000) for _ in said]
                sent = one_call(ast, said, pauses)
                deadline = time.monotonic() + 10
                while len(sim.conversations) <= n or sim.conversations[n].ended_at is None:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"call {n}: the conversation did not end")
                    time.sleep(0.05)
                rec = sim.conversations[n]
                turns = uplink_turns(rec, sent, said, args.buffer_ms // 20, missing=missing)
                latencies += [t.latency_ms for t in turns]
                held += sum(t.flushed for t in turns)
                total += len(turns)
                per_call.append(stats.percentiles([round(t.latency_ms, 2) for t in turns]))
        finally:
            ast.stop(timeout=10)
            shutil.rmtree(ast.base, ignore_errors=True)
    git = None
    with contextlib.suppress(OSError):  # no git in the testbed's root
        git = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    lat = sorted(latencies)
    result = {
        "run": "uplink",
        "label": args.label,
        "git": git,
        "module": str(MODULE),
        "priority": "realtime" if args.realtime else "normal",
        "buffer_ms": args.buffer_ms,
        "calls": args.calls,
        "utterances": total,
        "speech_level": UP_SPEECH_LEVEL,
        "hangover_frames": UP_HANGOVER_FRAMES,
        "last_word_ms": stats.percentiles([round(x, 2) for x in lat], (0.5, 0.9, 0.99))
        | {"mean": round(sum(lat) / len(lat), 2) if lat else None, "min": lat[0] if lat else None},
        "flush_rule_held": f"{held}/{total}",
        "not_bit_exact": len(missing),
        "per_call": per_call,
        "load_avg_1m": os.getloadavg()[0],
    }
    print(json.dumps(result))
    if args.out:  # a JSON list, as bench/report.py reads them: this run is added at the end
        runs = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.write_text(json.dumps([*runs, result], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
