"""Throw-away Asterisk instances for the integration tests (standard library only).

Modelled on the Asterisk testsuite's ``lib/python/asterisk/asterisk.py`` without Twisted: each
instance gets its own tree (every directory of ``asterisk.conf`` under a base dir, except the
system's data dir for sounds and docs), a module dir of symlinks to every system module plus any
extra module files, ``modules.conf`` with ``autoload=no`` and explicit loads, free ports for AMI,
SIP and RTP, and log files the tests read. It is driven through ``asterisk -rx`` and AMI.

    ast = Asterisk(tmp_path / "ast1", configs={"extensions.conf": "..."})
    ast.start()
    ast.cli("core show version")
    with ast.ami() as ami:
        ami.action("Ping")
    ast.stop()
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

ASTERISK = shutil.which("asterisk") or "/usr/sbin/asterisk"


def system_datadir() -> str:
    """The installed Asterisk's data dir (sounds, XML docs): Debian's /usr/share/asterisk, or a
    source install's /var/lib/asterisk (``CONVAI_ASTERISK_DATADIR`` overrides)."""
    env = os.environ.get("CONVAI_ASTERISK_DATADIR")
    if env:
        return env
    for cand in ("/usr/share/asterisk", "/var/lib/asterisk"):
        if os.path.isfile(os.path.join(cand, "documentation", "core-en_US.xml")):
            return cand
    return "/usr/share/asterisk"


SYSTEM_DATADIR = system_datadir()


def system_moddir() -> Path:
    """The system's Asterisk module directory (``CONVAI_ASTERISK_MODDIR`` overrides)."""
    env = os.environ.get("CONVAI_ASTERISK_MODDIR")
    if env:
        return Path(env)
    for pattern in ("/usr/lib/*-linux-gnu*/asterisk/modules", "/usr/lib*/asterisk/modules"):
        for cand in sorted(glob.glob(pattern)):
            if glob.glob(os.path.join(cand, "*.so")):
                return Path(cand)
    return Path("/usr/lib/x86_64-linux-gnu/asterisk/modules")


# What a test usually needs: dialplan, the common apps and functions, audio formats and codecs,
# a timing source, `channel originate`, and PJSIP with everything chan_pjsip requires
# (chan_pjsip -> res_pjsip, res_pjsip_session, res_pjsip_pubsub; res_pjsip -> res_pjproject and
# the sorcery backends; media needs res_pjsip_sdp_rtp and res_rtp_asterisk). Local channels are
# built into the core. Order does not matter: Asterisk resolves `.requires` itself.
PJSIP_MODULES = [
    "res_pjproject",
    "res_sorcery_config",
    "res_sorcery_memory",
    "res_sorcery_astdb",
    "res_pjsip",
    "res_pjsip_session",
    "res_pjsip_pubsub",
    "res_pjsip_sdp_rtp",
    "res_pjsip_endpoint_identifier_ip",
    "res_pjsip_authenticator_digest",
    "res_pjsip_caller_id",
    "res_pjsip_dtmf_info",
    "res_pjsip_logger",
    "res_rtp_asterisk",
    "chan_pjsip",
]
DEFAULT_MODULES = [
    "pbx_config",
    "app_echo",
    "app_playback",
    "app_record",
    "app_mixmonitor",
    "app_senddtmf",
    "app_verbose",
    "app_stack",
    "app_exec",
    "app_dial",
    "app_userevent",
    "app_waitforsilence",
    "func_channel",
    "func_callerid",
    "func_strings",
    "func_logic",
    "format_wav",
    "format_pcm",
    "format_gsm",
    "format_sln",
    "codec_ulaw",
    "codec_alaw",
    "codec_a_mu",
    "codec_gsm",
    "codec_g722",
    "codec_resample",
    "bridge_simple",
    "res_timing_timerfd",
    "res_clioriginate",
    # What Asterisk 20 requires for two of the above (app_mixmonitor: func_periodic_hook, which
    # requires app_chanspy, func_cut, func_groupcount and func_uri; app_stack: res_agi, which
    # requires res_speech).
    "func_periodic_hook",
    "app_chanspy",
    "func_cut",
    "func_groupcount",
    "func_uri",
    "res_agi",
    "res_speech",
]
# A source-built Asterisk without pjproject (the bookworm-ast20 and trixie-ast23 testbed flavours)
# has no PJSIP: instances there start without it, and a test that needs SIP fails (it is marked
# `sip`, which those flavours deselect).
HAVE_PJSIP = (system_moddir() / "chan_pjsip.so").is_file()
# The testbed flavour (testbed/testbed.sh sets CONVAI_FLAVOUR): its Asterisk major, and whether
# it has PJSIP.
FLAVOUR = os.environ.get("CONVAI_FLAVOUR", "sid")
FLAVOUR_EXPECTS = {
    "sid": ("22", True),
    "bookworm-ast20": ("20", False),
    "trixie-ast23": ("23", False),
}
if HAVE_PJSIP:
    DEFAULT_MODULES += PJSIP_MODULES

