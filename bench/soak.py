#!/usr/bin/env python3
"""Soak: many short real calls through one Asterisk, a few at a time, in a fixed mix; prints
the Asterisk process's fds, threads and RSS every --every calls, and checks that nothing
accumulates. Not part of CI (the full run takes most of an hour); issue 11.

Runs inside the testbed after scripts/build.sh (testbed.sh run sets the build dirs):

    bash testbed/testbed.sh run python3 bench/soak.py                 # 10,000 calls, 8 at a time
    bash testbed/testbed.sh run python3 bench/soak.py --calls 1000    # a shorter one
    ... --out /var/tmp/soak.json                                      # the samples as JSON

The mix, in turn (one simulator each, in this process, short scripted calls over Local
channels): a normal conversation (greeting, the agent closes, the words play out), barge-in
(the caller talks over the greeting: interruption, then the agent closes), a caller hangup
mid-audio, a server reset (TCP abort without a close frame) and a signed-URL 500.

Idle is measured after one warm-up call of each kind, with no call up (the runtime's lazily
made threads and sockets, e.g. the shared HTTP client, exist by then). Checks, exit status 1
when one fails: every call ends with its kind's status and reason; at the end fds and threads
are exactly at idle; RSS drifts at most --max-drift-mb from call --warmup (1,000) to the last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "python")]

from asterisk import AMIError, Asterisk  # noqa: E402
from convai_fixtures import agent, elevenlabs_conf  # noqa: E402

from convai.sim import Scenario, Simulator  # noqa: E402

MODULE = Path(os.environ.get("CONVAI_MODULE", "/var/tmp/convai-build/app_elevenlabs_convai.so"))
PYDIR = Path(os.environ.get("CONVAI_PYTHON_DIR", "/var/tmp/convai-stage/python"))


@dataclass(frozen=True)
class Kind:
    name: str
    scenario: Scenario
    caller: str  # extension in [caller]
    status: str  # the End event's Status and Reason this kind must get
    reason: str


GREETING = "Hi there."  # ~0.7 s of speech, sent at 4x real time
KINDS = [
    Kind("normal", Scenario(greeting=GREETING, close_after_s=0.3, ping_interval=0),
         "listen", "COMPLETED", "completed"),
    Kind("bargein", Scenario(greeting=GREETING, close_after_s=0.9, ping_interval=0,
                             min_speech_ms=60),
         "barge", "COMPLETED", "completed"),
    Kind("hangup", Scenario(greeting=GREETING, ping_interval=0), "hang", "HANGUP",
         "caller_hangup"),
    Kind("reset", Scenario(greeting=GREETING, drop_tcp_after_s=0.3, ping_interval=0),
         "listen", "FAILED", "network_loss"),
    Kind("http500", Scenario(signed_url_status=500), "listen", "FAILED", "signed_url_failed"),
]  # fmt: skip

DIALPLAN = """
[caller]
exten => listen,1,Answer()
 same => n,Wait(30)
exten => barge,1,Answer()
 same => n,Wait(0.2)
 same => n,Playback(beep)
 same => n,Wait(30)
exten => hang,1,Answer()
 same => n,Wait(0.5)
 same => n,Hangup()

[soak]
exten => _[a-z].,1,Answer()
 same => n,ElevenLabsConvAI(${EXTEN})
 same => n,Hangup()
