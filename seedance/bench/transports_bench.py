"""`seedance bench transports`: the same streaming workload over HTTP polling, SSE and WebSocket.

Starts its own `seedance serve` subprocess on a free loopback port (or targets --url), then for each
transport and concurrency level runs N closed-loop clients spread over --processes load processes, while
a thread samples the server's CPU and RSS with psutil. Then memory per idle / streaming WebSocket
connection, cold start, and optionally a cross-check of the SSE transport with `wrk`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

from seedance.bench.loadgen import TRANSPORTS, WorkerSpec, raise_nofile_limit, request_body, run_worker
from seedance.bench.server_process import ServerProcess, launch
from seedance.bench.stats import percentiles_ms
from seedance.bench.wrk import run_wrk

PERCENTILES = (50, 90, 99, 99.9)
CDF_POINTS = 101  # quantiles kept per latency distribution for the CDF plots


def server_settings(backend: str, rate: float, max_clients: int, engine_mode: str | None = None,
                    workers: int | None = None, ws_stack: str | None = None) -> dict[str, object]:
    """Settings that let one loopback client IP open max_clients streams without tripping a limit."""
    big = max(4 * max_clients, 1024)
    env = {
        "max_pending_tokenize": big,  # every client may submit in the same instant
        "max_connections": big,
        "max_requests_per_connection": 64,
        "listen_backlog": 4096,  # net.core.somaxconn here: a ramp of 1,000 handshakes/s must not overflow it
        "max_connections_per_ip": 0,
        "max_pending_connections_per_ip": 0,  # every client is 127.0.0.1: a ramp has thousands mid-handshake
        "max_connections_per_token": 0,
        "http_requests_per_s": 0,
        "ws_messages_per_s": 0,
        "max_waiting": big,
        "max_jobs": big,
        "job_ttl_s": 5,
        "max_num_seqs": max(64, max_clients + 16) if backend == "synthetic" else 64,
        "max_num_batched_tokens": max(256, 2 * max_clients + 64) if backend == "synthetic" else 256,
    }
    if backend == "synthetic":
        env["synthetic_rate"] = rate
    if engine_mode is not None:  # only when asked: a server from before the setting existed refuses the name
        env["engine_mode"] = engine_mode
    if workers is not None:
        env["workers"] = workers
    if ws_stack is not None:  # the same: only when asked
        env["ws_stack"] = ws_stack
    return env


@dataclass
class Server:
    """The server under test: one this benchmark started (process set) or one at --url."""

    url: str
    process: ServerProcess | None = None
    timeline: dict = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def port(self) -> int | None:
        return self.process.port if self.process else None

    @property
    def log_path(self) -> str | None:
        return self.process.log_path if self.process else None

    def stop(self) -> None:
        if self.process:
            self.process.stop()


def wait_for_workers(url: str, workers: int, source_addresses: int, timeout_s: float = 120.0) -> None:
    """`--workers N`: launch() saw one worker ready; wait until the load's source addresses reach all N."""
    from seedance.bench.loadgen import source_address

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = set()
        for k in range(min(source_addresses, 64)):
            try:
                with httpx.Client(transport=httpx.HTTPTransport(local_address=source_address(k)), timeout=5) as c:
                    seen.add(c.get(f"{url}/stats").json().get("worker"))
            except (httpx.HTTPError, ValueError):
                pass
        if len(seen - {None}) >= workers:
            return
        time.sleep(0.5)
    raise RuntimeError(f"not all {workers} workers answered from {source_addresses} source addresses")


def first_token_s(url: str, timeout: float = 30.0) -> float:
    """Seconds from sending one SSE completion to its first data event."""
    body = {"model": "seedance-tiny", "prompt": "In the beginning", "max_tokens": 4, "stream": True}
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=timeout) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                return time.perf_counter() - t0
    raise RuntimeError("no token")


