"""Gateway CPU per WebSocket handshake: Seedance's /v1/stream (head router, accept policy, picows upgrade,
the connection's tasks) against the bare picows baseline, with no streaming beside it.

    PYTHONPATH=$PWD python scripts/handshake_cost.py [--connections 2000] [--server-path TREE] [--baseline]

Opens --connections WebSockets (--parallel at a time) to a synthetic `seedance serve --engine process`, holds
them all, then closes them; the gateway's CPU seconds (user + system, psutil) over the opening divided by the
connections is its CPU per handshake. CPU time, not wall time, so a loaded box slows it but skews it less.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp

from seedance.bench.loadgen import raise_nofile_limit
from seedance.bench.transports_bench import Server, start_server, tree_cpu_by_role


async def open_all(url: str, n: int, parallel: int) -> tuple[list, float]:
    connector = aiohttp.TCPConnector(limit=0)
    session = aiohttp.ClientSession(connector=connector)
    gate = asyncio.Semaphore(parallel)

    async def one():
        async with gate:
            return await session.ws_connect(url, heartbeat=None, max_msg_size=0)

    t0 = time.perf_counter()
    sockets = await asyncio.gather(*(one() for _ in range(n)))
    return [session, sockets], time.perf_counter() - t0


async def close_all(held) -> None:
    session, sockets = held
    await asyncio.gather(*(ws.close() for ws in sockets))
    await session.close()


def measure(server: Server, n: int, parallel: int) -> dict:
    roles: dict[int, str] = {}
    before = tree_cpu_by_role(server.pid, server.port, roles)
    url = server.url.replace("http", "ws", 1) + "/v1/stream"
    loop = asyncio.new_event_loop()
    try:
        held, wall = loop.run_until_complete(open_all(url, n, parallel))
        time.sleep(0.5)  # the connections' first timers and tasks settle
        after = tree_cpu_by_role(server.pid, server.port, roles)
        loop.run_until_complete(close_all(held))
    finally:
        loop.close()
    gateway = after["gateway"] - before["gateway"]
    return {"connections": n, "wall_s": wall, "handshakes_per_s": n / wall, "gateway_cpu_s": gateway,
            "gateway_us_per_handshake": gateway / n * 1e6,
            "gateway_system_share": (after["gateway_system"] - before["gateway_system"]) / gateway if gateway else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-path", default=None)
    parser.add_argument("--baseline", action="store_true", help="the bare picows server instead")
    parser.add_argument("--profile", default=None, help="py-spy raw stacks of the gateway, to this file")
    args = parser.parse_args()
    raise_nofile_limit()
    workdir = Path(tempfile.mkdtemp(prefix="seedance-hs-"))
    if args.baseline:
        from seedance.bench.picows_baseline import launch_baseline

        proc = launch_baseline(50.0, str(workdir / "baseline.log"))
        server = Server(proc.url, proc)
    else:
        server = start_server("synthetic", 50.0, args.connections, workdir, "process", args.server_path)
    spy = None
    if args.profile:
        import subprocess
        import sys

        spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                                "-p", str(server.pid), "--format", "raw", "--nolineno", "--nonblocking", "--gil",
                                "-r", "200", "-o", args.profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    try:
        for k in range(args.rounds):
            r = measure(server, args.connections, args.parallel)
            print(f"round {k + 1}: {r['connections']} handshakes in {r['wall_s']:.2f} s "
                  f"({r['handshakes_per_s']:.0f}/s); gateway {r['gateway_us_per_handshake']:.0f} µs CPU each "
                  f"({100 * (r['gateway_system_share'] or 0):.0f}% in the kernel)", flush=True)
            time.sleep(1.0)
    finally:
        if spy is not None:
            import signal

            spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            spy.wait(30)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
