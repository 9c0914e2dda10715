"""The accepts quiet window (bench/accepts_window.sh) as one markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/accepts")
LEGS = [("before-ws", "before (main's server)", "results"), ("oldtree-ws", "main's whole tree", "results"),
        ("after-ws", "after", "results"), ("after-ws-workers2", "after, --workers 2", "results"),
        ("after-ws", "picows baseline", "baseline")]


def f(x, fmt="{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


print("| server | clients | never connected | errors / timeouts | all connected after | handshakes/s peak | "
      "handshake p50 / p99 ms | chunks/s | gateway µs/token | TTFT p99 ms |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, label, key in LEGS:
    path = OUT / f"{name}.json"
    if not path.exists():
        continue
    for r in json.loads(path.read_text()).get(key, []):
        c, srv = r["connections"], r["server"]
        hs = c.get("handshake_ms") or {}
        print(f"| {label} | {r['clients']:,} | {r['never_connected']:,} | {r['errors']} / {r['timeouts']} | "
              f"{f(c['time_to_all_connected_s'], '{:.1f} s')} | {c['handshakes_per_s_peak']:,} | "
              f"{f(hs.get('p50'))} / {f(hs.get('p99'))} | {f(r['chunks_per_s'])} | "
              f"{f(srv.get('gateway_cpu_us_per_token'), '{:.1f}')} | {f(r['ttft_ms']['p99'])} |")