def start_server(backend: str, rate: float, max_clients: int, workdir: Path, engine_mode: str | None = None,
                 server_path: str | None = None, workers: int | None = None, ws_stack: str | None = None) -> Server:
    """`seedance serve` on a free loopback port; records process start → listening → ready → first token.
    server_path: a source tree (another commit's checkout) whose seedance the server runs instead of this one."""
    settings = {"session_store": f"sqlite://{workdir / 'sessions.db'}",
                **server_settings(backend, rate, max_clients, engine_mode, workers, ws_stack)}
    t0 = time.perf_counter()
    proc = launch(settings, workdir / "server.log", args=("--log-level", "warning"), python_path=server_path)
    first = first_token_s(proc.url)
    timeline = {"process_start_to_listening_s": proc.timeline["listening_s"],
                "process_start_to_ready_s": proc.timeline["ready_s"],
                "process_start_to_first_token_s": time.perf_counter() - t0,
                "first_request_ttft_s": first}
    return Server(proc.url, proc, timeline)


class Sampler(threading.Thread):
    """Samples the server's CPU% (of one core) and RSS every interval while running, over its whole process
    tree (gateway workers, the engine process), and, when given, the load processes' CPU% and the whole
    machine's, which say whether the server or the box was the limit."""

    def __init__(self, pid: int | None, interval: float = 0.5, load_pids: list[int] = ()) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid) if pid else None
        self.tree: dict[int, psutil.Process] = {}
        self.load = [psutil.Process(p) for p in load_pids]
        self.interval = interval
        self.cpu: list[float] = []
        self.rss: list[int] = []
        self.load_cpu: list[float] = []
        self.machine_cpu: list[float] = []
        self._halt = threading.Event()

    def _tree(self) -> list[psutil.Process]:
        """The server and its descendants; a process seen for the first time is primed (its first
        cpu_percent reads 0) and counted from the next sample on."""
        current = [self.proc, *self.proc.children(recursive=True)]
        for p in current:
            if p.pid not in self.tree:
                self.tree[p.pid] = p
                with contextlib.suppress(psutil.Error):
                    p.cpu_percent(None)
        alive = {p.pid for p in current}
        for pid in [pid for pid in self.tree if pid not in alive]:
            del self.tree[pid]
        return list(self.tree.values())

    def run(self) -> None:
        if self.proc is None:
            return
        try:
            self._tree()
        except psutil.Error:
            return
        for p in self.load:
            p.cpu_percent(None)
        psutil.cpu_percent(None)
        while not self._halt.wait(self.interval):
            try:
                tree = self._tree()
            except psutil.Error:
                return
            cpu = rss = 0.0
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
            self.cpu.append(cpu)
            self.rss.append(int(rss))
            with contextlib.suppress(psutil.Error):
                if self.load:
                    self.load_cpu.append(sum(p.cpu_percent(None) for p in self.load))
            self.machine_cpu.append(psutil.cpu_percent(None))

    def finish(self) -> dict:
        self._halt.set()
        self.join()
        if not self.cpu:
            return {"cpu_percent_mean": None, "cpu_percent_max": None, "rss_mib_max": None}
        out = {
            "cpu_percent_mean": float(np.mean(self.cpu)),
            "cpu_percent_max": float(np.max(self.cpu)),
            "rss_mib_max": max(self.rss) / 2**20,
            "machine_cpu_percent_mean": float(np.mean(self.machine_cpu)),  # of all cores: 100 = every core busy
        }
        if self.load_cpu:
            out["loadgen_cpu_percent_mean"] = float(np.mean(self.load_cpu))  # of one core, all load processes
        return out


def load_process_pids(server_pid: int | None) -> list[int]:
    """This process's children other than the server: the load processes of the pool."""
    return [c.pid for c in psutil.Process().children() if c.pid != server_pid]


ROLES = ("gateway", "engine", "other")


def process_role(proc: psutil.Process, port: int | None) -> str:
    """Which part of the server a process of its tree is: a gateway holds the TCP listening socket on the
    server's port (the one process of --engine thread, each --workers gateway); a multiprocessing child that
    does not is the engine process; the rest (the --workers supervisor, multiprocessing's resource tracker)
    is "other"."""
    try:
        if port is not None and any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                                    for c in proc.net_connections(kind="tcp")):
            return "gateway"
        cmdline = proc.cmdline()
    except psutil.Error:
        return "other"
    if port is None:
        return "gateway"
    if any("resource_tracker" in part for part in cmdline):
        return "other"
    return "engine" if "--multiprocessing-fork" in cmdline else "other"


