"""Where a canary's latency goes under `seedance bench fuzz`: each canary message lined up with the engine step
that produced it (its duration and batch size), the delay before the event loop delivered that step (loop lag),
and the delay from delivery to the canary client reading it (the writer, the socket, the client's own turn).

    python scripts/fuzz_trace.py --scale 0.1 [--engine thread] [--attacker idle] [--output trace.json]

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
import re
import resource
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import psutil

from seedance.bench.fuzz import launch_fuzz_server, run_fuzz
from seedance.bench.stats import percentiles_ms

SITE = str(Path(__file__).resolve().parent / "fuzz_trace_site")


def _pct(values: list[float]) -> dict:
    p = percentiles_ms(values, (50, 90, 99))
    return {**{k: round(v, 1) for k, v in p.items()}, "max": round(max(values) * 1000, 1) if values else None}


def _load(trace_dir: str) -> dict[str, list[dict]]:
    """Every trace record, by kind, in time order; each tagged with its process (`pid`)."""
    recs: dict[str, list[dict]] = {}
    for path in glob.glob(f"{trace_dir}/trace-*.jsonl"):
        pid = int(Path(path).stem.split("-")[1])
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            rec["pid"] = pid
            recs.setdefault(rec["k"], []).append(rec)
    for v in recs.values():
        v.sort(key=lambda r: r["t"])
    return recs


def _within(recs: list[dict], lo: float, hi: float) -> list[dict]:
    """Records that overlap [lo, hi] (a record: start t, duration d or none)."""
    starts = [r["t"] for r in recs]
    i = bisect.bisect_left(starts, lo - 1.0)  # no record here lasts a second
    return [r for r in recs[i:bisect.bisect_right(starts, hi)] if r["t"] + r.get("d", 0) >= lo]


def analyse(trace_dir: str, received: list[float], gaps: list[float], index: list[int], since: float,
            sends: list[tuple] | None = None, cpu_samples: list[tuple] | None = None,
            quiet_max: float | None = None) -> dict:
    recs = _load(trace_dir)
    steps, delivers = recs.get("step", []), recs.get("deliver", [])
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
        in_gap = steps[k0:k1]
        rows.append({"at": at, "place": place, "gap": gap, "step": s["d"] if s else None,
                     "step_cpu": s["cpu"] if s else None, "batch": s["running"] if s else None,
                     "step_tokens": s["tokens"] if s else None, "step_prefill": s["prefill"] if s else None,
                     "loop_lag": d["t"] - step_end, "to_client": at - d["t"],
                     "steps_in_gap": k1 - k0, "compute_in_gap": sum(x["d"] for x in in_gap),
                     "cpu_in_gap": sum(x["cpu"] for x in in_gap),
                     "prefill_in_gap": sum(x["prefill"] for x in in_gap)})
    by_batch: dict[str, list[float]] = {}
    for s in steps:
        if s["t"] >= since:
            by_batch.setdefault(str(min(s["running"], 16) // 4 * 4), []).append(s["d"])
    quiet_steps = [s["d"] for s in steps if s["t"] < since]
    worst = sorted(rows, key=lambda r: -r["gap"])[:12]
    details = [_explain(r, recs, sends or [], cpu_samples or []) for r in worst]
    slow = [r for r in rows if quiet_max and r["gap"] > 2 * quiet_max]
    return {
        "over_2x_quiet_max": _attribution(slow, recs),
        "gc_ms": {f"{proc}:gen{g}": {"n": len(v), **_pct(v)} for (proc, g), v in sorted(_gc_by(recs).items())},
        "core_apply_ms": {w: {"n": len(v), **_pct(v)} for w, v in sorted(_by(recs.get("apply", []), "what").items())},
        "gateway_lag_ms": _pct([r["d"] for r in recs.get("lag", [])]),
        "beside_ms": {w: {"n": len(v), "sum_s": round(sum(v), 2), **_pct(v)}
                      for w, v in sorted(_by(recs.get("beside", []), "what").items())},
        "core_loop_parts_ms": {p: _pct([r["d"] for r in recs.get("loop", []) if r["part"] == p])
                               for p in ("read", "send")},
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
        "worst": details,
    }


def _by(recs: list[dict], key: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in recs:
        out.setdefault(r[key], []).append(r["d"])
    return out


def _gc_by(recs: dict) -> dict:
    core = {r["pid"] for r in recs.get("step", [])}
    out: dict = {}
    for r in recs.get("gc", []):
        out.setdefault(("core" if r["pid"] in core else "gateway", r["gen"]), []).append(r["d"])
    return out


def _ms(v):
    return round(v * 1000, 1) if isinstance(v, float) else v


def _explain(row: dict, recs: dict, sends: list[tuple], cpu_samples: list[tuple]) -> dict:
    """One slow canary gap and what happened in it: the steps (wall and CPU), the core loop's other parts, GC in
    either process, the gateway's loop lag, each process's CPU share and what the fuzzers sent."""
    lo, hi = row["at"] - row["gap"], row["at"]
    core = {r["pid"] for r in recs.get("step", [])}
    out = {k: _ms(v) for k, v in row.items() if k != "at"}
    out["steps"] = [{"at": _ms(s["t"] - lo), "wall": _ms(s["d"]), "cpu": _ms(s["cpu"]), "seqs": s["running"],
                     "tokens": s["tokens"], "prefill": s["prefill"],
                     **({"thread_cpu": _ms(s["thread_cpu"]), "runq_wait": _ms(s.get("runq_wait")),
                         "minflt": s["minflt"], "flags": s["flags"],
                         "phases": {k: _ms(v) for k, v in s["phases"].items()}} if "phases" in s else {})}
                    for s in _within(recs.get("step", []), lo, hi)]
    out["core_loop"] = [{"part": r["part"], "at": _ms(r["t"] - lo), "wall": _ms(r["d"]), "cpu": _ms(r["cpu"]),
                         "commands": r["commands"]} for r in _within(recs.get("loop", []), lo, hi)]
    out["applied"] = [{"what": r["what"], "at": _ms(r["t"] - lo), "wall": _ms(r["d"]), "cpu": _ms(r["cpu"])}
                      for r in _within(recs.get("apply", []), lo, hi)]
    out["beside"] = [{"what": r["what"], "at": _ms(r["t"] - lo), "wall": _ms(r["d"]), "cpu": _ms(r["cpu"])}
                     for r in _within(recs.get("beside", []), lo, hi)]
    out["gc"] = [{"proc": "core" if r["pid"] in core else "gateway", "gen": r["gen"], "at": _ms(r["t"] - lo),
                  "ms": _ms(r["d"]), "cpu": _ms(r["cpu"])} for r in _within(recs.get("gc", []), lo, hi)]
    out["gateway_lag"] = [{"at": _ms(r["t"] - lo), "ms": _ms(r["d"])} for r in _within(recs.get("lag", []), lo, hi)]
    if row["place"] == 0:  # a request's first message: where its admission went
        enc = _within(recs.get("canary_encode", []), lo, hi)
        sub = _within(recs.get("canary_submit", []), lo, hi)
        adds = {r["id"]: r for r in recs.get("add", [])}
        admission = {}
        if enc:
            admission["to_tokenizer"] = _ms(enc[0]["t"] - lo)
            admission["tokenize"] = _ms(enc[0]["d"])
        if sub:
            admission["submit_at"] = _ms(sub[0]["t"] - lo)
            add = adds.get(sub[0]["id"])
            if add is not None:
                admission["core_added_at"] = _ms(add["t"] - lo)
            admission["admitted_at"] = _ms(sub[0]["t"] + sub[0]["d"] - lo)
        out["admission"] = admission
    window = [c for c in cpu_samples if lo - 0.1 <= c[0] <= hi + 0.1]
    if len(window) >= 2:
        dt = window[-1][0] - window[0][0]
        out["cpu_share"] = {name: round((window[-1][i] - window[0][i]) / dt, 2)
                            for i, name in enumerate(("gateway", "core", "fuzz_client", "others"), start=1)}
    sent = [x for x in sends if lo - 0.05 <= x[0] <= hi]
    kinds: dict[str, list[int]] = {}
    for _, kind, size in sent:
        kinds.setdefault(kind, []).append(size)
    out["fuzz_sent"] = {k: {"n": len(v), "bytes": sum(v), "largest": max(v)} for k, v in kinds.items()}
    return out


def _attribution(slow: list[dict], recs: dict) -> dict:
    """Of the canary gaps over 2x the quiet max: how many had a step that waited for a core (wall over 1.5x its
    CPU), a step with prefill, a GC over 5 ms in either process, a gateway loop lag over 10 ms."""
    if not slow:
        return {"n": 0}
    gcs, lags = recs.get("gc", []), recs.get("lag", [])
    steps = recs.get("step", [])
    n = {"descheduled_step": 0, "prefill_in_gap": 0, "gc_over_5ms": 0, "loop_lag_over_10ms": 0}
    for r in slow:
        lo, hi = r["at"] - r["gap"], r["at"]
        if any(s["d"] > 1.5 * s["cpu"] + 0.002 for s in _within(steps, lo, hi)):
            n["descheduled_step"] += 1
        if r["prefill_in_gap"]:
            n["prefill_in_gap"] += 1
        if any(g["d"] > 0.005 for g in _within(gcs, lo, hi)):
            n["gc_over_5ms"] += 1
        if any(g["d"] > 0.010 for g in _within(lags, lo, hi)):
            n["loop_lag_over_10ms"] += 1
    return {"n": len(slow), **n,
            "wall_in_gap_ms": _pct([r["compute_in_gap"] for r in slow]),
            "cpu_in_gap_ms": _pct([r["cpu_in_gap"] for r in slow])}


def _record_sends() -> list[tuple]:
    """(perf_counter, kind, bytes) for each fuzz message or request this process sends (the canary's left out)."""
    sends: list[tuple] = []
    ws = aiohttp.ClientWebSocketResponse
    send_str, send_bytes, request = ws.send_str, ws.send_bytes, aiohttp.ClientSession.request

    async def str_(self, data, *a, **kw):
        if '"canary-' not in data[:200]:
            m = re.search(r'"type":\s*"([a-z_.]{1,40})"', data[:80])
            kind = "ws:" + (m.group(1) if m else "other")
            sends.append((time.perf_counter(), kind, len(data)))
        return await send_str(self, data, *a, **kw)

    async def bytes_(self, data, *a, **kw):
        sends.append((time.perf_counter(), "ws:binary", len(data)))
        return await send_bytes(self, data, *a, **kw)

    def request_(self, method, url, *a, **kw):
        data = kw.get("data") or b""
        sends.append((time.perf_counter(), f"http:{method} {str(url).split('/', 3)[-1].split('?')[0][:24]}",
                      len(data)))
        return request(self, method, url, *a, **kw)

    ws.send_str, ws.send_bytes, aiohttp.ClientSession.request = str_, bytes_, request_
    return sends


def _sample_cpu(gateway: psutil.Process, core: psutil.Process | None, out: list[tuple],
                stop: threading.Event) -> None:
    """Every 50 ms: (perf_counter, CPU seconds of the gateway, the core, this fuzz client, everything else)."""
    me = psutil.Process()
    while not stop.is_set():
        try:
            g, c, m = (sum(p.cpu_times()[:2]) if p is not None else 0.0 for p in (gateway, core, me))
        except psutil.Error:
            return
        box = psutil.cpu_times()
        out.append((time.perf_counter(), g, c, m, box.user + box.system + box.nice - g - c - m))
        stop.wait(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.1, help="share of the full fuzz size (100k / 10k / 50k)")
    ap.add_argument("--engine", choices=("thread", "process"), default="process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output")
    ap.add_argument("--profile", metavar="FILE", help="py-spy the server (all threads, raw stacks) into FILE")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a server setting")
    ap.add_argument("--attacker", choices=("normal", "idle"), default="normal", help="the fuzzers' scheduling")
    ap.add_argument("--quiet-match", action="store_true", help="the quiet canary again after the fuzz, as many "
                    "requests as under fuzz (its max is then the slow-gap threshold's reference)")
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
    sends = _record_sends()
    samples: list[tuple] = []
    sampling = threading.Event()
    core = next((c for c in proc.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())), None)
    sampler = threading.Thread(target=_sample_cpu, args=(proc, core, samples, sampling), daemon=True)
    sampler.start()
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
            seed=args.seed, hang_timeout_s=60, quiet_match=args.quiet_match, attacker=args.attacker, server=server))
        server_cpu = cpu() - server_cpu0
        core_cpu = sum(core.cpu_times()[:2]) - samples[0][2] if core is not None and samples else None
    finally:
        sampling.set()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        server.stop()
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    loaded = report.canary_runs[1]
    quiet = report.canary_runs[0]
    quiet_max = report.quiet_matched["max_ms"] / 1000 if args.quiet_match else max(quiet.gaps_s)
    out = {"engine": args.engine, "scale": args.scale, "trace_dir": trace_dir,
           "settings": overrides, "defects": report.defects,
           "attacker": report.attacker, "canary_quiet_matched": report.quiet_matched,
           "duration_s": report.duration_s,
           "examples": report.http["examples"] + report.ws_json["examples"] + report.ws_binary["examples"],
           "canary_quiet": report.quiet, "canary_loaded": report.loaded,
           "cpu_s": {"server": round(server_cpu, 1), "core": round(core_cpu, 1) if core_cpu else None,
                     "fuzz_client": round(client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime,
                                          1)},
           "loaded": analyse(trace_dir, loaded.received, loaded.gaps_s, loaded.index,
                             loaded.received[0] - loaded.gaps_s[0], sends, samples,
                             quiet_max), "load_avg": os.getloadavg()}
    text = json.dumps(out, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
