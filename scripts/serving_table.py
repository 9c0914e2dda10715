"""A markdown row per `seedance bench serving` JSON: output tok/s (ITL p50 / p99 ms) per level, peak RSS MiB and
start to first token, as docs/benchmarks.md's serving tables have them.

    python scripts/serving_table.py bench/results/amx-s13/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(path: str) -> str:
    report = json.loads(Path(path).read_text())
    cells, rss = [], 0.0
    for r in report["results"]:
        cells.append(f"{r['output_tok_s']:.1f} ({r['itl_ms']['p50']:.0f} / {r['itl_ms']['p99']:.0f})")
        rss = max(rss, (r.get("server_memory") or {}).get("rss_mib") or 0.0)
    start = report.get("start_to_first_token_s")
    return f"| {report['label']} | {' | '.join(cells)} | {rss:.0f} | {f'{start:.1f} s' if start else '-'} |"


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(row(p))