def tree_cpu_by_role(pid: int | None, port: int | None = None,
                     roles: dict[int, str] | None = None) -> dict[str, float] | None:
    """User + system CPU seconds of a process and all its descendants, summed per role (process_role): the
    gateway processes, the engine process, the rest; and each role's system seconds alone ("ROLE_system":
    the kernel's share, loopback TCP's send and receive paths for a gateway). roles caches each pid's role
    across calls (a role is found once per process, so both ends of a window split the same processes the
    same way)."""
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    roles = {} if roles is None else roles
    total = dict.fromkeys([*ROLES, *(f"{role}_system" for role in ROLES)], 0.0)
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        if proc.pid not in roles:
            roles[proc.pid] = process_role(proc, port)
        total[roles[proc.pid]] += t.user + t.system
        total[f"{roles[proc.pid]}_system"] += t.system
    return total


def cpu_costs(start: dict[str, float] | None, end: dict[str, float] | None, chunks: int, tokens: int) -> dict:
    """The measured window's CPU seconds, whole tree and per role, and each per delivered chunk and token.
    A role whose processes did not exist at the window's start counts from zero (it started inside it)."""
    if start is None or end is None:
        return {"cpu_s": None, "cpu_us_per_chunk": None, "chunks_per_cpu_s": None}
    per_role = {role: end[role] - start.get(role, 0.0) for role in ROLES}
    system = {role: end.get(f"{role}_system", 0.0) - start.get(f"{role}_system", 0.0) for role in ROLES}
    cpu_s = sum(per_role.values())
    out: dict = {"cpu_s": cpu_s,
                 "cpu_us_per_chunk": cpu_s / chunks * 1e6 if chunks else None,
                 "chunks_per_cpu_s": chunks / cpu_s if cpu_s else None,
                 "cpu_us_per_token": cpu_s / tokens * 1e6 if tokens else None,
                 "tokens_per_chunk": tokens / chunks if chunks else None}
    for role in ("gateway", "engine"):
        out[f"{role}_cpu_s"] = per_role[role]
        out[f"{role}_cpu_us_per_chunk"] = per_role[role] / chunks * 1e6 if chunks else None
        out[f"{role}_cpu_us_per_token"] = per_role[role] / tokens * 1e6 if tokens else None
        out[f"{role}_system_share"] = system[role] / per_role[role] if per_role[role] > 0 else None
    out["other_cpu_s"] = per_role["other"]
    return out


def connection_summary(clients: int, connected_at: list[float], handshake_s: list[float], ramp: float) -> dict:
    """When the clients first got connected (seconds from the level's start): all of them, by when, and how fast
    the server accepted (peak handshakes completed in one second; the arrival rate the ramp asked for)."""
    per_second = np.bincount(np.asarray(connected_at, dtype=float).astype(int)) if connected_at else np.zeros(1)
    return {
        "connected": len(connected_at),
        "time_to_all_connected_s": connected_at[-1] if connected_at and len(connected_at) == clients else None,
        "handshakes_per_s_peak": int(per_second.max()),
        "handshakes_per_s_mean": len(connected_at) / connected_at[-1] if connected_at and connected_at[-1] > 0
        else None,
        "arrivals_per_s": clients / ramp if ramp else None,
        "connected_by_s": np.cumsum(per_second).tolist() if connected_at else [],  # clients connected by second k + 1
        "handshake_ms": percentiles_ms(handshake_s, (50, 99)) if handshake_s else None,
    }


def latency_summary(seconds: list[float]) -> dict:
    out = {"count": len(seconds), **percentiles_ms(seconds, PERCENTILES)}
    out["cdf_ms"] = (np.percentile(np.asarray(seconds) * 1000.0, np.linspace(0, 100, CDF_POINTS)).round(3).tolist()
                     if seconds else [])
    return out


