"""`seedance bench slowloris`: one address opens many connections that never finish their request headers,
while another address probes /healthz. Reports how many the server refused at accept, how fast the probe
was answered during the attack, and how long the server took to close the unfinished connections it admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import time
from pathlib import Path

import aiohttp

from seedance.bench.server_process import launch
from seedance.bench.stats import percentiles_ms

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def _hold(port: int, src: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        sock.bind((src, 0))
        reader, writer = await asyncio.open_connection(sock=await _connected(sock, port))
        writer.write(PARTIAL)
        return reader, writer
    except OSError:
        sock.close()
        return None


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
    held = await asyncio.gather(*(_hold(port, attacker) for _ in range(connections)))
    opened = [h for h in held if h is not None]
    closes = [asyncio.ensure_future(_closed_after(r, t0, close_wait_s)) for r, _ in opened]
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
    for _, writer in opened:
        writer.close()
    refused = [c for c in closed if c is not None and c < 1.0]
    timed_out = [c for c in closed if c is not None and c >= 1.0]
    p = percentiles_ms(probe_s, (50, 99))
    return {"connections": connections, "connect_failed": connections - len(opened),
            "closed_at_accept": len(refused), "closed_by_header_timeout": len(timed_out),
            "still_open": sum(c is None for c in closed),
            "last_close_s": max(closed, key=lambda c: c or 0) if closed else None,
            "healthz_failed": failed, "healthz_p50_ms": p["p50"], "healthz_max_ms": max(probe_s) * 1000}


def run_slowloris_bench(connections: int, settings: dict) -> dict:
    log_dir = Path(tempfile.mkdtemp(prefix="seedance-slowloris-"))
    server = launch({"session_store": f"sqlite://{log_dir / 's.db'}", **settings}, log_dir / "server.log")
    try:
        return asyncio.run(run_slowloris(server.port, connections))
    finally:
        server.stop()
