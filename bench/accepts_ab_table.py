"""The accepts A/B (bench/accepts_ab.sh) as a table, one row per run, and the medians per side."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/accepts")


def row(r: dict) -> dict:
    c, srv = r["connections"], r["server"]
    return {"never": r["never_connected"], "errors": r["errors"], "timeouts": r["timeouts"],
            "all_after": c["time_to_all_connected_s"], "peak": c["handshakes_per_s_peak"],
            "hs_p50_ms": (c.get("handshake_ms") or {}).get("p50"), "chunks_s": r["chunks_per_s"],
            "gw_us_tok": srv.get("gateway_cpu_us_per_token")}


def fmt(x) -> str:
    return "-" if x is None else f"{x:,.1f}" if isinstance(x, float) else f"{x:,}"


sides: dict[str, list[dict]] = {}
print("| run | never connected | errors / timeouts | all connected after s | handshakes/s peak | handshake p50 ms | "
      "chunks/s | gateway µs/token |")
print("|---|---|---|---|---|---|---|---|")
for path in sorted(OUT.glob("ab-*.json")):
    for r in json.loads(path.read_text())["results"]:
        x = row(r)
        sides.setdefault(path.stem.rsplit("-", 1)[0], []).append(x)
        print(f"| {path.stem} | {fmt(x['never'])} | {x['errors']} / {x['timeouts']} | {fmt(x['all_after'])} | "
              f"{fmt(x['peak'])} | {fmt(x['hs_p50_ms'])} | {fmt(x['chunks_s'])} | {fmt(x['gw_us_tok'])} |")
for side, xs in sides.items():
    med = {k: statistics.median([x[k] for x in xs if x[k] is not None]) if any(x[k] is not None for x in xs)
           else None for k in xs[0]}
    print(side, "medians:", {k: round(v, 1) if isinstance(v, float) else v for k, v in med.items()})
