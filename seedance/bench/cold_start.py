"""`seedance bench cold-start`: start `seedance serve` N times and time each phase from process start to the
first token, as the server saw it (GET /stats `cold_start_ms`: the marks the cold-start trace is built from)
and as a client saw it (Popen → listening → ready → first WebSocket connection → first token).

Each phase is reported as mean ± standard deviation over the runs, with the end-to-end total; the report goes
to JSON and a waterfall PNG. --compare-warmup also starts as many servers with EngineConfig.warmup off
(interleaved with the others, so a drift in machine load hits both alike) and compares the first request's
TTFT, which is what the warm-up is for.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from seedance.bench.server_process import launch
from seedance.bench.serving import MemorySampler
from seedance.observability.tracing import COLD_START_PHASES, cold_start_spans

# Two short prompts (under one 16-token KV block, so the second gets no prefix-cache hit from the first): the
# first request pays whatever first-call costs are left; the second shows the steady TTFT to compare with.
PROMPTS = ("In the beginning", "And God said")


def _mean_std(values: list[float]) -> dict[str, float | None]:
    """mean ± sample std, and the median: on a shared 2-core machine one contended run can carry the mean.
    None for no values (a phase absent from every run), so the JSON stays strict."""
    if not values:
        return {"mean": None, "std": None, "median": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values)}


async def _first_requests(ws_url: str, max_tokens: int, t0: float) -> dict[str, float]:
    """Open the server's first WebSocket and run the two prompts one after the other (each max_tokens long).
    Seconds since t0 for the connection and the first token; each request's TTFT in ms."""
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        out["connected_s"] = time.perf_counter() - t0
        for i, prompt in enumerate(PROMPTS):
            sent = time.perf_counter()
            await ws.send_json({"type": "generate", "id": f"cold-{i}", "prompt": prompt, "max_tokens": max_tokens,
                                "ignore_eos": True})
            first = None
            done = False
            while not done:
                msg = await ws.receive(timeout=120)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"WebSocket closed before the request finished: {msg.type!r} {msg.data!r}")
                data = json.loads(msg.data)
                for m in data if isinstance(data, list) else [data]:
                    if m["type"] == "error":
                        raise RuntimeError(f"server error: {m}")
                    if m["type"] == "chunk" and first is None:
                        first = time.perf_counter()
                    done = done or m["type"] == "done"
            if first is None:
                raise RuntimeError("the request finished without a token")
            if i == 0:
                out["first_token_s"] = first - t0
            out[f"ttft_{('first', 'second')[i]}_ms"] = (first - sent) * 1000
    return out


