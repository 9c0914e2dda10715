"""Where a canary's latency goes under `seedance bench fuzz`: each canary message lined up with the engine step
that produced it (its duration and batch size), the delay before the event loop delivered that step (loop lag),
and the delay from delivery to the canary client reading it (the writer, the socket, the client's own turn).

    python scripts/fuzz_trace.py --scale 0.1 [--engine process] [--output trace.json]

The server runs with scripts/fuzz_trace_site/sitecustomize.py on its path, which records every engine step and
delivery (a diagnostic only). CPU seconds of the server (and its engine process) and of the fuzz client are
reported too, to see who takes the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import glob
import json
import os
import resource
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil

from seedance.bench.fuzz import launch_fuzz_server, run_fuzz
from seedance.bench.stats import percentiles_ms

SITE = str(Path(__file__).resolve().parent / "fuzz_trace_site")


def _pct(values: list[float]) -> dict:
    p = percentiles_ms(values, (50, 90, 99))
    return {**{k: round(v, 1) for k, v in p.items()}, "max": round(max(values) * 1000, 1) if values else None}


def analyse(trace_dir: str, received: list[float], gaps: list[float], index: list[int], since: float) -> dict:
    steps, delivers = [], []
    for path in glob.glob(f"{trace_dir}/trace-*.jsonl"):
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            (steps if rec["k"] == "step" else delivers).append(rec)
    steps.sort(key=lambda r: r["t"])
    delivers.sort(key=lambda r: r["t"])
    step_starts = [s["t"] for s in steps]
    deliver_times = [d["t"] for d in delivers]
    rows = []
    for at, gap, place in zip(received, gaps, index, strict=True):
        i = bisect.bisect_right(deliver_times, at) - 1
        if i < 0:
            continue
        d = delivers[i]
        j = bisect.bisect_left(step_starts, d["started"])  # the step this delivery carries began just after
        s = steps[j] if j < len(steps) else None
        step_end = s["t"] + s["d"] if s else d["started"]
        # the steps run since the canary's previous message: how much of the gap was compute
        prev = at - gap
        k0 = bisect.bisect_left(step_starts, prev)
        k1 = bisect.bisect_right(step_starts, at)
        rows.append({"place": place, "gap": gap, "step": s["d"] if s else None, "batch": s["running"] if s else None,
                     "loop_lag": d["t"] - step_end, "to_client": at - d["t"],
                     "steps_in_gap": k1 - k0, "compute_in_gap": sum(x["d"] for x in steps[k0:k1])})
    by_batch: dict[str, list[float]] = {}
    for s in steps:
        if s["t"] >= since:
            by_batch.setdefault(str(min(s["running"], 16) // 4 * 4), []).append(s["d"])
    quiet_steps = [s["d"] for s in steps if s["t"] < since]
    worst = sorted(rows, key=lambda r: -r["gap"])[:12]
    return {
        "canary_messages": len(rows),
        "gap_ms": _pct([r["gap"] for r in rows]),
        "step_ms": _pct([r["step"] for r in rows if r["step"] is not None]),
        "loop_lag_ms": _pct([r["loop_lag"] for r in rows]),
        "to_client_ms": _pct([r["to_client"] for r in rows]),
        "first_gap_ms": _pct([r["gap"] for r in rows if r["place"] == 0]),
        "later_gap_ms": _pct([r["gap"] for r in rows if r["place"] > 0]),
        "quiet_step_ms": _pct(quiet_steps),
        "loaded_step_ms_by_batch": {k: {"n": len(v), **_pct(v)}
                                    for k, v in sorted(by_batch.items(), key=lambda kv: int(kv[0]))},
        "compute_in_gap_ms": _pct([r["compute_in_gap"] for r in rows]),
        "batch": {"p50": sorted(r["batch"] for r in rows if r["batch"] is not None)[len(rows) // 2] if rows else None,
                  "max": max((r["batch"] for r in rows if r["batch"] is not None), default=None)},
        "all_steps": {"count": len(steps), "ms": _pct([s["d"] for s in steps]),
                      "batch_max": max((s["running"] for s in steps), default=None)},
        "worst": [{k: round(v * 1000, 1) if isinstance(v, float) else v for k, v in r.items()} for r in worst],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.1, help="share of the full fuzz size (100k / 10k / 50k)")
    ap.add_argument("--engine", choices=("thread", "process"), default="thread")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output")
    ap.add_argument("--profile", metavar="FILE", help="py-spy the server (all threads, raw stacks) into FILE")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a server setting")
    args = ap.parse_args()
    trace_dir = tempfile.mkdtemp(prefix="seedance-trace-")
    os.environ["FUZZ_TRACE_DIR"] = trace_dir
    os.environ["PYTHONPATH"] = os.pathsep.join([SITE, *filter(None, [os.environ.get("PYTHONPATH")])])
    overrides = dict(kv.split("=", 1) for kv in args.set)
    server = launch_fuzz_server(engine_mode=args.engine, **overrides)
    del os.environ["FUZZ_TRACE_DIR"]
    proc = psutil.Process(server.pid)

    def cpu() -> float:
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            total += sum(child.cpu_times()[:2])
        return total

    for path in glob.glob(f"{trace_dir}/trace-*.jsonl"):  # start-up and warm-up steps are not the run's
        Path(path).write_text("")
    server_cpu0 = cpu()
    spy = None
    if args.profile:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--threads", "--subprocesses",
                                "--nonblocking", "-r", "50", "--format", "raw", "-o", args.profile],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        report = asyncio.run(run_fuzz(
            server.ws, server.http, ws_messages=int(100_000 * args.scale), binary_frames=int(10_000 * args.scale),
            http_bodies=int(50_000 * args.scale), realtime_events=int(20_000 * args.scale),
            seed=args.seed, hang_timeout_s=60, server=server))
        server_cpu = cpu() - server_cpu0
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        server.stop()
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    loaded = report.canary_runs[1]
    out = {"engine": args.engine, "scale": args.scale, "settings": overrides, "defects": report.defects,
           "duration_s": report.duration_s,
           "examples": report.http["examples"] + report.ws_json["examples"] + report.ws_binary["examples"],
           "canary_quiet": report.quiet, "canary_loaded": report.loaded,
           "cpu_s": {"server": round(server_cpu, 1),
                     "fuzz_client": round(client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime,
                                          1)},
           "loaded": analyse(trace_dir, loaded.received, loaded.gaps_s, loaded.index,
                             loaded.received[0] - loaded.gaps_s[0]), "load_avg": os.getloadavg()}
    text = json.dumps(out, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