def run_level(pool: ProcessPoolExecutor, server: Server, transport: str, clients: int, processes: int,
              max_tokens: int, duration: float, progress=None, task=None, ramp: float = 0.0,
              source_addresses: int = 1) -> dict:
    """One transport at one level: clients start over `ramp` seconds, then `duration` seconds are measured."""
    processes = max(1, min(processes, clients))
    share = [clients // processes + (i < clients % processes) for i in range(processes)]
    start_at = time.time() + 1.0 + 0.5 * processes  # let every spawned process be up before the clock starts
    specs = [WorkerSpec(transport, server.url, n, max_tokens, duration, start_at,
                        request_timeout_s=max(30.0, duration), worker_index=i, ramp_s=ramp,
                        source_addresses=source_addresses)
             for i, n in enumerate(share)]
    futures = [pool.submit(run_worker, s) for s in specs]
    while time.time() < start_at + ramp:
        if progress is not None:
            progress.update(task, completed=max(0.0, time.time() - start_at))
        time.sleep(0.05)
    sampler = Sampler(server.pid, load_pids=load_process_pids(server.pid))
    sampler.start()
    window_end = start_at + ramp + duration
    roles: dict[int, str] = {}
    port = server.port

    def cpu_now() -> dict[str, float] | None:
        return tree_cpu_by_role(server.pid, port, roles)

    cpu_start, cpu_end = cpu_now(), None
    while not all(f.done() for f in futures):
        if progress is not None:
            progress.update(task, completed=min(ramp + duration, time.time() - start_at))
        if cpu_end is None and time.time() >= window_end:
            cpu_end = cpu_now()
        time.sleep(0.05)
    if cpu_end is None:
        cpu_end = cpu_now()
    usage = sampler.finish()
    if progress is not None:
        progress.update(task, completed=ramp + duration)
    parts = [f.result() for f in futures]
    elapsed = max(p["elapsed_s"] for p in parts)
    completed = sum(p["completed"] for p in parts)
    chunks = sum(p["chunks"] for p in parts)
    errors, timeouts = sum(p["errors"] for p in parts), sum(p["timeouts"] for p in parts)
    never = sum(p["never_connected"] for p in parts)
    connected_at = sorted(x for p in parts for x in p["connected_at_s"])
    tokens = sum(p["tokens"] for p in parts)
    # The server's process tree (gateway workers and engine process), measured window; split per role.
    usage.update(cpu_costs(cpu_start, cpu_end, chunks, tokens))
    return {
        "transport": transport,
        "clients": clients,
        "processes": processes,
        "ramp_s": ramp,
        "elapsed_s": elapsed,
        "completed": completed,
        "requests_per_s": completed / elapsed,
        "chunks": chunks,
        "chunks_per_s": chunks / elapsed,
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "tokens_per_chunk": tokens / chunks if chunks else None,
        "errors": errors,
        "timeouts": timeouts,
        "connect_timeouts": sum(p["connect_timeouts"] for p in parts),
        "never_connected": never,
        "failures": errors + timeouts + never,  # a client never connected by the level's end is a failure
        "connections": connection_summary(clients, connected_at, [x for p in parts for x in p["handshake_s"]], ramp),
        "error_samples": [e for p in parts for e in p["error_samples"]][:5],
        "ttft_ms": latency_summary([x for p in parts for x in p["ttft_s"]]),
        "inter_chunk_ms": latency_summary([x for p in parts for x in p["itl_s"]]),
        "server": usage,
    }


def find_knee(rows: list[dict], p99_bound_ms: float) -> dict:
    """The last level before throughput stops rising by > 10% or the inter-chunk / TTFT p99 crosses the bound."""
    rows = sorted(rows, key=lambda r: r["clients"])
    knee, reason = rows[-1]["clients"], "throughput still rising by > 10% at the highest level"
    for prev, row in itertools.pairwise(rows):
        if row["chunks_per_s"] < 1.1 * prev["chunks_per_s"]:
            knee, reason = prev["clients"], f"chunks/s rose < 10% from {prev['clients']} to {row['clients']} clients"
            break
        p99 = max(row["inter_chunk_ms"]["p99"] or 0, row["ttft_ms"]["p99"] or 0)
        if p99 > p99_bound_ms:
            knee, reason = prev["clients"], f"p99 {p99:.0f} ms > {p99_bound_ms:g} ms at {row['clients']} clients"
            break
    first = rows[0]
    if max(first["inter_chunk_ms"]["p99"] or 0, first["ttft_ms"]["p99"] or 0) > p99_bound_ms:
        knee, reason = None, f"p99 above {p99_bound_ms:g} ms already at {first['clients']} clients"
    return {"clients": knee, "reason": reason}


async def _memory_probe(url: str, k: int, max_tokens: int, pid: int | None) -> dict:
    import aiohttp

    proc = psutil.Process(pid) if pid else None

    def rss() -> float | None:
        return proc.memory_info().rss / 2**20 if proc else None

    def stats() -> dict:
        return httpx.get(f"{url}/stats", timeout=10).json()

    out: dict = {"connections": k}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up: a few streams over one connection, so one-time costs (lazy imports, first allocations of
        # the WebSocket and engine paths) are not counted as per-connection memory.
        async with session.ws_connect(f"{url.replace('http', 'ws', 1)}/v1/stream", heartbeat=None) as ws:
            for i in range(8):
                await ws.send_str(json.dumps({"type": "generate", "id": f"w{i}", "prompt": "Amen",
                                              "max_tokens": 4, "ignore_eos": True}))
            done = 0
            while done < 8:
                msg = await asyncio.wait_for(ws.receive(), 60)
                payload = json.loads(msg.data)
                done += sum(item.get("type") == "done" for item in (payload if isinstance(payload, list)
                                                                   else [payload]))
        await asyncio.sleep(1.0)
        out["rss_idle_mib"] = rss()
        sockets = await asyncio.gather(*(session.ws_connect(f"{url.replace('http', 'ws', 1)}/v1/stream",
                                                            heartbeat=None) for _ in range(k)))
        await asyncio.sleep(1.0)
        out["rss_idle_connections_mib"] = rss()
        out["websockets_open"] = (await asyncio.to_thread(stats))["websockets"]
        from seedance.bench.loadgen import PROMPT

        for i, ws in enumerate(sockets):
            await ws.send_str(json.dumps({"type": "generate", "id": f"m{i}", "prompt": PROMPT,
                                          "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0}))

        async def drain(ws) -> int:
            n = 0
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return n
                payload = json.loads(msg.data)
                for item in payload if isinstance(payload, list) else [payload]:
                    if item.get("type") == "chunk":
                        n += 1
                    elif item.get("type") == "done":
                        return n

        readers = [asyncio.create_task(drain(ws)) for ws in sockets]
        await asyncio.sleep(1.5)  # every stream admitted and streaming
        out["rss_streaming_mib"] = rss()
        s = await asyncio.to_thread(stats)
        out["kv_blocks_total"] = s["num_kv_blocks"]
        out["kv_blocks_in_use"] = s["num_kv_blocks"] - s["num_free_blocks"]
        out["running"] = s["num_running"]
        out["waiting"] = s["num_waiting"]
        try:
            await asyncio.wait_for(asyncio.gather(*readers), 60)
        except TimeoutError:
            out["streams_timed_out"] = True
        s = await asyncio.to_thread(stats)
        out["prefix_cache_query_tokens"] = s["prefix_cache_query_tokens"]
        out["prefix_cache_hit_tokens"] = s["prefix_cache_hit_tokens"]
        out["prefix_cache_hit_rate"] = s["prefix_cache_hit_rate"]
        for ws in sockets:
            await ws.close()
    if proc:
        out["rss_per_idle_connection_kib"] = (out["rss_idle_connections_mib"] - out["rss_idle_mib"]) * 1024 / k
        out["rss_per_streaming_connection_kib"] = (out["rss_streaming_mib"] - out["rss_idle_mib"]) * 1024 / k
    return out


def memory_probe(url: str, k: int, max_tokens: int, pid: int | None) -> dict:
    import uvloop

    return uvloop.run(_memory_probe(url, k, max_tokens, pid))


def cross_check_wrk(server: Server, transports: tuple[str, ...], clients: int, processes: int, max_tokens: int,
                    duration: float, workdir: Path, console) -> dict:
    """Each HTTP transport at one level, first with wrk, then with our generator on the same server."""
    out: dict = {}
    for transport in transports:
        console.print(f"cross-check: wrk, {transport}, {clients} connections, {duration:g} s")
        wrk = run_wrk(transport, server.url, clients, duration, request_body(max_tokens), workdir)
        if wrk is None:
            return {"error": "wrk not installed (apt-get install -y wrk)"}
        time.sleep(1.0)
        with ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn")) as pool:
            ours = run_level(pool, server, transport, clients, processes, max_tokens, duration)
        out[transport] = {"wrk": wrk, "seedance_loadgen": {k: ours[k] for k in (
            "clients", "requests_per_s", "chunks_per_s", "errors", "timeouts")}}
        time.sleep(1.0)
    return out


BASELINES = ("picows",)


def run_baseline(name: str, rate: float, concurrency: list[int], processes: int, max_tokens: int, duration: float,
                 ramp: float, workdir: Path, console) -> list[dict]:
    """The WebSocket levels again against a bare server (seedance/bench/picows_baseline.py), same load."""
    from seedance.bench.picows_baseline import launch_baseline

    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    proc = launch_baseline(rate, str(workdir / "baseline.log"))
    rows = []
    try:
        with ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn")) as pool:
            for clients in concurrency:
                console.print(f"baseline {name}: websocket × {clients}")
                row = run_level(pool, Server(proc.url, proc), "websocket", clients, processes, max_tokens, duration,
                                ramp=ramp)
                row["server_kind"] = f"{name}-baseline"
                rows.append(row)
                time.sleep(0.5)
    finally:
        proc.stop()
    return rows


def ratios(report: dict) -> list[dict]:
    """Per level: Seedance WebSocket CPU per chunk over the baseline's (and its gateway's CPU per token over the
    baseline's), and WebSocket chunks per CPU-second over SSE's and polling's (the issue's goals: <= 2x picows,
    >= 2x SSE, >= 6x polling)."""
    def cost(rows: list[dict], transport: str, clients: int) -> dict | None:
        return next((r["server"] for r in rows if r["transport"] == transport and r["clients"] == clients), None)

    out = []
    for clients in report["settings"]["concurrency"]:
        ws = cost(report["results"], "websocket", clients)
        row: dict = {"clients": clients}
        base = cost(report.get("baseline") or [], "websocket", clients)
        if ws and base and ws.get("cpu_us_per_chunk") and base.get("cpu_us_per_chunk"):
            row["ws_cpu_per_chunk_over_baseline"] = ws["cpu_us_per_chunk"] / base["cpu_us_per_chunk"]
        # Per token, the gateway alone: the baseline sends one token per chunk, Seedance bundles a step's.
        if ws and base and ws.get("gateway_cpu_us_per_token") and base.get("cpu_us_per_token"):
            row["ws_gateway_cpu_per_token_over_baseline"] = ws["gateway_cpu_us_per_token"] / base["cpu_us_per_token"]
        alone = next((r for r in report.get("engine_alone") or [] if r["clients"] == clients), None)
        ws_row = next((r for r in report["results"] if r["transport"] == "websocket" and r["clients"] == clients),
                      None)
        if alone and ws_row and alone["tokens_per_s"]:
            row["ws_tokens_per_s_over_engine_alone"] = ws_row["tokens_per_s"] / alone["tokens_per_s"]
        for other in ("sse", "polling"):
            o = cost(report["results"], other, clients)
            if ws and o and ws.get("chunks_per_cpu_s") and o.get("chunks_per_cpu_s"):
                row[f"ws_chunks_per_cpu_s_over_{other}"] = ws["chunks_per_cpu_s"] / o["chunks_per_cpu_s"]
        out.append(row)
    return out


def write_report(report: dict, output: str | None) -> None:
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=2) + "\n")


def machine_info() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg(),
    }


def run_transports_bench(
    concurrency: list[int],
    transports: list[str],
    duration: float,
    max_tokens: int,
    processes: int,
    backend: str,
    rate: float,
    url: str | None,
    p99_bound_ms: float,
    memory_connections: int,
    wrk_clients: int | None,
    output: str | None,
    plots_dir: str | None,
    console=None,
    ramp: float = 0.0,
    wrk_transports: tuple[str, ...] = ("sse", "polling"),
    baseline: str | None = None,
    engine_mode: str | None = None,
    server_path: str | None = None,
    with_engine_alone: bool = False,
    workers: int | None = None,
    source_addresses: int = 1,
    ws_stack: str | None = None,
) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from seedance.bench.plots import can_plot, write_plots
    from seedance.bench.report import render

    console = console or Console(width=160)
    if plots_dir and not can_plot(console):  # said before the run, and the run's end skips them
        plots_dir = None
    for t in transports:
        if t not in TRANSPORTS:
            raise ValueError(f"unknown transport {t!r}; choose from {', '.join(TRANSPORTS)}")
    if url and not re.match(r"^https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?/?$", url):
        raise ValueError("--url must be a loopback address (http://127.0.0.1:PORT)")
    raise_nofile_limit()
    workdir = Path(tempfile.mkdtemp(prefix="seedance-bench-"))
    report: dict = {
        "command": " ".join(["seedance", "bench", "transports", *sys.argv[3:]]) if sys.argv[1:3] == ["bench",
                                                                                                       "transports"]
        else None,
        "machine": machine_info(),
        "settings": {"backend": backend if not url else "external", "synthetic_rate": rate if backend == "synthetic"
                     else None, "duration_s": duration, "max_tokens": max_tokens, "processes": processes,
                     "concurrency": concurrency, "transports": transports, "p99_bound_ms": p99_bound_ms,
                     "ramp_s": ramp, "baseline": baseline, "engine_mode": engine_mode, "server_path": server_path,
                     "workers": workers, "source_addresses": source_addresses, "ws_stack": ws_stack},
        "results": [],
    }
    max_clients = max([*concurrency, memory_connections, wrk_clients or 0])
    server = Server(url.rstrip("/")) if url else start_server(backend, rate, max_clients, workdir, engine_mode,
                                                              server_path, workers, ws_stack)
    if workers and workers > 1 and server.process:
        wait_for_workers(server.url, workers, source_addresses)
    if server.process:
        report["cold_start"] = server.timeline
        console.print(f"server pid {server.pid} on {server.url}: ready in "
                      f"{server.timeline['process_start_to_ready_s']:.2f} s")
    try:
        if memory_connections:  # first, on a fresh server, so the load levels' heap growth doesn't hide it
            console.print(f"memory: {memory_connections} idle then streaming WebSocket connections")
            report["memory"] = memory_probe(server.url, memory_connections, max(8, int(rate * 4)) if
                                            backend == "synthetic" else max_tokens, server.pid)
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
            TimeRemainingColumn(), console=console, transient=False,
        ) as progress:
            for transport in transports:
                for clients in concurrency:
                    task = progress.add_task(f"{transport:>9} × {clients:<5}", total=ramp + duration)
                    row = run_level(pool, server, transport, clients, processes, max_tokens, duration,
                                    progress, task, ramp=ramp, source_addresses=source_addresses)
                    report["results"].append(row)
                    write_report(report, output)  # after every level: a long run that is stopped keeps its rows
                    progress.update(task, description=f"{transport:>9} × {clients:<5} "
                                    f"{row['requests_per_s']:.0f} req/s, {row['errors']} err")
                    time.sleep(0.5)
        report["knee"] = {t: find_knee([r for r in report["results"] if r["transport"] == t], p99_bound_ms)
                          for t in transports}
        if baseline:
            report["baseline"] = run_baseline(baseline, rate, concurrency, processes, max_tokens, duration, ramp,
                                              workdir, console)
            write_report(report, output)
        report["ratios"] = ratios(report)
        if wrk_clients:
            report["wrk"] = cross_check_wrk(server, wrk_transports, wrk_clients, processes, max_tokens, duration,
                                            workdir, console)
    finally:
        server.stop()
    if with_engine_alone and backend == "model" and "websocket" in transports:
        from seedance.bench.engine_alone import engine_alone

        settings = server_settings(backend, rate, max_clients)
        report["engine_alone"] = []
        for clients in concurrency:  # after the server stopped: the engine gets the box to itself, as it did
            console.print(f"engine alone: {clients} streams, {duration:g} s")
            report["engine_alone"].append(engine_alone(clients, max_tokens, duration, settings))
        report["ratios"] = ratios(report)
    if server.log_path:
        report["server_log_tail"] = Path(server.log_path).read_text()[-2000:]
    if plots_dir:
        report["plots"] = write_plots(report, Path(plots_dir))
    render(console, report)
    if output:
        write_report(report, output)
        console.print(f"results: {output}")
    shutil.rmtree(workdir, ignore_errors=True)
    return report