def one_run(backend: str, warmup: bool, rate: float, max_tokens: int, workdir: Path,
            engine_mode: str = "thread", python_path: str | None = None) -> dict:
    """One server from Popen to its first tokens, then stopped: the server's marks and the client's view.
    python_path: a source tree to run the server from instead (a "before" checkout, scripts/cold_start_ab.py)."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {"session_store": f"sqlite://{workdir / 'sessions.db'}", "warmup": warmup,
                                   "engine_mode": engine_mode}
    if backend == "synthetic":
        settings["synthetic_rate"] = rate
    t0 = time.perf_counter()
    proc = launch(settings, workdir / "server.log", args=("--log-level", "warning"), poll_s=0.01,
                  python_path=python_path)
    try:
        client = asyncio.run(_first_requests(proc.ws, max_tokens, t0))
        marks = proc.stats()["cold_start_ms"]
        memory = _memory_mib(proc.pid)
    finally:
        proc.stop()
    phases = {name: {"start_ms": start, "duration_ms": end - start, "end_ms": end}
              for name, _parent, start, end in cold_start_spans(marks)}
    return {"warmup": warmup, "marks_ms": marks, "phases": phases, "memory_mib": memory,
            "client": {"listening_s": proc.timeline["listening_s"], "ready_s": proc.timeline["ready_s"], **client}}


def _memory_mib(pid: int) -> dict[str, float]:
    """After the first requests: RSS and PSS summed over the server's processes (gateway, engine process,
    multiprocessing's resource tracker), and the gateway's own RSS."""
    import psutil

    rss, pss = MemorySampler(pid).sample()
    return {"rss": round(rss, 1), "pss": round(pss, 1),
            "gateway_rss": round(psutil.Process(pid).memory_info().rss / 2**20, 1)}


def summarize(runs: list[dict]) -> dict:
    """Per phase and per client measurement: mean ± std over the runs (phases missing from a run are skipped)."""
    phases = []
    for name, parent, _starts, _end in COLD_START_PHASES:
        present = [r["phases"][name] for r in runs if name in r["phases"]]
        phases.append({"phase": name, "parent": parent, "n": len(present),
                       **{k: _mean_std([p[k] for p in present]) for k in ("start_ms", "duration_ms", "end_ms")}})
    client = {}
    for k in ("listening_s", "ready_s", "connected_s", "first_token_s", "ttft_first_ms", "ttft_second_ms"):
        scale, name = (1000.0, k[:-2] + "_ms") if k.endswith("_s") else (1.0, k)
        client[name] = _mean_std([r["client"][k] * scale for r in runs])
    server_total = _mean_std([r["marks_ms"]["first_token"] for r in runs if "first_token" in r["marks_ms"]])
    return {"runs": len(runs), "phases": phases, "client_ms": client, "process_start_to_first_token_ms": server_total}


def run_cold_start_bench(runs: int = 5, backend: str = "model", warmup_modes: tuple[bool, ...] = (True,),
                         rate: float = 50.0, max_tokens: int = 8, output: str | None = None,
                         plot: str | None = None, console=None, engine_mode: str = "thread") -> dict:
    """runs servers per warm-up mode, interleaved across modes; the waterfall is of the first mode.
    engine_mode: `seedance serve --engine` (thread or process)."""
    if backend not in ("model", "synthetic"):
        raise ValueError("backend must be model or synthetic")
    load_before = os.getloadavg()
    results: dict[bool, list[dict]] = {mode: [] for mode in warmup_modes}
    with tempfile.TemporaryDirectory(prefix="seedance-cold-start-") as tmp:
        for i in range(runs):
            for mode in warmup_modes:
                run = one_run(backend, mode, rate, max_tokens, Path(tmp) / f"run-{i}-{'warm' if mode else 'cold'}",
                              engine_mode)
                results[mode].append(run)
                if console is not None:
                    console.print(f"[dim]run {i + 1}/{runs} warmup={'on' if mode else 'off'}: first token "
                                  f"{run['client']['first_token_s'] * 1000:.0f} ms after Popen, first TTFT "
                                  f"{run['client']['ttft_first_ms']:.1f} ms[/dim]")
    report = {
        "settings": {"runs": runs, "backend": backend, "engine_mode": engine_mode,
                     "warmup_modes": ["on" if m else "off" for m in warmup_modes],
                     "rate": rate if backend == "synthetic" else None, "max_tokens": max_tokens, "prompts": PROMPTS},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "summary": {("warmup_on" if m else "warmup_off"): summarize(rs) for m, rs in results.items()},
        "runs": [r for rs in results.values() for r in rs],
    }
    if len(warmup_modes) == 2:
        on, off = report["summary"]["warmup_on"]["client_ms"], report["summary"]["warmup_off"]["client_ms"]
        report["warmup_effect_ms"] = {f"{k}_{stat}": round(off[k][stat] - on[k][stat], 3)
                                      for k in ("ttft_first_ms", "ttft_second_ms", "ready_ms", "first_token_ms")
                                      for stat in ("mean", "median")}
    from seedance.bench.plots import can_plot

    if plot and not can_plot(console):  # matplotlib: the optional `bench` extra
        report["plot"] = None
    elif plot:
        from seedance.bench.plots import write_waterfall

        main = report["summary"]["warmup_on" if warmup_modes[0] else "warmup_off"]
        c = main["client_ms"]
        report["plot"] = write_waterfall(
            main["phases"], Path(plot),
            f"Cold start, {backend} backend, {engine_mode} engine, "
            f"warm-up {'on' if warmup_modes[0] else 'off'} ({runs} runs)",
            {"ready (client)": c["ready_ms"]["mean"], "first token (client)": c["first_token_ms"]["mean"]})
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _pm(v: dict[str, float]) -> str:
    return f"{v['mean']:.0f} ± {v['std']:.0f}"


def render(console, report: dict) -> None:
    from rich.table import Table

    for key, s in report["summary"].items():
        settings = report["settings"]
        title = (f"Cold start, {settings['backend']} backend, {settings.get('engine_mode', 'thread')} engine, "
                 f"{key.replace('_', ' ')} ({s['runs']} runs)")
        table = Table(title=f"{title}: ms since process start, mean ± std")
        table.add_column("phase", no_wrap=True)
        for col in ("starts at", "duration", "ends at"):
            table.add_column(col, justify="right", no_wrap=True)
        for p in s["phases"]:
            if p["n"]:
                table.add_row(("  " if p["parent"] else "") + p["phase"] + ("" if p["n"] == s["runs"] else
                                                                            f" ({p['n']} runs)"),
                              _pm(p["start_ms"]), _pm(p["duration_ms"]), _pm(p["end_ms"]))
        console.print(table)
        totals = Table(title=f"{title}: end to end, ms")
        totals.add_column("measure", no_wrap=True)
        totals.add_column("mean ± std", justify="right", no_wrap=True)
        totals.add_column("median", justify="right", no_wrap=True)
        c = s["client_ms"]
        for label, v in (("process start → first token (server)", s["process_start_to_first_token_ms"]),
                         ("Popen → listening (client)", c["listening_ms"]), ("Popen → ready (client)", c["ready_ms"]),
                         ("Popen → first connection (client)", c["connected_ms"]),
                         ("Popen → first token (client)", c["first_token_ms"]),
                         ("first request TTFT (client)", c["ttft_first_ms"]),
                         ("second request TTFT (client)", c["ttft_second_ms"])):
            totals.add_row(label, f"{v['mean']:.1f} ± {v['std']:.1f}", f"{v['median']:.1f}")
        console.print(totals)
    if effect := report.get("warmup_effect_ms"):
        console.print("warm-up on saves (ms, off − on; negative: on is slower): "
                      + ", ".join(f"{k} {v:+.1f}" for k, v in effect.items()))
    m = report["machine"]
    console.print(f"load average before {m['loadavg_before']}, after {m['loadavg_after']} ({m['cpus']} CPUs)")
