"""Pick the server stack by measurement: WebSocket push throughput and echo round-trip latency of
starlette+uvicorn (uvloop, httptools) against aiohttp (uvloop), with the same client, on loopback.

    python bench/server_stack.py            # prints a table; docs/server-stack.md has the figures

Each server runs in its own process; the client is the `websockets` library in this process. Bounded:
a fixed number of messages per run, loopback only.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import socket
import statistics
import sys
import time

PUSH_MESSAGES = 20_000
ECHO_ROUNDS = 2_000
PAYLOAD = json.dumps({"type": "chunk", "id": "r1", "seq": 0, "text": " light", "token_ids": [1046]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_starlette(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    async def push(ws):
        await ws.accept()
        n = int(await ws.receive_text())
        for _ in range(n):
            await ws.send_text(PAYLOAD)
        await ws.close()

    async def echo(ws):
        await ws.accept()
        try:
            while True:
                await ws.send_text(await ws.receive_text())
        except Exception:
            pass

    app = Starlette(routes=[WebSocketRoute("/push", push), WebSocketRoute("/echo", echo)])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="error")


def serve_aiohttp(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def push(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        n = int(await ws.receive_str())
        for _ in range(n):
            await ws.send_str(PAYLOAD)
        await ws.close()
        return ws

    async def echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.add_routes([web.get("/push", push), web.get("/echo", echo)])
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def measure(port: int) -> dict:
    from websockets.asyncio.client import connect

    for _ in range(100):
        try:
            async with connect(f"ws://127.0.0.1:{port}/echo"):
                break
        except OSError:
            await asyncio.sleep(0.05)
    async with connect(f"ws://127.0.0.1:{port}/push", max_queue=None) as ws:
        start = time.perf_counter()
        await ws.send(str(PUSH_MESSAGES))
        count = 0
        async for _ in ws:
            count += 1
        push_s = time.perf_counter() - start
    rtts = []
    async with connect(f"ws://127.0.0.1:{port}/echo") as ws:
        for _ in range(ECHO_ROUNDS):
            t = time.perf_counter()
            await ws.send(PAYLOAD)
            await ws.recv()
            rtts.append(time.perf_counter() - t)
    rtts.sort()
    return {"push_msgs_per_s": count / push_s, "echo_rtt_p50_us": statistics.median(rtts) * 1e6,
            "echo_rtt_p99_us": rtts[int(len(rtts) * 0.99)] * 1e6}


def run(name: str, target) -> dict:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=target, args=(port,), daemon=True)
    proc.start()
    try:
        return {"stack": name, **asyncio.run(measure(port))}
    finally:
        proc.terminate()
        proc.join(5)


def main() -> None:
    rows = [run("starlette+uvicorn (uvloop, httptools)", serve_starlette), run("aiohttp (uvloop)", serve_aiohttp)]
    for row in rows:
        print(f"{row['stack']:<40} push {row['push_msgs_per_s']:>9.0f} msg/s   "
              f"echo RTT p50 {row['echo_rtt_p50_us']:>6.0f} us  p99 {row['echo_rtt_p99_us']:>6.0f} us")
    if "--json" in sys.argv:
        json.dump(rows, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
