"""A handful of real calls through an Asterisk running under valgrind's memcheck; then the
summary of what memcheck found, split into the module's own errors and everything else.

Run by scripts/memcheck.sh inside the testbed (not a pytest module: under valgrind a call
takes seconds, and no timing means anything). The calls: a whole conversation with barge-in
that the agent ends, a caller hangup mid-audio, a TCP reset by the server, a signed-URL 500,
a DTMF keypress, and a reload while a call talks.

Exit status 0 only when memcheck reports no invalid read or write, no use of uninitialised
memory and no definitely or indirectly lost block with a frame of the module's own code
(app_elevenlabs_convai.so or its cffi extension _native) in its stack.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "python"))

from asterisk import Asterisk  # noqa: E402
from calls_util import caller_leg, wait_until  # noqa: E402
from convai_fixtures import agent, elevenlabs_conf, write_elevenlabs_conf  # noqa: E402

from convai.sim import Scenario, Simulator  # noqa: E402

OURS = re.compile(r"app_elevenlabs_convai|/_native\.|_native\.cpython")
DIALPLAN = """
[caller]
exten => listen,1,Answer()
 same => n,Wait(300)
exten => talker,1,Answer()
 same => n,Wait(2)
 same => n,Playback(hello-world)
 same => n,Wait(300)
