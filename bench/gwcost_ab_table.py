"""Print the interleaved A/B runs of bench/gwcost_ab.sh (one row per run, then the medians per side)."""

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
        ("never connected", lambda r: r["never_connected"]),
        ("handshakes/s peak", lambda r: r["connections"]["handshakes_per_s_peak"])]
by_side: dict[str, list[dict]] = {}
print("| run | side | transport | clients | " + " | ".join(c for c, _ in COLS) + " |")
print("|---" * (4 + len(COLS)) + "|")
for path in sorted(OUT.glob("*-run*.json"), key=lambda p: (p.stem.rsplit("run", 1)[1], p.stem)):
    side, _, rest = path.stem.partition("-")
    for r in json.loads(path.read_text())["results"]:
        by_side.setdefault(f"{side} {r['transport']} {r['clients']}", []).append(r)
        vals = " | ".join(f"{f(r):,.1f}" for _, f in COLS)
        print(f"| {path.stem.rsplit('run', 1)[1]} | {side} | {r['transport']} | {r['clients']:,} | {vals} |")
print()
for key, runs in by_side.items():
    print(f"median {key} ({len(runs)} runs): " + ", ".join(
        f"{c} {statistics.median(f(r) for r in runs):,.1f}" for c, f in COLS))
