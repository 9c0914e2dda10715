"""Interleaved A/B of the canary's latency under `seedance bench fuzz`: servers from two source trees, alternating
(before, after, before, after...), the same harness (this checkout's) against each, medians per variant.

    git archive <base-commit> seedance | tar -x -C /tmp/base
    python scripts/fuzz_ab.py --variant before=/tmp/base --variant after=. --scale 0.1 --rounds 3

A variant is NAME=PATH[+NAME=VALUE...]: the tree `seedance serve` imports seedance from, and server settings of
that variant (e.g. after=.+decode_step_prefill_tokens=64). Prints one JSON line per run and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

from seedance.bench.fuzz import SERVER_SETTINGS, run_fuzz
from seedance.bench.server_process import launch


def one_run(path: str, settings: dict, scale: float, seed: int, engine: str, output: str | None = None,
            attacker: str = "normal") -> dict:
    log_dir = tempfile.mkdtemp(prefix="seedance-fuzz-ab-")
    server = launch({**SERVER_SETTINGS, "session_store": f"sqlite://{Path(log_dir) / 'sessions.db'}",
                     "engine_mode": engine, **settings}, Path(log_dir) / "server.log", ready_timeout_s=120,
                    python_path=str(Path(path).resolve()))
    try:
        report = asyncio.run(run_fuzz(
            server.ws, server.http, ws_messages=int(100_000 * scale), binary_frames=int(10_000 * scale),
            http_bodies=int(50_000 * scale), realtime_events=int(20_000 * scale), seed=seed, hang_timeout_s=60,
            attacker=attacker, server=server))
    finally:
        server.stop()
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps({**asdict(report), "defects": report.defects}, indent=2) + "\n")
    return {"quiet_max_ms": report.quiet["max_ms"], "matched_quiet_max_ms": report.quiet_matched["max_ms"],
            "beside_fuzz_cpu_max_ms": report.quiet_beside_fuzz_cpu["max_ms"],
            "loaded_first_max_ms": report.loaded["first_max_ms"], "loaded_later_max_ms": report.loaded["later_max_ms"],
            "loaded_p50_ms": report.loaded["p50_ms"], "loaded_p99_ms": report.loaded["p99_ms"],
            "loaded_max_ms": report.loaded["max_ms"], "loaded_requests": report.loaded["requests"],
            "fuzz_client_cores": report.fuzz_client_cores, "duration_s": report.duration_s,
            "defects": sum(report.defects.values()), "load_avg": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=PATH[+NAME=VALUE...]")
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=("thread", "process"), default="process")
    ap.add_argument("--output-dir", help="write each run's full report here, as VARIANT-ROUND.json")
    ap.add_argument("--attacker", choices=("normal", "idle"), default="normal", help="the fuzzers' scheduling")
    args = ap.parse_args()
    variants = {}
    for v in args.variant:
        name, spec = v.split("=", 1)
        path, *sets = spec.split("+")
        variants[name] = (path, dict(s.split("=", 1) for s in sets))
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, (path, settings) in variants.items():
            output = f"{args.output_dir}/{name}-{r}.json" if args.output_dir else None
            result = one_run(path, settings, args.scale, args.seed, args.engine, output, args.attacker)
            runs[name].append(result)
            print(json.dumps({"round": r, "variant": name, **result}), flush=True)
    medians = {name: {k: round(statistics.median(x[k] for x in rs), 1) for k in rs[0] if k != "defects"}
               for name, rs in runs.items()}
    print(json.dumps({"medians": medians}, indent=1))


if __name__ == "__main__":
    main()