exten => keys,1,Answer()
 same => n,Wait(2)
 same => n,SendDTMF(12#)
 same => n,Wait(300)

[test]
exten => _[a-z].,1,Set(AGENT=${EXTEN})
 same => n,Answer()
 same => n,ElevenLabsConvAI(${EXTEN})
 same => n,Hangup()
exten => h,1,Verbose(1,RESULT agent=${AGENT} status=${ELEVENLABS_STATUS} \
reason=${ELEVENLABS_END_REASON})
"""


@dataclass
class Block:
    kind: str  # the first line: "Invalid read of size 4", "16 bytes in 1 blocks are ..."
    stack: list[str] = field(default_factory=list)

    @property
    def ours(self) -> bool:
        return any(OURS.search(line) for line in self.stack)


def blocks(log: str) -> Iterator[Block]:
    """Error and leak records of a memcheck log (``==PID== `` prefixed, blank-line separated)."""
    current: Block | None = None
    for raw in log.splitlines():
        m = re.match(r"==\d+== ?(.*)$", raw)
        if not m:
            continue
        line = m.group(1)
        if not line.strip():
            if current is not None:
                yield current
            current = None
        elif current is None:
            current = Block(line.strip())
        else:
            current.stack.append(line.strip())
    if current is not None:
        yield current


def summarise(log: str) -> tuple[dict[str, str], list[Block], list[Block]]:
    """(LEAK/ERROR SUMMARY figures, every error/leak record, the module's own records)."""
    figures: dict[str, str] = {}
    for key in ("definitely lost", "indirectly lost", "possibly lost", "still reachable"):
        m = re.search(rf"{key}: ([\d,]+ bytes in [\d,]+ blocks)", log)
        figures[key] = m.group(1) if m else "0 bytes in 0 blocks"
    m = re.search(r"ERROR SUMMARY: ([\d,]+) errors from ([\d,]+) contexts", log)
    figures["errors"] = f"{m.group(1)} errors from {m.group(2)} contexts" if m else "?"
    records = [
        b
        for b in blocks(log)
        if re.match(r"(Invalid (read|write|free)|Conditional jump|Use of uninitialised|"
                    r"Syscall param|Mismatched free|Source and destination overlap|"
                    r"[\d,]+ (\(.*\) )?bytes in [\d,]+ blocks are (definitely|indirectly) lost)",
                    b.kind)
    ]  # fmt: skip
    return figures, records, [b for b in records if b.ours]


def run_calls(ast: Asterisk, sims: dict[str, Simulator], python_dir: Path) -> list[str]:
    results = []

    def call(name: str, caller: str = "listen") -> int:
        mark = ast.log_mark()
        ast.cli(f"channel originate Local/{name}@test extension {caller}@caller", timeout=60)
        return mark

    def result(name: str, mark: int) -> str:
        m = ast.wait_for_log(rf"RESULT agent={name} status=\S* reason=\S*$", 240, since=mark)
        print(f"  {m.group(0)}", flush=True)
        return m.group(0)

    def agent_chan() -> str:
        found: list[str] = []

        def look() -> bool:
            for line in ast.cli("core show channels concise", timeout=60).splitlines():
                parts = line.split("!")
                if len(parts) > 5 and parts[5] == "ElevenLabsConvAI":
                    found.append(parts[0])
                    return True
            return False

        wait_until(look, 120, "the agent's channel")
        return found[0]

    print("1. a conversation with barge-in; the agent ends it", flush=True)
    results.append(result("bargein", call("bargein", "talker")))
    print("2. the caller hangs up mid-audio", flush=True)
    mark = call("hangup")
    chan = agent_chan()
    rec = sims["hangup"]
    wait_until(
        lambda: rec.conversations and len(rec.conversations[0].sent_audio) >= 5, 120, "audio"
    )
    ast.cli(f"channel request hangup {caller_leg(chan)}", timeout=60)
    results.append(result("hangup", mark))
    print("3. the server resets the connection", flush=True)
    results.append(result("reset", call("reset")))
    print("4. the signed-URL endpoint answers 500", flush=True)
    results.append(result("http500", call("http500")))
    print("5. DTMF, and a reload while the call talks", flush=True)
    mark = call("keys", "keys")
    wait_until(lambda: sims["keys"].conversations, 120, "the conversation")
    agents = {name: agent(sim) for name, sim in sims.items()}
    write_elevenlabs_conf(ast, elevenlabs_conf(agents, python_dir))
    ast.cli("elevenlabs reload", timeout=60)
    results.append(result("keys", mark))
    ast.wait_no_channels(timeout=120)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", type=Path, required=True)
    ap.add_argument("--python-dir", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--suppressions", type=Path, nargs="*", default=[])
    args = ap.parse_args()
    logdir = args.workdir / "valgrind"
    logdir.mkdir(parents=True, exist_ok=True)
    valgrind = [
        "valgrind", "--tool=memcheck", "--leak-check=full",
        "--show-leak-kinds=definite,indirect", "--errors-for-leak-kinds=definite,indirect",
        "--track-origins=yes", "--num-callers=40", "--fair-sched=yes",
        f"--log-file={logdir}/memcheck.%p.log",
        *(f"--suppressions={s}" for s in args.suppressions),
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        sims = {
            "bargein": Scenario(greeting="Hello, this is the simulator.", end_after_turns=1),
            "hangup": Scenario(),
            "reset": Scenario(greeting="Hello, this is the simulator.", drop_tcp_after_s=2.0),
            "http500": Scenario(signed_url_status=500),
            "keys": Scenario(greeting="Hello.", end_after_turns=1),
        }
        running = {
            name: stack.enter_context(Simulator(sc).run_in_thread()) for name, sc in sims.items()
        }
        agents = {name: agent(sim) for name, sim in running.items()}
        ast = Asterisk(
            args.workdir / "ast",
            configs={
                "extensions.conf": DIALPLAN,
                "elevenlabs.conf": elevenlabs_conf(agents, args.python_dir),
            },
            extra_modules=[args.module],
            wrapper=valgrind,
            # Python's own allocator hides blocks from memcheck; plain malloc shows them. The
            # interpreter starts 20-50x slower under valgrind than its 30 s allowance assumes.
            env={"PYTHONMALLOC": "malloc", "CONVAI_PYTHON_START_MS": "600000"},
        )
        ast.write_configs()
        os.chmod(ast.etc / "elevenlabs.conf", 0o640)
        t0 = time.monotonic()
        print("booting Asterisk under memcheck ...", flush=True)
        ast.start(timeout=600)
        print(f"booted in {time.monotonic() - t0:.0f} s", flush=True)
        loaded = ast.cli("module show like app_elevenlabs_convai", timeout=60)
        if "1 modules loaded" not in loaded:
            print(f"memcheck: the module did not load:\n{ast.diagnostics()}", file=sys.stderr)
            ast.stop(timeout=600)
            return 2
        try:
            results = run_calls(ast, running, args.python_dir)
        finally:
            print("core stop gracefully ...", flush=True)
            clean = ast.stop(timeout=600)
    if not clean:
        print("memcheck: Asterisk had to be killed: no leak summary", file=sys.stderr)
        return 1
    logs = sorted(logdir.glob("memcheck.*.log"))
    log = "\n".join(p.read_text(errors="replace") for p in logs)
    figures, records, ours = summarise(log)
    print(f"\nmemcheck log: {', '.join(map(str, logs))}")
    print(f"calls: {len(results)}, took {time.monotonic() - t0:.0f} s under memcheck")
    for key, value in figures.items():
        print(f"  {key:16} {value}")
    kinds: dict[str, int] = {}
    for b in records:
        kind = re.sub(r"[\d,]+", "N", b.kind.split(" in loss record")[0])
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"  records after suppressions: {len(records)} {kinds}")
    print(f"  the module's own (a frame in app_elevenlabs_convai.so or _native): {len(ours)}")
    for b in ours:
        print(f"\n{b.kind}\n  " + "\n  ".join(b.stack[:25]))
    expected = {"bargein": "COMPLETED", "hangup": "HANGUP", "reset": "FAILED"}
    bad = [r for r in results for a, s in expected.items() if f"agent={a} " in r and s not in r]
    if bad:
        print(f"unexpected call results: {bad}", file=sys.stderr)
    return 1 if ours or bad else 0


if __name__ == "__main__":
    sys.exit(main())
