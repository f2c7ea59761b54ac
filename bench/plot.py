#!/usr/bin/env python3
"""One PNG from a bench/run.py results JSON: Asterisk CPU per call-second, playout p99 (RTP at
the caller, kernel timestamps) and RSS per call against N, the module (ws://, wss://) beside
Playback(), solid at normal priority and dashed under -p.

    python3 bench/plot.py bench/results/RUN.json [MORE.json ...] [-o bench/results/RUN.png]

Several files (e.g. a normal-priority and a -p run) go on one picture; where two hold the same
series and N, the later file's point is drawn.

Needs matplotlib (Debian's python3-matplotlib is in the testbed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"playback": "#555555", "ws": "#1f77b4", "wss": "#d62728"}
NAMES = {"playback": "Playback()", "ws": "module, ws://", "wss": "module, wss://"}
PANELS = (
    ("Asterisk CPU, ms per call-second", lambda r: r["cpu"].get("ms_per_call_s")),
    ("playout p99, µs (|interval - 20 ms| at the caller)", lambda r: r["playout_rtp_us"]["p99"]),
    ("RSS per call, KB ((peak - idle) / N)", lambda r: r["rss_kb"]["per_call"]),
)


def series(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        if r.get("run") not in ("playback", "convai"):
            continue
        key = (r.get("websocket") or "playback", r.get("priority", "normal"))
        out.setdefault(key, []).append(r)
    for key, rows in out.items():
        by_n = {r["calls"]: r for r in rows}  # a later file's run replaces an earlier one
        out[key] = [by_n[n] for n in sorted(by_n)]
    return out


def quiet_note(results: list[dict[str, Any]]) -> str:
    others = [r["machine"]["cores_busy_others"] for r in results
              if r.get("run") in ("playback", "convai") and r.get("machine")]  # fmt: skip
    metas = [r for r in results if r.get("run") == "meta"]
    when = metas[0].get("date", "") if metas else ""
    git = metas[0].get("git", "") if metas else ""
    busy = f"other processes: max {max(others):.2f} cores" if others else ""
    return f"{when}  {git}  {busy}".strip()


def plot(results: list[dict[str, Any]], out: Path) -> None:
    data = series(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (title, get) in zip(axes, PANELS, strict=True):
        for (kind, prio), rows in sorted(data.items()):
            pts = [(r["calls"], get(r)) for r in rows if get(r) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            rt = prio == "realtime"
            ax.plot(xs, ys, marker="o", color=COLOURS.get(kind, "black"),
                    linestyle="--" if rt else "-",
                    label=NAMES.get(kind, kind) + (" (-p)" if rt else ""))  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("concurrent calls N")
        ax.set_xscale("symlog", linthresh=10)
        ax.grid(True, alpha=0.3)
        if "p99" in title:
            ax.set_yscale("log")  # 100 µs at low N and 20 ms under load on one axis
        else:
            ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle("app_elevenlabs_convai beside Playback(), SIP/RTP PCMU, 2 cores shared with "
                 f"the simulator and the load generator; {quiet_note(results)}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("-o", "--out", type=Path, help="PNG (default: beside the first JSON)")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    for path in args.results:
        results += json.loads(path.read_text())
    out = args.out or args.results[0].with_suffix(".png")
    plot(results, out)
    print(out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
