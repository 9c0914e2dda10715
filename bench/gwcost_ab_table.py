"""Print the interleaved A/B runs of bench/gwcost_ab.sh or bench/gwcost_window.sh (one row per run and level,
then the medians per side, transport and level)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/gwcost/ab")
COLS = [("chunks/s", lambda r: r["chunks_per_s"]), ("tokens/chunk", lambda r: r["tokens_per_chunk"]),
        ("CPU µs/token", lambda r: r["server"]["cpu_us_per_token"]),
        ("gateway µs/token", lambda r: r["server"]["gateway_cpu_us_per_token"]),
        ("gateway µs/chunk", lambda r: r["server"]["gateway_cpu_us_per_chunk"]),
        ("engine µs/chunk", lambda r: r["server"]["engine_cpu_us_per_chunk"]),
        ("engine µs/token", lambda r: r["server"]["engine_cpu_us_per_token"]),
        ("never connected", lambda r: r["never_connected"]),
        ("handshakes/s peak", lambda r: r["connections"]["handshakes_per_s_peak"])]
by_side: dict[str, list[dict]] = {}
print("| run | side | transport | clients | " + " | ".join(c for c, _ in COLS) + " |")
print("|---" * (4 + len(COLS)) + "|")


def run_of(path: Path) -> str:
    """NAME-runN.json is run N; NAME.json (bench/gwcost_window.sh's first runs) run 1."""
    return path.stem.rsplit("run", 1)[1] if "-run" in path.stem else "1"


paths = [p for p in OUT.glob("*.json") if p.stem.partition("-")[0] in ("before", "after")]
for path in sorted(paths, key=lambda p: (run_of(p), p.stem)):
    side = path.stem.partition("-")[0]
    for r in json.loads(path.read_text())["results"]:
        by_side.setdefault(f"{side} {r['transport']} {r['clients']}", []).append(r)
        vals = " | ".join(f"{f(r):,.1f}" for _, f in COLS)
        print(f"| {run_of(path)} | {side} | {r['transport']} | {r['clients']:,} | {vals} |")
print()
for key, runs in by_side.items():
    print(f"median {key} ({len(runs)} runs): " + ", ".join(
        f"{c} {statistics.median(f(r) for r in runs):,.1f}" for c, f in COLS))
