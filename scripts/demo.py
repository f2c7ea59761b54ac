"""The main job: one real call through Asterisk to the built-in ConvAI simulator.

Runs inside the testbed (scripts/demo.sh puts it there). A throw-away Asterisk loads the freshly
built module; a Local channel connects a scripted caller, who speaks with Asterisk's own
recorded prompts, to ElevenLabsConvAI(); the agent is the project's simulator, answering with
synthesised speech over the real protocol. The conversation is printed as it happens and the
call, both sides mixed, is recorded to out/demo-call.wav.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests" / "integration")]

from asterisk import Asterisk  # noqa: E402

from convai.sim import Scenario, Simulator  # noqa: E402

MODULE = os.environ.get("CONVAI_MODULE", "/var/tmp/convai-build/app_elevenlabs_convai.so")
PYDIR = os.environ.get("CONVAI_PYTHON_DIR", "/var/tmp/convai-stage/python")

# The caller: listens to the greeting, asks, interrupts the answer, then says goodbye.
CALLER = """
exten => caller,1,Answer()
 same => n,Wait(6)
 same => n,Playback(hello-world)
 same => n,Wait(2.5)
 same => n,Playback(tt-weasels)
 same => n,Wait(7)
 same => n,Playback(vm-goodbye)
 same => n,Wait(15)
 same => n,Hangup()
"""

AGENT = """
exten => agent,1,Answer()
 same => n,Set(CALLERID(num)=+14155550123)
 same => n,MixMonitor({wav})
 same => n,ElevenLabsConvAI(demo)
 same => n,Hangup()
"""

T0 = time.monotonic()


def say(who: str, text: str) -> None:
    print(f"{time.monotonic() - T0:7.2f}s  {who:<9} {text}", flush=True)


class SimPrinter(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("conv_"):  # drop the conversation id and the sim's own clock
            text = text.split(maxsplit=2)[-1]
        say("agent", text)


def follow_log(ast: Asterisk, stop: threading.Event) -> None:
    """Print the module's own log lines as Asterisk writes them."""
    pos = 0
    while not stop.is_set():
        text = ast.log_text()
        for line in text[pos:].splitlines():
            if "elevenlabs:" in line:
                say("asterisk", line.split("] ", 2)[-1][:160])
        pos = len(text)
        stop.wait(0.2)


def host_path(path: Path) -> Path:
    """The path as the user sees it: the testbed mounts the repository at /src, and testbed.sh
    tells where it is on the host (CONVAI_HOST_REPO)."""
    host = os.environ.get("CONVAI_HOST_REPO")
    if host and path.resolve().is_relative_to(ROOT):
        return Path(host) / path.resolve().relative_to(ROOT)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "out" / "demo-call.wav"))
    ap.add_argument("--format", default="ulaw_8000", choices=["ulaw_8000", "pcm_8000", "pcm_16000"])
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="convai-demo-"))
    wav = work / ("call.wav16" if args.format == "pcm_16000" else "call.wav")

    sim_log = logging.getLogger("convai.sim")
    sim_log.addHandler(SimPrinter())
    sim_log.setLevel(logging.INFO)
    sim_log.propagate = False
    scenario = Scenario(input_format=args.format, output_format=args.format, end_after_turns=3)
    with Simulator(scenario).run_in_thread() as sim:
        conf = {
            "extensions.conf": "[demo]\n" + CALLER + AGENT.format(wav=wav),
            "elevenlabs.conf": (
                f"[general]\ndebug = no\npython_path = {PYDIR}\n\n[demo]\n"
                "elevenlabs_api_key = sk-demo-not-a-real-key-0000\n"
                f"elevenlabs_get_signed_url_endpoint = {sim.signed_url_endpoint}\n"
                "elevenlabs_agent_id = agent_demo\nelevenlabs_send_caller_number = yes\n"
                "elevenlabs_audio_frames_buffer_ms = 100\n"
            ),
        }
        ast = Asterisk(
            work / "asterisk",
            configs=conf,
            extra_modules=[MODULE],
            more_modules=["app_mixmonitor", "format_wav"],
            options="highpriority = yes\n",  # as Debian's asterisk.service runs it (-p)
        )
        # The API key is in it: 0640, as the module asks (it warns about a world-readable file).
        ast.write_configs()
        os.chmod(ast.etc / "elevenlabs.conf", 0o640)
        boot = ast.start()
        say(
            "asterisk",
            f"booted in {boot:.1f} s; {ast.cli('module show like elevenlabs').splitlines()[1]}",
        )
        stop = threading.Event()
        follower = threading.Thread(target=follow_log, args=(ast, stop), daemon=True)
        follower.start()
        try:
            with ast.ami() as ami:
                ast.cli("channel originate Local/agent@demo extension caller@demo")
                say(
                    "caller",
                    "dialled the agent (Local/agent@demo); the caller speaks Asterisk prompts",
                )
                stats = {}
                for ev in ami.events(timeout=90):
                    name = ev.get("Event", "")
                    if name == "ElevenLabsConvAIStats":
                        stats = ev
                    elif name.startswith("ElevenLabsConvAI"):
                        fields = {
                            k: v
                            for k, v in ev.items()
                            if k
                            in (
                                "ConversationID",
                                "EventID",
                                "Status",
                                "Reason",
                                "Duration",
                                "InputFormat",
                                "OutputFormat",
                                "ToolName",
                            )
                        }
                        say("ami", f"{name} {fields}")
                    if name == "ElevenLabsConvAIEnd":
                        break
            ast.wait_no_channels(timeout=20)
        finally:
            stop.set()
            follower.join()
            ast.stop()
    if not wav.exists():
        print("no recording was written", file=sys.stderr)
        return 1
    shutil.copyfile(wav, out)
    with wave.open(str(out)) as w:
        seconds = w.getnframes() / w.getframerate()
    print()
    if stats:
        print(
            f"playout: p50 {stats.get('PlayoutP50Us')} µs, p99 {stats.get('PlayoutP99Us')} µs "
            f"deviation from 20 ms; first frame p99 {stats.get('FirstFrameP99Us')} µs; "
            f"barge-in p99 {stats.get('BargeInP99Us')} µs; underruns {stats.get('Underruns')}"
        )
    print(f"recording (both sides): {host_path(out)} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
