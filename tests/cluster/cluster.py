"""The scale-out topology on one machine: Kamailio (deploy/kamailio/kamailio.cfg, unchanged) in
front of N Asterisk nodes that run the module, each a separate SIP host on its own loopback
address, against the ConvAI simulator; sipp callers on one more address.

    127.0.0.10        Kamailio (dispatcher): SIP signalling only
    127.0.0.11..1N    Asterisk nodes: SIP (chan_pjsip) and RTP bound there, AMI too
    127.0.0.20        sipp callers (SIP and RTP)
    127.0.0.30        the simulator (stands in for ElevenLabs: HTTPS + WebSocket)

Ports are picked free on each address, so two runs never collide. The nodes use
deploy/kamailio/asterisk/{pjsip,extensions}.conf as they are; the per-node transport file
(pjsip_node.conf) and dispatcher.list are generated for the ports.

    with Cluster(tmp_path, module, python_dir) as c:
        run = c.calls(30, rate=10, duration_ms=6000)
        run.wait()

From a shell, in the testbed (after scripts/build.sh): ``python3 tests/cluster/cluster.py up``
sets the topology up, prints where everything is, and tears it down on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "python"))

from asterisk import Asterisk, free_port  # noqa: E402
from convai_fixtures import agent, elevenlabs_conf  # noqa: E402

from convai.sim import Scenario, Simulator  # noqa: E402

DEPLOY = REPO / "deploy" / "kamailio"
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"

PROXY_IP = "127.0.0.10"
CALLER_IP = "127.0.0.20"
SIM_IP = "127.0.0.30"
AGENT = "support"  # the agent deploy/kamailio/asterisk/extensions.conf calls
EXTEN = "100"


def node_ip(i: int) -> str:
    return f"127.0.0.{10 + i}"


# --- Kamailio -------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    ast: Asterisk
    history: str = ""  # messages.log of its earlier runs (start() truncates the log)

    def log_text(self) -> str:
        return self.history + self.ast.log_text()

    @property
    def uri(self) -> str:
        return f"sip:{self.ast.bind_ip}:{self.ast.sip_port}"


class Kamailio:
    """One Kamailio with the reference config; its stderr log is read on a thread and every
    line stamped with its arrival time (Kamailio's own stderr lines carry none)."""

    def __init__(self, base: Path, nodes: list[Node], maxload: int = 200) -> None:
        self.base = base
        self.ip = PROXY_IP
        self.port = free_port(udp=True, host=PROXY_IP)
        self.cfg = DEPLOY / "kamailio.cfg"
        self.list_file = base / "dispatcher.list"
        self.ctl = base / "kamailio_ctl"
        self.log_path = base / "kamailio.log"
        self.nodes = nodes
        self.maxload = maxload
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def write_list(self) -> None:
        self.list_file.write_text(
            "".join(f"1 {n.uri} 8 0 duid={n.name};maxload={self.maxload}\n" for n in self.nodes)
        )

    def start(self, timeout: float = 20.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.write_list()
        cmd = [
            KAMAILIO, "-f", str(self.cfg), "-DD", "-E", "-m", "64", "-M", "8",
            "-Y", str(self.base), "-w", str(self.base), "-P", str(self.base / "kamailio.pid"),
            "-A", f'PROXY_IP="{self.ip}"', "-A", f"PROXY_PORT={self.port}",
            "-A", f'DISPATCHER_LIST="{self.list_file}"', "-A", f'CTL_SOCKET="unix:{self.ctl}"',
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            cwd=self.base,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="kamailio-log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                if "kamailio" in self.rpc("core.version").lower():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"kamailio not up after {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with open(self.log_path, "a") as out:
            for line in self.proc.stderr:
                t = time.time()
                with self._lock:
                    self.lines.append((t, line.rstrip("\n")))
                out.write(f"{t:.3f} {line}")
                out.flush()

    def log(self, since: float = 0.0) -> str:
        with self._lock:
            return "\n".join(f"{t:.3f} {s}" for t, s in self.lines if t >= since)

    def matching(self, regex: str, since: float = 0.0) -> list[tuple[float, re.Match[str]]]:
        """(arrival time, match) of every log line matching ``regex``."""
        rx = re.compile(regex)
        with self._lock:
            lines = list(self.lines)
        return [(t, m) for t, s in lines if t >= since and (m := rx.search(s))]

    def rpc(self, *args: str, timeout: float = 5.0) -> str:
        r = subprocess.run(
            [KAMCMD, "-s", f"unix:{self.ctl}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(args)}: {(r.stdout + r.stderr).strip()}")
        return r.stdout

    def states(self) -> dict[str, str]:
        """Each node's dispatcher flags (``kamcmd dispatcher.list``): 'AP' active and probing,
        'IP' inactive, 'TP' trying (one failed probe), 'DX' disabled by the operator..."""
        out = self.rpc("dispatcher.list")
        return dict(re.findall(r"URI:\s*(\S+)\s+FLAGS:\s*(\S+)", out))

    def wait_state(self, uri: str, active: bool, timeout: float) -> float:
        """Wait until the node is (in)active in the dispatcher; time.time() when seen."""
        deadline = time.monotonic() + timeout
        while True:
            flags = self.states().get(uri, "")
            if flags.startswith("A") == active and flags[:1] in "AI":
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{uri} not {'active' if active else 'inactive'}: {flags}")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """Every process of this Kamailio (the main one and its forked workers)."""
        assert self.proc is not None
        pgid, found = self.proc.pid, []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                found.append(int(d))
        return found

    def cpu_ns(self) -> int:
        """CPU time used so far by all Kamailio processes, in ns (/proc/PID/schedstat, whose
        first field is the time spent on a CPU: exact, unlike the 10 ms ticks of stat)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        return total

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)


# --- sipp callers ---------------------------------------------------------------------------

# A caller that says something, stays on the line for a fixed time, then hangs up. ACK and BYE
# carry the route set Kamailio recorded ([routes]), so they go through it to the node.
_UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="cluster-caller">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: caller <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:caller@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
      a=sendrecv

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true" rrs="true">
    <action>
      <ereg regexp="c=IN IP4 ([0-9.]+)" search_in="body" check_it="true" assign_to="c,media"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: caller <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: sip:caller@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <nop>
    <action><log message="[timestamp] answered [call_id] [$media] ([$c])"/>{stream}</action>
  </nop>
{middle}  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: caller <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: {bye_cseq} BYE
      Contact: sip:caller@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
  <nop><action><log message="[timestamp] completed [call_id]"/></action></nop>
</scenario>
"""


# A re-INVITE in the middle of the call (same SDP, new version), through the recorded route:
# it must reach the node that holds the call, and be answered.
_REINVITE = """  <send retrans="500">
    <![CDATA[
      INVITE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: caller <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 INVITE
      Contact: sip:caller@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687638 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
      a=sendrecv

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: caller <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Contact: sip:caller@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <nop><action><log message="[timestamp] reinvited [call_id]"/></action></nop>
"""


@dataclass
class SippRun:
    """One sipp process placing calls through Kamailio; ``wait()`` then read the results."""

    proc: subprocess.Popen[str]
    workdir: Path
    started: float
    returncode: int | None = None
    output: str = ""
    answered: dict[str, float] = field(default_factory=dict)  # Call-ID -> time.time()
    reinvited: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)
    media: dict[str, str] = field(default_factory=dict)  # Call-ID -> the answer's SDP c= address

    def wait(self, timeout: float = 120.0) -> SippRun:
        out, _ = self.proc.communicate(timeout=timeout)
        self.returncode, self.output = self.proc.returncode, out
        for path in self.workdir.glob("*_logs.log"):
            for line in path.read_text(errors="replace").splitlines():
                m = re.search(r"(\d+\.\d+) (answered|reinvited|completed) (\S+)(?: (\S+))?", line)
                if m:
                    getattr(self, m.group(2))[m.group(3)] = float(m.group(1))
                    if m.group(4):
                        self.media[m.group(3)] = m.group(4)
        return self

    @property
    def failed(self) -> set[str]:
        """Calls that were answered but did not end with a 200 to their BYE."""
        return set(self.answered) - set(self.completed)

    def stat(self, name: str) -> int:
        """A counter of sipp's final statistics screen, e.g. 'Successful call', 'Failed call'."""
        m = re.findall(rf"{name}\s+\|\s+\d+\s+\|\s+(\d+)", self.output)
        return int(m[-1]) if m else -1


# --- the topology ---------------------------------------------------------------------------


class Cluster:
    """The simulator, N nodes and Kamailio, set up on ``start()`` / ``__enter__`` and torn
    down (nodes ``core stop gracefully``, Kamailio SIGTERM) on ``stop()`` / ``__exit__``."""

    def __init__(
        self,
        base: str | os.PathLike[str],
        module: Path,
        python_dir: Path,
        nodes: int = 3,
        scenario: Scenario | None = None,
    ) -> None:
        self.base = Path(base).resolve()
        self.module, self.python_dir = module, python_dir
        self.scenario = scenario or Scenario(
            greeting="Hello, you are through to the cluster.",
            replies=["I heard you."],
            end_keyword=None,
        )
        self.n = nodes
        self.sim: Simulator | None = None
        self.nodes: list[Node] = []
        self.kamailio: Kamailio | None = None
        self._stack = ExitStack()
        self.caller_audio: Path | None = None

    # --- set up / tear down -----------------------------------------------------------------

    def start(self) -> Cluster:
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            self.sim = self._stack.enter_context(
                Simulator(self.scenario, host=SIM_IP).run_in_thread()
            )
            for i in range(1, self.n + 1):
                self.nodes.append(self._node(i))
            threads = [threading.Thread(target=n.ast.start) for n in self.nodes]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for n in self.nodes:
                if not n.ast.is_running():
                    raise RuntimeError(f"{n.name} did not start:\n{n.ast.diagnostics()}")
            self.kamailio = Kamailio(self.base / "kamailio", self.nodes)
            self.kamailio.start()
            for n in self.nodes:
                self.kamailio.wait_state(n.uri, active=True, timeout=15)
            self.caller_audio = self._caller_audio()
        except BaseException:
            self.stop()
            raise
        return self

    def _node(self, i: int) -> Node:
        name = f"node{i}"
        ip = node_ip(i)
        assert self.sim is not None

        def transport(ast: Asterisk) -> str:
            return (
                "[transport-node]\ntype = transport\nprotocol = udp\n"
                f"bind = {ast.bind_ip}:{ast.sip_port}\n"
            )

        pjsip = (DEPLOY / "asterisk" / "pjsip.conf").read_text()
        pjsip = pjsip.replace("match = 127.0.0.10", f"match = {PROXY_IP}")
        ast = Asterisk(
            self.base / name,
            configs={
                "pjsip.conf": pjsip,
                "pjsip_node.conf": transport,
                "extensions.conf": (DEPLOY / "asterisk" / "extensions.conf").read_text(),
                "elevenlabs.conf": self.elevenlabs_conf(),
            },
            extra_modules=[self.module],
            bind_ip=ip,
        )
        ast.name = name  # asterisk.conf systemname: ${SYSTEMNAME} in the dialplan
        ast.write_configs()
        os.chmod(ast.etc / "elevenlabs.conf", 0o640)
        return Node(name, ast)

    def elevenlabs_conf(self, **keys: str) -> str:
        """The one elevenlabs.conf every node gets (``keys`` add to the agent's section)."""
        assert self.sim is not None
        return elevenlabs_conf({AGENT: agent(self.sim, **keys)}, self.python_dir)

    def _caller_audio(self) -> Path:
        """What the callers say: Asterisk's hello-world prompt as raw μ-law."""
        out = self.base / "hello-world.ulaw"
        subprocess.run(
            ["sox", "/usr/share/asterisk/sounds/en/hello-world.wav", "-t", "ul", "-r", "8000",
             "-c", "1", str(out)],
            check=True,
        )  # fmt: skip
        return out

    def stop(self) -> None:
        if self.kamailio is not None:
            self.kamailio.stop()
        for n in self.nodes:
            n.ast.stop(timeout=10)
        self._stack.close()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- calls ------------------------------------------------------------------------------

    def caller_scenario(
        self, path: Path, duration_ms: int, reinvite_at_ms: int | None = None
    ) -> Path:
        """The sipp scenario of a caller that says hello-world and hangs up after
        ``duration_ms`` (sending a re-INVITE at ``reinvite_at_ms``); ACK, re-INVITE and BYE
        follow the recorded route (through Kamailio)."""
        assert self.caller_audio is not None
        stream = f'<exec rtp_stream="{self.caller_audio},1,0"/>'
        if reinvite_at_ms is None:
            middle, bye_cseq = f'  <pause milliseconds="{duration_ms}"/>\n', "2"
        else:
            middle = (
                f'  <pause milliseconds="{reinvite_at_ms}"/>\n{_REINVITE}'
                f'  <pause milliseconds="{duration_ms - reinvite_at_ms}"/>\n'
            )
            bye_cseq = "3"
        xml = _UAC.replace("{stream}", stream).replace("{middle}", middle)
        path.write_text(xml.replace("{bye_cseq}", bye_cseq))
        return path

    def calls(
        self,
        count: int,
        rate: float,
        duration_ms: int,
        name: str = "calls",
        timeout: float = 120.0,
        reinvite_at_ms: int | None = None,
    ) -> SippRun:
        """Start sipp placing ``count`` calls at ``rate`` per second through Kamailio, each
        hanging up after ``duration_ms``. Returns at once; ``.wait()`` for the results."""
        assert self.kamailio is not None and self.caller_audio is not None
        workdir = self.base / f"sipp-{name}"
        workdir.mkdir(parents=True, exist_ok=True)
        scenario = self.caller_scenario(workdir / "caller.xml", duration_ms, reinvite_at_ms)
        cmd = [
            SIPP, f"{self.kamailio.ip}:{self.kamailio.port}",
            "-sf", str(scenario), "-s", EXTEN,
            "-i", CALLER_IP, "-p", str(free_port(udp=True, host=CALLER_IP)),
            "-mi", CALLER_IP, "-min_rtp_port", "30000", "-max_rtp_port", "39998",
            "-m", str(count), "-r", f"{rate:g}", "-l", str(count),
            "-trace_logs", "-nostdin", "-skip_rlimit",
            "-timeout", f"{int(timeout)}s", "-timeout_error",
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            cwd=workdir,
        )
        return SippRun(proc, workdir, time.time())

    # --- what the nodes saw -----------------------------------------------------------------

    def node_calls(
        self, node: Node, what: str = "end", this_run: bool = False
    ) -> dict[str, dict[str, str]]:
        """The dialplan's ``CALL start|end`` lines of a node, by Call-ID (``this_run``: of its
        current Asterisk process only)."""
        rx = re.compile(rf"app_verbose\.c: CALL {what} node=(\S+) callid=(\S+)(.*)$")
        found: dict[str, dict[str, str]] = {}
        text = node.ast.log_text() if this_run else node.log_text()
        for line in text.splitlines():
            m = rx.search(line)
            if m:
                fields = dict(kv.split("=", 1) for kv in m.group(3).split() if "=" in kv)
                found[m.group(2)] = {"node": m.group(1), "line": line, **fields}
        return found

    def live_calls(self, node: Node) -> set[str]:
        """Call-IDs the node's Asterisk has started and not ended (from its dialplan's log
        lines; calls a killed process held are not live in the next one)."""
        return set(self.node_calls(node, "start", this_run=True)) - set(
            self.node_calls(node, "end", this_run=True)
        )

    def node_of(self, uri: str) -> Node:
        return next(n for n in self.nodes if n.uri == uri)

    # --- failures and maintenance -----------------------------------------------------------

    def kill(self, node: Node) -> float:
        """SIGKILL the node's Asterisk (a crash, a power cut); returns time.time() of it."""
        proc = node.ast.proc
        assert proc is not None and proc.poll() is None
        t = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return t

    def restart(self, node: Node) -> float:
        """Start the node's Asterisk again (same configs); time.time() when fully booted."""
        node.history += node.ast.log_text()
        node.ast.start()
        return time.time()

    def ensure_all_up(self, timeout: float = 30.0) -> None:
        """Every node running and active in the dispatcher (after a test that failed)."""
        assert self.kamailio is not None
        for n in self.nodes:
            if not n.ast.is_running():
                self.restart(n)
            if self.kamailio.states().get(n.uri, "").startswith("D"):
                self.kamailio.rpc("dispatcher.set_state", "ap", "1", n.uri)
        for n in self.nodes:
            self.kamailio.wait_state(n.uri, active=True, timeout=timeout)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


# --- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=["up"], help="set the topology up; Ctrl-C tears it down")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--dir", default="/tmp/convai-cluster")
    p.add_argument(
        "--module",
        default=os.environ.get("CONVAI_MODULE", "/var/tmp/convai-build/app_elevenlabs_convai.so"),
    )
    p.add_argument(
        "--python-dir", default=os.environ.get("CONVAI_PYTHON_DIR", "/var/tmp/convai-stage/python")
    )
    args = p.parse_args(argv)
    shutil.rmtree(args.dir, ignore_errors=True)
    with Cluster(args.dir, Path(args.module), Path(args.python_dir), nodes=args.nodes) as c:
        assert c.kamailio is not None and c.sim is not None
        k = c.kamailio
        print(f"kamailio   sip:{k.ip}:{k.port}  (kamcmd -s unix:{k.ctl} dispatcher.list)")
        for n in c.nodes:
            print(f"{n.name:10} {n.uri}  (asterisk -C {n.ast.conf} -r)")
        print(f"simulator  {c.sim.signed_url_endpoint}")
        caller = c.caller_scenario(Path(args.dir) / "caller.xml", 10000)
        print(
            f"calls:     sipp {k.ip}:{k.port} -sf {caller} -s {EXTEN} -i {CALLER_IP}"
            f" -mi {CALLER_IP} -m 10 -r 2 -trace_logs"
        )
        print("Ctrl-C tears it down", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
