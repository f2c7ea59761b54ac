#!/usr/bin/env python3
"""Issue 12's target table (Markdown) from one or more bench/run.py results JSONs: every target,
the measured value, and met or not. Rows a run did not measure say so.

    python3 bench/report.py bench/results/RUN.json [MORE.json ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]


def load(paths: list[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in paths:
        out += json.loads(p.read_text())
    return out


def find(rs: list[dict[str, Any]], run: str, n: int, prio: str, ws: str | None = None) -> Any:
    """The last matching record (a later file wins: the quieter rerun)."""
    hits = [
        r
        for r in rs
        if r.get("run") == run
        and r.get("calls") == n
        and r.get("priority", "normal") == prio
        and (ws is None or r.get("websocket") == ws)
    ]
    return hits[-1] if hits else None


def verdict(value: float | None, limit: float) -> str:
    return "not measured" if value is None else ("met" if value <= limit else "**NOT met**")


def rows(rs: list[dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    for prio in ("normal", "realtime"):
        tag = "" if prio == "normal" else " (-p)"
        for ws, lim in (("ws", 1.10), ("wss", 1.20)):
            for n in (50, 100, 200):
                m, pb = find(rs, "convai", n, prio, ws), find(rs, "playback", n, prio)
                ratio = (m or {}).get("vs_playback", {}).get("cpu_ratio")
                val = "-"
                if ratio:
                    mc, pc = m["cpu"]["ms_per_call_s"], pb["cpu"]["ms_per_call_s"]
                    val = f"{ratio:.2f}x ({mc:.2f} vs {pc:.2f} ms/call-s)"
                out.append((f"CPU {ws}://{tag}, N={n}", f"≤ {lim:.2f}x Playback", val,
                            verdict(ratio, lim)))  # fmt: skip
    for ws, lim in (("ws", 300), ("wss", 400)):
        for n in (50, 100, 200):
            m = find(rs, "convai", n, "normal", ws)
            v = m["rss_kb"]["per_call"] if m else None
            pb = find(rs, "playback", n, "normal")
            extra = f" (Playback {pb['rss_kb']['per_call']:.0f})" if pb else ""
            seen = f"{v:.0f} KB{extra}" if v is not None else "-"
            out.append((f"RSS per call {ws}://, N={n}", f"≤ {lim} KB", seen, verdict(v, lim)))
    for n in (50, 100, 200):
        m = find(rs, "convai", n, "normal", "ws")
        v = m["fds"]["per_call"] if m else None
        # (peak - idle) / N: a few hundredths over the whole number are the shared signed-URL
        # client's pooled connections while calls start, not a per-call fd.
        out.append((f"fds per call, N={n}", "≤ 7", f"{v}" if v is not None else "-",
                    verdict(round(v, 1) if v is not None else None, 7)))  # fmt: skip
    leak = [r for r in rs if r.get("run") == "leak-check"]
    if leak:
        lk = leak[-1]
        after = lk["rss_after_kb"]
        growth = (after[-1] - after[0]) / after[0] if after and after[0] else None
        seen = " -> ".join(f"{a / 1024:.1f} MB" for a in after)
        if growth is not None:
            seen += f" ({growth * 100:+.1f} %)"
        out.append(
            (
                f"RSS after the run, {lk['rounds']} rounds at N={lk['calls']}",
                "within 5 % of the high-water mark",
                seen,
                verdict(abs(growth) if growth is not None else None, 0.05),
            )
        )
    for prio, extra in (("normal", 100), ("realtime", 50)):
        for n in (1, 10, 50):
            m, pb = find(rs, "convai", n, prio, "ws"), find(rs, "playback", n, prio)
            if m and pb:
                mv, pv = m["playout_rtp_us"]["p99"], pb["playout_rtp_us"]["p99"]
                out.append((f"pacing p99{' (-p)' if prio == 'realtime' else ''}, N={n}",
                            f"≤ Playback + {extra} µs", f"{mv} µs (Playback {pv})",
                            verdict(mv - pv, extra)))  # fmt: skip
            else:
                out.append((f"pacing p99, N={n} {prio}", f"≤ Playback + {extra} µs", "-",
                            "not measured"))  # fmt: skip
    for n, lim in ((1, 5000), (100, 10000)):
        m = find(rs, "convai", n, "normal", "ws")
        v = (m or {}).get("first_frame_us", {}).get("p99")
        out.append((f"first audio p99, N={n}", f"≤ {lim // 1000} ms",
                    f"{v / 1000:.2f} ms (bucket edge)" if v else "-", verdict(v, lim)))  # fmt: skip
    m = find(rs, "convai", 200, "normal", "ws")
    v = (m or {}).get("barge_in_us", {}).get("p99")
    out.append(("barge-in p99, N=200", "≤ 20 ms", f"{v / 1000:.2f} ms (bucket edge)" if v else "-",
                verdict(v, 20000)))  # fmt: skip
    up = [r for r in rs if r.get("run") == "uplink"]  # bench/uplink.py: the last one
    if up:
        lw = up[-1]["last_word_ms"]
        out.append(("uplink turn latency p50/p99", "≤ 40 ms",
                    f"{lw['p50']:.1f} / {lw['p99']:.1f} ms ({lw['n']} utterances)",
                    verdict(lw["p99"], 40)))  # fmt: skip
    else:
        out.append(("uplink turn latency p50/p99", "≤ 40 ms", "-", "not measured"))
    # Capacity: every file's steps per priority and series (a later file's step at the same N
    # replaces an earlier one), then the largest clean N over all of them.
    steps: dict[tuple[str, str], dict[int, bool]] = {}
    for cap in [r for r in rs if r.get("run") == "capacity"]:
        for series in ("playback", "ws", "wss"):
            for n, ok in (cap.get(series) or {}).get("steps", []):
                steps.setdefault((cap["priority"], series), {})[n] = ok
    for (prio, series), by_n in sorted(steps.items()):
        if series == "playback":
            continue
        best = max((n for n, ok in by_n.items() if ok), default=None)
        pb = max((n for n, ok in steps.get((prio, "playback"), {}).items() if ok), default=None)
        seen = ", ".join(f"{n}:{'ok' if ok else 'no'}" for n, ok in sorted(by_n.items()))
        met = best is not None and best >= 300 and (pb is None or best >= pb)
        verdict_ = "met" if met else "**NOT met**"
        got = f"{best} (Playback {pb}; steps {seen})"
        out.append((f"capacity {series}:// ({prio})", ">= 300, >= Playback's", got, verdict_))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="+")
    args = ap.parse_args()
    rs = load(args.results)
    print("| target | goal | measured | |\n|---|---|---|---|")
    for r in rows(rs):
        print("| " + " | ".join(r) + " |")
    others = [r["machine"]["cores_busy_others"] for r in rs
              if r.get("run") in ("playback", "convai") and r.get("machine")]  # fmt: skip
    if others:
        print(f"\nOther processes on the machine during the runs: {min(others):.2f}-"
              f"{max(others):.2f} cores (`machine.cores_busy_others`).")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
