"""Markdown tables for docs/benchmarks.md from compare_peers.py's results (one JSON per server run).

    python scripts/peers_table.py bench/results/peers
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LEVELS = (1, 8, 32, 64)


def main(folder: Path) -> None:
    reports = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    reports = {name: rep for name, rep in reports.items() if "results" in rep}  # not the cold-start reports

    def cell(name: str, c: int, fmt) -> str:
        rows = [r for r in reports.get(name, {}).get("results", []) if r["concurrency"] == c]
        return fmt(rows[0]) if rows and rows[0]["completed"] else "-"

    print("| run | " + " | ".join(f"C={c}" for c in LEVELS) + " | ITL p50 / p99 ms (C=1, 8, 32, 64) "
          "| TTFT p50 ms (C=1 / 64) | peak RSS MiB | start → first token |")
    print("|---|" + "---|" * (len(LEVELS) + 4))
    for name, rep in reports.items():
        tps = [cell(name, c, lambda r: f"{r['output_tok_s']:.1f}") for c in LEVELS]
        itl = [cell(name, c, lambda r: f"{r['itl_ms']['p50']:.0f} / {r['itl_ms']['p99']:.0f}") for c in LEVELS]
        ttft = [cell(name, c, lambda r: f"{r['ttft_ms']['p50']:.0f}") for c in (1, 64)]
        mem = max((r["server_memory"]["rss_mib"] for r in rep["results"] if r.get("server_memory")), default=None)
        errors = sum(r["errors"] for r in rep["results"])
        start = rep.get("start_to_first_token_s")
        print(f"| {name}{f' ({errors} errors)' if errors else ''} | " + " | ".join(tps) + " | " + ", ".join(itl)
              + " | " + " / ".join(ttft) + f" | {'-' if mem is None else f'{mem:.0f}'} | "
              + (f"{start:.1f} s" if start else "-") + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
