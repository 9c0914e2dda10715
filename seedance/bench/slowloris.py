"""`seedance bench slowloris`: one address opens many connections that never finish their request headers,
while another address probes /healthz. Reports how many the server refused at accept, how fast the probe
was answered during the attack, and how long the server took to close the unfinished connections it admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import tempfile
import time
from pathlib import Path

import aiohttp

from seedance.bench.server_process import launch
from seedance.bench.stats import percentiles_ms

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def _hold(port: int, src: str, limit_s: float) -> tuple[asyncio.StreamWriter, asyncio.Future] | None:
    """Open one connection, send the unfinished headers; its writer and a future of its lifetime (seconds
    from connect until the server closed it; None: still open after limit_s)."""
    sock = socket.socket()
    sock.setblocking(False)
    try:
        sock.bind((src, 0))
        reader, writer = await asyncio.open_connection(sock=await _connected(sock, port))
        writer.write(PARTIAL)
    except OSError:
        sock.close()
        return None
    return writer, asyncio.ensure_future(_closed_after(reader, time.perf_counter(), limit_s))


async def _connected(sock: socket.socket, port: int) -> socket.socket:
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _closed_after(reader: asyncio.StreamReader, t0: float, limit_s: float) -> float | None:
    """Seconds from t0 until the server closed this connection (None: still open after limit_s)."""
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(reader.read(1), limit_s)
        return time.perf_counter() - t0
    return None


async def run_slowloris(port: int, connections: int, attacker: str = "127.0.0.2", probes: int = 20,
                        close_wait_s: float = 30.0) -> dict:
    t0 = time.perf_counter()
    held = await asyncio.gather(*(_hold(port, attacker, close_wait_s) for _ in range(connections)))
    opened = [h for h in held if h is not None]
    closes = [lifetime for _, lifetime in opened]
    probe_s: list[float] = []
    failed = 0
    conn = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0), force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=5)) as http:
        for _ in range(probes):
            start = time.perf_counter()
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as reply:
                    failed += reply.status != 200
            except (aiohttp.ClientError, TimeoutError):
                failed += 1
            probe_s.append(time.perf_counter() - start)
            await asyncio.sleep(0.05)
    closed = await asyncio.gather(*closes)
    all_closed_s = time.perf_counter() - t0
    for writer, _ in opened:
        writer.close()
    p = percentiles_ms(probe_s, (50, 99))
    return {"connections": connections, "connect_failed": connections - len(opened),
            "still_open": sum(c is None for c in closed),
            "attack_start_to_all_closed_s": all_closed_s,
            "healthz_failed": failed, "healthz_p50_ms": p["p50"], "healthz_max_ms": max(probe_s) * 1000}


def guard_counts(log: str) -> dict[str, int]:
    """What the server's connection guard logged: connections refused at accept and closed for their headers
    (each line counts itself and the lines it held back, seedance/server/http/conn_guard.py)."""
    counts = {"refused_at_accept": 0, "closed_by_header_timeout": 0}
    for line in log.splitlines():
        match = re.search(r"\((\d+) such since the last line\)", line)
        if match is None:
            continue
        key = "refused_at_accept" if "refused connection" in line else "closed_by_header_timeout"
        counts[key] += int(match.group(1))
    return counts


def run_slowloris_bench(connections: int, settings: dict) -> dict:
    log_dir = Path(tempfile.mkdtemp(prefix="seedance-slowloris-"))
    server = launch({"session_store": f"sqlite://{log_dir / 's.db'}", **settings}, log_dir / "server.log")
    try:
        result = asyncio.run(run_slowloris(server.port, connections))
    finally:
        server.stop()
    return {**result, **guard_counts(server.log())}