"""


def proc_stats(pid: int) -> dict[str, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"fds": fds, "threads": threads, "rss_kib": rss}


class Ends(threading.Thread):
    """Counts calls done (the Hangup of each agent-side channel, Local/<kind>@soak-...;2) and
    tallies the module's End events by (Agent, Status, Reason). A call whose caller hangs up
    before the application even starts (a loaded machine can take that long to run Answer())
    has a Hangup but no End event: it is counted as done, and as "before the app"."""

    CHANNEL = re.compile(r"^Local/(\w+)@soak-[0-9a-f]+;2$")

    def __init__(self, ast: Asterisk) -> None:
        super().__init__(name="soak-ami", daemon=True)
        self.ami = ast.ami(timeout=10)
        # Only these events on this connection: 10,000 calls make a lot of other AMI traffic.
        for event in ("ElevenLabsConvAIEnd", "ElevenLabsConvAIInterruption", "Hangup"):
            self.ami.action("Filter", Operation="Add", Filter=f"Event: {event}")
        self.lock = threading.Lock()
        self.count = 0
        self.ends = 0
        self.interruptions = 0
        self.outcomes: Counter[tuple[str, str, str]] = Counter()
        self.changed = threading.Condition(self.lock)
        self.stop = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(AMIError, OSError):  # Asterisk stopping at the end
            self._run()

    def _run(self) -> None:
        while not self.stop.is_set():
            for ev in self.ami.events(timeout=0.2):
                with self.changed:
                    if ev.get("Event") == "ElevenLabsConvAIEnd":
                        self.ends += 1
                        self.outcomes[(ev.get("Agent", ""), ev.get("Status", ""),
                                       ev.get("Reason", ""))] += 1  # fmt: skip
                    elif ev.get("Event") == "ElevenLabsConvAIInterruption":
                        self.interruptions += 1
                    elif ev.get("Event") == "Hangup" and self.CHANNEL.match(ev.get("Channel", "")):
                        self.count += 1
                        self.changed.notify_all()

    def wait_count(self, n: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.count >= n, timeout)


def wait_idle(ast: Asterisk, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        calls = ast.cli("elevenlabs show calls")
        if not ast.channels() and "0 active conversation" in calls:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not idle after {timeout} s: {ast.channels()}")
        time.sleep(0.2)


def settle(ast: Asterisk, pid: int, seconds: float = 3.0) -> dict[str, int]:
    """fds and threads once they stop changing (sockets in close, threads exiting)."""
    wait_idle(ast)
    last = proc_stats(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = proc_stats(pid)
        if now["fds"] == last["fds"] and now["threads"] == last["threads"]:
            return now
        last = now
    return last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--every", type=int, default=500, help="print the figures every N calls")
    ap.add_argument("--warmup", type=int, default=1000, help="RSS drift is measured from here")
    ap.add_argument("--max-drift-mb", type=float, default=5.0)
    ap.add_argument("--out", type=Path, help="write the samples and the verdict as JSON")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/convai-soak"))
    args = ap.parse_args()
    if args.calls < args.every or args.warmup > args.calls:
        ap.error("--calls must be at least --every and --warmup")

    with contextlib.ExitStack() as stack:
        sims = {k.name: stack.enter_context(Simulator(k.scenario).run_in_thread()) for k in KINDS}
        agents = {name: agent(sim) for name, sim in sims.items()}
        ast = Asterisk(
            args.workdir / "ast",
            configs={
                "extensions.conf": DIALPLAN,
                "elevenlabs.conf": elevenlabs_conf(agents, PYDIR),
            },
            extra_modules=[MODULE],
            verbose=0,
        )
        ast.write_configs()
        os.chmod(ast.etc / "elevenlabs.conf", 0o640)
        ast.start()
        stack.callback(ast.stop, 30)
        assert ast.pid is not None
        pid = ast.pid
        boot = proc_stats(pid)
        ends = Ends(ast)
        ends.start()
        ctl = stack.enter_context(ast.ami(timeout=10, events=False))

        def originate(i: int) -> None:
            kind = KINDS[i % len(KINDS)]
            r = ctl.action(
                "Originate", Channel=f"Local/{kind.name}@soak", Context="caller",
                Exten=kind.caller, Priority=1, Async="true",
            )  # fmt: skip
            if r.get("Response") != "Success":
                raise RuntimeError(f"originate failed: {r}")

        # Warm-up: one call of each kind, one at a time, then idle is what is left.
        for i in range(len(KINDS)):
            originate(i)
            if not ends.wait_count(i + 1, 60):
                raise TimeoutError("warm-up call did not end")
        idle = settle(ast, pid)
        warm_outcomes = Counter(ends.outcomes)
        print(f"boot: {boot}; idle after {len(KINDS)} warm-up calls: {idle}", flush=True)
        print(f"{'calls':>6} {'fds':>4} {'thr':>4} {'RSS MiB':>8} {'calls/s':>8}", flush=True)

        samples: list[dict[str, Any]] = []
        base = ends.count
        t0 = time.monotonic()
        started = 0

        def sample() -> None:
            for sim in sims.values():  # the simulators' own records would grow this process
                del sim.conversations[:-50]
                del sim.signed_url_requests[:-50]
            while len(samples) < (ends.count - base) // args.every:
                s = proc_stats(pid)
                s["calls"] = (len(samples) + 1) * args.every
                s["t"] = round(time.monotonic() - t0, 1)
                samples.append(s)
                rate = s["calls"] / max(s["t"], 1e-9)
                print(f"{s['calls']:>6} {s['fds']:>4} {s['threads']:>4} "
                      f"{s['rss_kib'] / 1024:>8.1f} {rate:>8.1f}", flush=True)  # fmt: skip

        while started < args.calls:
            if started - (ends.count - base) < args.concurrency:
                originate(started)
                started += 1
                continue
            if not ends.wait_count(base + started - args.concurrency + 1, 60):
                raise TimeoutError(f"no call ended for 60 s ({started} started)")
            sample()
        if not ends.wait_count(base + args.calls, 120):
            raise TimeoutError("the last calls did not end")
        sample()
        took = time.monotonic() - t0
        final = settle(ast, pid, seconds=10)
        ends.stop.set()
        outcomes = ends.outcomes - warm_outcomes
        before_app = args.calls - sum(outcomes.values())

    wrong = {
        f"{a}:{s}/{r}": n
        for (a, s, r), n in outcomes.items()
        if not any(k.name == a and (k.status, k.reason) == (s, r) for k in KINDS)
    }
    hangups = sum(n for (a, _, _), n in outcomes.items() if a == "hangup")
    if before_app > args.calls // len(KINDS) - hangups:
        wrong["calls without an End event (more than the caller hangups)"] = before_app
    at_warm = next((s for s in samples if s["calls"] >= args.warmup), samples[0])
    drift_mb = (samples[-1]["rss_kib"] - at_warm["rss_kib"]) / 1024
    checks = {
        "outcomes as scripted": not wrong,
        "fds back at idle": final["fds"] == idle["fds"],
        "threads back at idle": final["threads"] == idle["threads"],
        f"RSS drift from call {at_warm['calls']} <= {args.max_drift_mb} MB": (
            drift_mb <= args.max_drift_mb
        ),
    }
    print(f"\n{args.calls} calls in {took:.0f} s ({args.calls / took:.1f} calls/s), "
          f"{args.concurrency} at a time")  # fmt: skip
    print(f"idle {idle}; final {final}; RSS drift {drift_mb:+.2f} MB")
    print(f"caller hangups before the application started (no End event): {before_app}; "
          f"interruptions: {ends.interruptions}")  # fmt: skip
    tally = sorted(outcomes.items())
    print("outcomes: " + ", ".join(f"{a} {s}/{r} x{n}" for (a, s, r), n in tally))
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if wrong:
        print(f"  unexpected outcomes: {wrong}")
    if args.out:
        args.out.write_text(json.dumps({
            "calls": args.calls, "concurrency": args.concurrency, "seconds": round(took, 1),
            "boot": boot, "idle": idle, "final": final, "samples": samples,
            "rss_drift_mb": round(drift_mb, 2),
            "outcomes": {f"{a} {s}/{r}": n for (a, s, r), n in sorted(outcomes.items())},
            "hangups_before_the_app": before_app,
            "interruptions": ends.interruptions,
            "checks": checks,
        }, indent=1) + "\n")  # fmt: skip
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