DEFAULT_EXTENSIONS = """\
[general]
static = yes
writeprotect = yes

[test]
exten => echo,1,Answer()
 same => n,Echo()
 same => n,Hangup()
exten => playback,1,Answer()
 same => n,Playback(demo-congrats)
 same => n,Hangup()
"""

STUB_CONFIGS = {
    "cdr.conf": "[general]\nenable = no\n",
    "cel.conf": "[general]\nenable = no\n",
    "ccss.conf": "[general]\ncc_max_requests = 20\n",
    "features.conf": "[general]\n",
    "acl.conf": "",
    "udptl.conf": "[general]\nudptlstart = 4000\nudptlend = 4999\n",
    "stasis.conf": "[threadpool]\ninitial_size = 5\nidle_timeout_sec = 20\nmax_size = 50\n",
    "pjproject.conf": "[startup]\nlog_level = 0\n",
    "musiconhold.conf": "[general]\n",
    "codecs.conf": "[plc]\ngenericplc = yes\n",
}

ConfigValue = str | Callable[["Asterisk"], str]

_reserved: set[int] = set()
_reserved_lock = threading.Lock()


def _bindable(port: int, kind: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(udp: bool = True, tcp: bool = False, host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free for the given protocols and not handed out before."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if udp and tcp and not _bindable(port, socket.SOCK_STREAM, host):
            continue
        with _reserved_lock:
            if port in _reserved:
                continue
            _reserved.add(port)
        return port
    raise RuntimeError("no free port")


def free_port_range(
    count: int, lo: int = 20000, hi: int = 60000, host: str = "127.0.0.1"
) -> tuple[int, int]:
    """An even-aligned range of ``count`` UDP ports on ``host``, all free now and not handed
    out before."""
    for _ in range(500):
        start = random.randrange(lo, hi - count) & ~1
        ports = range(start, start + count)
        with _reserved_lock:
            if any(p in _reserved for p in ports):
                continue
            if all(_bindable(p, socket.SOCK_DGRAM, host) for p in ports):
                _reserved.update(ports)
                return start, start + count - 1
    raise RuntimeError("no free port range")


def sanitizer_env() -> dict[str, str]:
    """The environment of an Asterisk that loads a sanitizer build of a module
    (scripts/sanitize.sh): ``CONVAI_ASAN_RUNTIME`` is preloaded (ASan must come first) and the
    reports go to files under ``CONVAI_SANITIZER_LOGS``, which the script checks afterwards.
    Only the daemon gets this, not the ``asterisk -rx`` clients."""
    runtime = os.environ.get("CONVAI_ASAN_RUNTIME")
    logs = os.environ.get("CONVAI_SANITIZER_LOGS")
    if not runtime or not logs:
        return {}
    return {
        "LD_PRELOAD": runtime,
        # Leaks are valgrind's job (scripts/memcheck.sh): at exit LSan would list CPython's and
        # Asterisk's deliberate never-freed globals, and no suppression can tell ours apart
        # (every stack of ours has Asterisk frames).
        "ASAN_OPTIONS": f"detect_leaks=0:halt_on_error=1:log_path={logs}/asan:"
        "detect_stack_use_after_return=0:handle_abort=1",
        "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=0:log_path={logs}/ubsan",
    }


class AsteriskError(RuntimeError):
    pass


def pjsip_conf(
    sip_port: int,
    allow: str | Iterable[str] = "ulaw",
    context: str = "test",
    endpoint: str = "sipp",
    extra: str = "",
    bind_ip: str = "127.0.0.1",
) -> str:
    """A pjsip.conf: udp transport on bind_ip:sip_port (RTP binds there too) and an endpoint
    matched by IP (127.0.0.1)."""
    codecs = allow if isinstance(allow, str) else ",".join(allow)
    return f"""\
[transport-udp]
type = transport
protocol = udp
bind = {bind_ip}:{sip_port}

[{endpoint}]
type = endpoint
transport = transport-udp
context = {context}
disallow = all
allow = {codecs}
direct_media = no
rtp_symmetric = yes
force_rport = yes
rewrite_contact = yes
dtmf_mode = rfc4733
aors = {endpoint}

[{endpoint}]
type = aor
max_contacts = 10
contact = sip:{endpoint}@127.0.0.1

[{endpoint}-identify]
type = identify
endpoint = {endpoint}
match = 127.0.0.1
{extra}"""


class Asterisk:
    """One throw-away Asterisk. Nothing is written until ``start()``."""

    _counter = itertools.count(1)

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        configs: Mapping[str, ConfigValue] | None = None,
        modules: Iterable[str] | None = None,
        extra_modules: Iterable[str | os.PathLike[str]] = (),
        more_modules: Iterable[str] = (),
        debug: int = 0,
        verbose: int = 3,
        sip_allow: str | Iterable[str] = "ulaw",
        env: Mapping[str, str] | None = None,
        options: str = "",
        bind_ip: str = "127.0.0.1",
        wrapper: Iterable[str] = (),
    ) -> None:
        """
        base_dir: an empty (or absent) directory the instance owns.
        configs: extra config files, name -> text (or a callable taking this instance, for
            text that needs the ports). They override the generated ones of the same name.
        modules: the modules to load (names without .so); default DEFAULT_MODULES. Modules from
            extra_modules are always loaded too.
        extra_modules: paths of module files added to the module dir (e.g. our freshly built
            app_elevenlabs_convai.so); a same-named system module is replaced.
        more_modules: loaded in addition to ``modules``.
        debug: core debug level (asterisk.conf [options] debug); debug lines go to full.log.
        sip_allow: codecs of the default pjsip.conf endpoint.
        env: extra environment for the asterisk process.
        options: extra lines for asterisk.conf [options].
        bind_ip: the loopback address the instance is a host of: its SIP transport (and so its
            RTP: chan_pjsip binds RTP to the transport's address) and AMI bind there, and its
            ports are chosen free on it (tests/cluster runs several nodes on 127.0.0.x).
        wrapper: a command the daemon runs under (scripts/memcheck.sh: valgrind ...).
        """
        self.base = Path(base_dir).resolve()
        self.name = f"ast{next(self._counter)}"
        self.configs: dict[str, ConfigValue] = dict(configs or {})
        self.extra_modules = [Path(p).resolve() for p in extra_modules]
        mods = list(DEFAULT_MODULES if modules is None else modules)
        mods += [m for m in more_modules if m not in mods]
        mods += [p.stem for p in self.extra_modules if p.stem not in mods]
        self.modules = [m.removesuffix(".so") for m in mods]
        self.debug = debug
        self.verbose = verbose
        self.sip_allow = sip_allow
        self.env = dict(env or {})
        self.options = options
        self.bind_ip = bind_ip
        self.wrapper = list(wrapper)

        self.ami_port = free_port(udp=False, tcp=True, host=bind_ip)
        self.sip_port = free_port(udp=True, tcp=True, host=bind_ip)
        self.rtp_start, self.rtp_end = free_port_range(100, host=bind_ip)
        self.ami_user, self.ami_secret = "test", "test"

        self.etc = self.base / "etc"
        self.conf = self.etc / "asterisk.conf"
        self.moddir = self.base / "modules"
        self.logdir = self.base / "log"
        self.rundir = self.base / "run"
        self.messages_log = self.logdir / "messages.log"
        self.full_log = self.logdir / "full.log"
        self.console_log = self.base / "asterisk.out"

        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.killed = False
        self.exit_code: int | None = None
        self._console: object | None = None

    # --- configuration ------------------------------------------------------------------------

    def pjsip_conf(self, allow: str | Iterable[str] | None = None, extra: str = "") -> str:
        codecs = self.sip_allow if allow is None else allow
        return pjsip_conf(self.sip_port, codecs, extra=extra, bind_ip=self.bind_ip)

    def _generated(self) -> dict[str, str]:
        b = self.base
        dirs = {
            "astetcdir": self.etc,
            "astmoddir": self.moddir,
            "astvarlibdir": b / "lib",
            "astdbdir": b / "lib",
            "astkeydir": b / "keys",
            "astspooldir": b / "spool",
            "astrundir": self.rundir,
            "astlogdir": self.logdir,
            "astcachedir": b / "cache",
            "astdatadir": Path(SYSTEM_DATADIR),
            "astagidir": Path(SYSTEM_DATADIR) / "agi-bin",
            "astsbindir": Path(ASTERISK).parent,
        }
        asterisk_conf = "[directories]\n" + "".join(f"{k} => {v}\n" for k, v in dirs.items())
        asterisk_conf += (
            "\n[options]\n"
            f"verbose = {self.verbose}\n"
            f"debug = {self.debug}\n"
            "nocolor = yes\n"
            "dumpcore = yes\n"
            "transmit_silence = no\n"
            "documentation_language = en_US\n"
            f"systemname = {self.name}\n"
            "hideconnect = yes\n" + self.options + "\n"
        )
        modules_conf = "[modules]\nautoload = no\n" + "".join(
            f"load => {m}.so\n" for m in self.modules
        )
        logger_conf = (
            "[general]\n"
            "dateformat = %F %T.%3q\n"
            "\n[logfiles]\n"
            "messages.log => notice,warning,error,verbose(3)\n"
            "full.log => notice,warning,error,debug,verbose,dtmf\n"
        )
        manager_conf = (
            "[general]\n"
            "enabled = yes\n"
            f"port = {self.ami_port}\n"
            f"bindaddr = {self.bind_ip}\n"
            "webenabled = no\n"
            f"\n[{self.ami_user}]\n"
            f"secret = {self.ami_secret}\n"
            "deny = 0.0.0.0/0.0.0.0\n"
            "permit = 127.0.0.1/255.255.255.255\n"
            "read = all\n"
            "write = all\n"
            "writetimeout = 5000\n"
        )
        rtp_conf = f"[general]\nrtpstart = {self.rtp_start}\nrtpend = {self.rtp_end}\n"
        gen = {
            "asterisk.conf": asterisk_conf,
            "modules.conf": modules_conf,
            "logger.conf": logger_conf,
            "manager.conf": manager_conf,
            "rtp.conf": rtp_conf,
            "extensions.conf": DEFAULT_EXTENSIONS,
            "indications.conf": "[general]\ncountry = us\n\n[us]\ndescription = United States\n"
            "ringcadence = 2000,4000\ndial = 350+440\nbusy = 480+620/500,0/500\n"
            "ring = 440+480/2000,0/4000\ncongestion = 480+620/250,0/250\n"
            "callwaiting = 440/300,0/10000\ndialrecall = !350+440/100,!0/100,!350+440/100,"
            "!0/100,!350+440/100,!0/100,350+440\nrecord = 1400/500,0/15000\n"
            "info = !950/330,!1400/330,!1800/330,0\nstutter = !350+440/100,!0/100,!350+440/100,"
            "!0/100,!350+440/100,!0/100,350+440\n",
        }
        # Quiet stand-ins for what the core and the default modules read at boot.
        gen.update(STUB_CONFIGS)
        if "chan_pjsip" in self.modules:
            gen["pjsip.conf"] = self.pjsip_conf()
        return gen

    def write_configs(self) -> None:
        """Create the tree and write every config file (``start()`` calls this)."""
        for d in ("etc", "modules", "lib", "keys", "spool", "run", "log", "cache", "tmp"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        files = self._generated()
        for name, value in self.configs.items():
            files[name] = value(self) if callable(value) else value
        for name, text in files.items():
            (self.etc / name).write_text(text)
        self._mirror_modules()

    def _mirror_modules(self) -> None:
        for old in self.moddir.iterdir():
            old.unlink()
        src = system_moddir()
        for mod in src.iterdir():
            (self.moddir / mod.name).symlink_to(mod)
        for extra in self.extra_modules:
            if not extra.is_file():
                raise AsteriskError(f"extra module {extra} does not exist")
            link = self.moddir / extra.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(extra)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 45.0) -> float:
        """Start Asterisk and wait until it is fully booted; returns the boot time in seconds."""
        if self.is_running():
            raise AsteriskError(f"{self.name} is already running")
        self.write_configs()
        for f in (self.messages_log, self.full_log):
            f.unlink(missing_ok=True)
        console = open(self.console_log, "ab")  # noqa: SIM115 - closed in stop()
        self._console = console
        env = dict(os.environ)
        env.update(sanitizer_env())
        env.update(self.env)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [*self.wrapper, ASTERISK, "-C", str(self.conf), "-f", "-n", "-g", "-q"],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=self.base,
            env=env,
            start_new_session=True,
        )
        self.killed, self.exit_code, self.stop_seconds = False, None, None
        deadline = t0 + timeout
        delay = 0.05
        last = ""
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._close_console()
                raise AsteriskError(
                    f"{self.name} exited with status {code} while booting\n{self.diagnostics()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                raise AsteriskError(
                    f"{self.name} not fully booted after {timeout:.0f} s ({last})\n"
                    f"{self.diagnostics()}"
                )
            try:
                r = self._rx("core waitfullybooted", timeout=max(0.5, remaining))
                last = (r.stdout + r.stderr).strip()
                if r.returncode == 0 and "fully booted" in r.stdout:
                    break
            except subprocess.TimeoutExpired:
                last = "core waitfullybooted timed out"
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        self.boot_seconds = time.monotonic() - t0
        if sanitizer_env() and not self.wrapper:
            maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
            if "libasan" not in maps:
                self._kill()
                raise AsteriskError(f"{self.name}: the ASan runtime is not loaded (LD_PRELOAD)")
        return self.boot_seconds

    def stop(self, timeout: float = 10.0) -> bool:
        """``core stop gracefully``, then wait; SIGKILL after ``timeout``. True when clean."""
        if self.proc is None:
            return True
        if self.proc.poll() is not None:
            self.exit_code = self.proc.returncode
            self._close_console()
            return True
        t0 = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self._rx("core stop gracefully", timeout=timeout)
        try:
            self.proc.wait(timeout=max(0.1, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            print(
                f"asterisk {self.name} (pid {self.proc.pid}) did not stop within {timeout:.0f} s:"
                " SIGKILL",
                file=sys.stderr,
            )
            self._kill()
        self.stop_seconds = time.monotonic() - t0
        self.exit_code = self.proc.returncode
        self._close_console()
        return not self.killed

    def _kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.killed = True

    def _close_console(self) -> None:
        console = self._console
        self._console = None
        if console is not None:
            console.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Asterisk:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- CLI ----------------------------------------------------------------------------------

    def _rx(self, cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ASTERISK, "-C", str(self.conf), "-rx", cmd],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )

    def cli(self, cmd: str, timeout: float = 10.0) -> str:
        """Run a CLI command through ``asterisk -rx``; its output. Raises if it cannot connect."""
        r = self._rx(cmd, timeout)
        if r.returncode != 0:
            raise AsteriskError(f"`{cmd}` failed ({r.returncode}): {(r.stdout + r.stderr).strip()}")
        return r.stdout

    def originate_local(
        self,
        exten: str,
        context: str = "test",
        app: str = "Echo",
        data: str = "",
        timeout: float = 10.0,
    ) -> str:
        """``channel originate Local/exten@context application APP DATA``: the ;1 leg runs the
        dialplan at exten, the ;2 leg runs APP."""
        cmd = f"channel originate Local/{exten}@{context} application {app}"
        if data:
            cmd += f" {data}"
        return self.cli(cmd, timeout=timeout)

    def channels(self) -> list[str]:
        """Names of the current channels (``core show channels concise``)."""
        out = self.cli("core show channels concise")
        return [line.split("!", 1)[0] for line in out.splitlines() if "!" in line]

    def wait_no_channels(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.channels():
            if time.monotonic() > deadline:
                raise TimeoutError(f"channels still up after {timeout} s: {self.channels()}")
            time.sleep(0.1)

    # --- logs ---------------------------------------------------------------------------------

    def log_text(self, full: bool = False) -> str:
        path = self.full_log if full else self.messages_log
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, full: bool = False) -> list[str]:
        return self.log_text(full).splitlines()

    def log_mark(self, full: bool = False) -> int:
        """The current length of the log, to wait only for what comes after it."""
        return len(self.log_text(full))

    def wait_for_log(
        self, regex: str, timeout: float = 10.0, since: int = 0, full: bool = False
    ) -> re.Match[str]:
        """Wait until a line matching ``regex`` appears in messages.log (or full.log)."""
        pattern = re.compile(regex, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self.log_text(full), since)
            if m:
                return m
            if not self.is_running():
                raise AsteriskError(f"{self.name} died while waiting for /{regex}/")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"/{regex}/ not in {'full.log' if full else 'messages.log'} after {timeout} s"
                )
            time.sleep(0.05)

    def errors(self, pattern: str = "") -> list[str]:
        """ERROR lines of messages.log (optionally only those matching ``pattern``)."""
        rx = re.compile(pattern) if pattern else None
        return [
            line
            for line in self.log_lines()
            if re.search(r"\] ERROR\[", line) and (rx is None or rx.search(line))
        ]

    def diagnostics(self, lines: int = 40) -> str:
        """Tails of the console output and messages.log, for failure reports."""
        parts = []
        for label, path in (("console", self.console_log), ("messages.log", self.messages_log)):
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                tail = ["(absent)"]
            parts.append(f"--- {label} ({path}) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # --- AMI ----------------------------------------------------------------------------------

    def ami(self, timeout: float = 10.0, events: bool = True) -> AMI:
        """A logged-in AMI client (close it, or use it as a context manager)."""
        return AMI(
            self.bind_ip, self.ami_port, self.ami_user, self.ami_secret, timeout=timeout,
            events=events,
        )  # fmt: skip


AsteriskFactory = Callable[..., Asterisk]
"""The type of the ``asterisk_factory`` fixture (tests/integration/conftest.py)."""


class AMIError(RuntimeError):
    pass


Message = dict[str, str]


class AMI:
    """A minimal AMI client over a raw socket. Keys repeated in one message (``Output:``,
    ``ChanVariable:``) are joined with newlines."""

    _ids = itertools.count(1)

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        timeout: float = 10.0,
        events: bool = True,
    ) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        self._events: deque[Message] = deque()
        banner = self._readline()
        if not banner.startswith("Asterisk Call Manager"):
            raise AMIError(f"unexpected AMI banner {banner!r}")
        self.banner = banner
        r = self.action("Login", Username=username, Secret=secret, Events="on" if events else "off")
        if r.get("Response") != "Success":
            raise AMIError(f"AMI login failed: {r}")

    def _recv(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise AMIError("AMI connection closed")
        self._buf += data
        return True

    def _readline(self) -> str:
        deadline = time.monotonic() + self.timeout
        while b"\r\n" not in self._buf:
            if not self._recv(deadline):
                raise TimeoutError("no AMI banner")
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def _read_message(self, deadline: float) -> Message | None:
        while b"\r\n\r\n" not in self._buf:
            if not self._recv(deadline):
                return None
        raw, self._buf = self._buf.split(b"\r\n\r\n", 1)
        msg: Message = {}
        for line in raw.decode(errors="replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key, value = key.strip(), value.strip()
            msg[key] = f"{msg[key]}\n{value}" if key in msg else value
        return msg

    def send(self, name: str, **fields: object) -> str:
        """Send an action without waiting; returns its ActionID."""
        action_id = fields.pop("ActionID", None) or f"t{os.getpid()}-{next(self._ids)}"
        lines = [f"Action: {name}", f"ActionID: {action_id}"]
        for k, v in fields.items():
            values = v if isinstance(v, list | tuple) else [v]
            lines += [f"{k}: {x}" for x in values]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return str(action_id)

    def action(self, name: str, timeout: float | None = None, **fields: object) -> Message:
        """Send an action and return its response; events read meanwhile are kept for
        ``events()`` / ``wait_event()``. Lists (``EventList: start``) are not collected here:
        use ``action_list``."""
        action_id = self.send(name, **fields)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self._read_message(deadline)
            if msg is None:
                raise TimeoutError(f"no response to AMI action {name}")
            if "Response" in msg and msg.get("ActionID") == action_id:
                return msg
            if "Event" in msg:
                self._events.append(msg)

    def action_list(
        self, name: str, timeout: float | None = None, **fields: object
    ) -> tuple[Message, list[Message]]:
        """An action answered by an event list: (response, the list's events)."""
        action_id = self.send(name, **fields)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        response: Message | None = None
        items: list[Message] = []
        while True:
            msg = self._read_message(deadline)
            if msg is None:
                raise TimeoutError(f"incomplete AMI list for {name}")
            if msg.get("ActionID") != action_id:
                if "Event" in msg:
                    self._events.append(msg)
                continue
            if "Response" in msg:
                response = msg
                if msg.get("Response") != "Success" or msg.get("EventList") != "start":
                    return response, items
            elif msg.get("EventList") == "Complete":
                assert response is not None
                return response, items
            else:
                items.append(msg)

    def events(self, timeout: float = 5.0) -> Iterator[Message]:
        """Events as they arrive (queued ones first), until ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            while self._events:
                yield self._events.popleft()
            msg = self._read_message(deadline)
            if msg is None:
                return
            if "Event" in msg:
                self._events.append(msg)

    def wait_event(
        self,
        name: str,
        predicate: Callable[[Message], bool] | None = None,
        timeout: float = 10.0,
    ) -> Message:
        """The first event called ``name`` (case-insensitive) for which ``predicate`` holds.
        Events skipped on the way are dropped."""
        for ev in self.events(timeout):
            if ev.get("Event", "").lower() == name.lower() and (predicate is None or predicate(ev)):
                return ev
        raise TimeoutError(f"no AMI event {name} within {timeout} s")

    def command(self, cmd: str) -> str:
        """A CLI command through AMI; its output."""
        r = self.action("Command", Command=cmd)
        return r.get("Output", "")

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, AMIError):
            self.send("Logoff")
        self.sock.close()

    def __enter__(self) -> AMI:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
