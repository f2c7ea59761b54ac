"""Pure helpers for the benchmark: the module's histograms, percentiles, /proc readers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
HIST_BUCKETS = 213


def hist_upper(b: int) -> int:
    """Upper edge of a bucket in µs: convai_hist_upper() in c/convai_shared.h."""
    if b < 100:
        return (b + 1) * 10
    if b < 176:
        return 1000 + (b - 99) * 250
    return 20000 + (b - 175) * 5000


def hist_bucket(us: int) -> int:
    """convai_hist_bucket() in c/convai_shared.h."""
    if us < 1000:
        return us // 10
    if us < 20000:
        return 100 + (us - 1000) // 250
    if us < 200000:
        return 176 + (us - 20000) // 5000
    return HIST_BUCKETS - 1


def parse_hist(text: str | None) -> dict[int, int]:
    """The AMI event's sparse "bucket:count,..." list."""
    out: dict[int, int] = {}
    for part in (text or "").split(","):
        b, sep, c = part.strip().partition(":")
        if sep and b.isdigit() and c.isdigit():
            out[int(b)] = out.get(int(b), 0) + int(c)
    return out


def merge_hists(hists: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for b, c in h.items():
            out[b] = out.get(b, 0) + c
    return out


def hist_summary(h: Mapping[int, int]) -> dict[str, Any]:
    """p50/p99/p99.9/max as bucket upper edges (what the C side reports), and the count."""
    n = sum(h.values())
    res: dict[str, Any] = {"count": n, "p50": None, "p99": None, "p999": None, "max": None}
    if not n:
        return res
    seen = 0
    for b in sorted(h):
        seen += h[b]
        for key, p in (("p50", 0.50), ("p99", 0.99), ("p999", 0.999)):
            if res[key] is None and seen >= p * n:
                res[key] = hist_upper(b)
        res["max"] = hist_upper(b)
    res["overflow"] = h.get(HIST_BUCKETS - 1, 0)
    return res


def hist_over(h: Mapping[int, int], us: int) -> float | None:
    """Fraction of samples in buckets that lie wholly above `us` (a bucket edge)."""
    n = sum(h.values())
    if not n:
        return None
    return round(sum(c for b, c in h.items() if hist_upper(b) > us and b >= hist_bucket(us)) / n, 5)


def percentiles(values: Sequence[float], ps: Sequence[float] = (0.5, 0.99)) -> dict[str, Any]:
    if not values:
        return {f"p{round(p * 100):d}": None for p in ps} | {"max": None, "n": 0}
    s = sorted(values)
    out: dict[str, Any] = {f"p{round(p * 100):d}": s[min(len(s) - 1, int(len(s) * p))] for p in ps}
    out["max"] = s[-1]
    out["n"] = len(s)
    return out


# --- /proc ---------------------------------------------------------------------------------------
def _stat_fields(text: str) -> list[str]:
    # comm may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (threads that exited included), in seconds."""
    f = _stat_fields(Path(f"/proc/{pid}/stat").read_text())
    return (int(f[11]) + int(f[12])) / CLK_TCK


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_cpu_s(pid: int, tid: int) -> float:
    f = _stat_fields(Path(f"/proc/{pid}/task/{tid}/stat").read_text())
    return (int(f[11]) + int(f[12])) / CLK_TCK


def proc_threads(pid: int) -> dict[int, float]:
    """tid → CPU seconds of each live thread."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            f = _stat_fields(Path(f"/proc/{pid}/task/{tid}/stat").read_text())
        except (OSError, ValueError):
            continue
        out[int(tid)] = (int(f[11]) + int(f[12])) / CLK_TCK
    return out


def proc_runtime_s(pid: int) -> float:
    """CPU time of the live threads from schedstat (ns resolution, unlike the 10 ms ticks of
    /proc/PID/stat); threads that exited are missing, so use it for idle periods only."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def thread_wchans(pid: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = Path(f"/proc/{pid}/task/{tid}/wchan").read_text().strip()
        except OSError:
            continue
    return out


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall seconds as the kernel counts), /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    return (sum(f[:8]) - idle) / CLK_TCK, time.monotonic()


def load_avg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


_POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE"}


def thread_sched(pid: int, tid: int) -> dict[str, Any]:
    """A thread's scheduling policy, realtime priority and nice value (/proc/PID/task/TID/stat)."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3; nice 19, rt_priority 40, policy 41 (proc(5)).
    return {"policy": _POLICIES.get(int(fields[38]), fields[38]), "rt_priority": int(fields[37]),
            "nice": int(fields[16])}  # fmt: skip


def sched_of(pid: int, py_tid: int | None) -> dict[str, Any]:
    """How Asterisk's main thread and the module's Python thread are scheduled."""
    out: dict[str, Any] = {}
    try:
        out["asterisk_main"] = thread_sched(pid, pid)
        if py_tid:
            out["python_thread"] = thread_sched(pid, py_tid)
    except (OSError, ValueError, IndexError):
        pass
    return out
