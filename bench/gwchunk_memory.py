"""Memory per idle and per streaming /v1/stream connection, before against after, interleaved (issue #16, branch
gwchunk): the transports bench's memory leg (`seedance bench transports --memory-connections N`: RSS of the
server with N idle WebSockets, then streaming, over the idle server) on a fresh synthetic `--engine process`
server per run, the two trees alternating.

    PYTHONPATH=$PWD python bench/gwchunk_memory.py --before /tmp/gwchunk-before --after . --rounds 3 \
        [--connections 2000] [--output bench/results/gwchunk/memory.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from seedance.bench.loadgen import raise_nofile_limit
from seedance.bench.transports_bench import memory_probe, start_server


def one_run(tree: str, connections: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="seedance-mem-"))
    server = start_server("synthetic", 50.0, connections, workdir, "process", str(Path(tree).resolve()))
    try:
        return memory_probe(server.url, connections, 200, server.pid)
    finally:
        server.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default=".")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    raise_nofile_limit()
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for side in ("before", "after"):
            row = one_run(getattr(args, side), args.connections)
            runs[side].append(row)
            print(f"{side}: idle {row['rss_per_idle_connection_kib']:.2f} KiB, streaming "
                  f"{row['rss_per_streaming_connection_kib']:.2f} KiB per connection", flush=True)
    print("\n| side | idle KiB / connection (median) | runs | streaming KiB / connection (median) | runs |")
    print("|---|---|---|---|---|")
    for side, rows in runs.items():
        idle = [r["rss_per_idle_connection_kib"] for r in rows]
        streaming = [r["rss_per_streaming_connection_kib"] for r in rows]
        print(f"| {side} | {statistics.median(idle):.2f} | {' / '.join(f'{x:.2f}' for x in idle)} | "
              f"{statistics.median(streaming):.2f} | {' / '.join(f'{x:.2f}' for x in streaming)} |")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"connections": args.connections, **runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
