"""Figures for docs/reliability.md (issue #12): run against a fresh `seedance serve` on 127.0.0.1.

    python scripts/ws_reliability.py prompts      # canary ping delay while prompts of growing size are refused
    python scripts/ws_reliability.py never-read   # time and memory to pause, then close, clients that never read
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from seedance.bench.server_process import launch
from tests.e2e.wire import messages_of, raw_handshake, send_masked_text


async def _pinger(ws, stop: asyncio.Event, rtts: list[float]) -> None:
    while not stop.is_set():
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "ping"}))
        while not any(m["type"] == "pong" for m in messages_of(await ws.recv())):
            pass
        rtts.append(time.perf_counter() - sent)
        await asyncio.sleep(0.005)


async def prompts(server, sizes: list[int]) -> None:
    print("| prompt characters | refused after | canary ping: worst (quiet worst) |")
    print("|---|---|---|")
    async with connect(server.ws) as canary, connect(server.ws, max_size=None) as attacker:
        for size in sizes:
            text = ("In the beginning " * (size // 17 + 1))[:size]
            quiet: list[float] = []
            stop = asyncio.Event()
            task = asyncio.create_task(_pinger(canary, stop, quiet))
            await asyncio.sleep(1.0)
            stop.set()
            await task
            rtts: list[float] = []
            stop = asyncio.Event()
            task = asyncio.create_task(_pinger(canary, stop, rtts))
            await asyncio.sleep(0.2)
            started = time.perf_counter()
            await attacker.send(json.dumps({"type": "generate", "id": "big", "prompt": text, "max_tokens": 1}))
            reply = messages_of(await attacker.recv())
            refused = time.perf_counter() - started
            while not any(m["type"] == "done" for m in reply):
                reply = messages_of(await attacker.recv())
            await asyncio.sleep(0.2)
            stop.set()
            await task
            print(f"| {size:,} | {refused * 1000:.0f} ms | {max(rtts) * 1000:.1f} ms ({max(quiet) * 1000:.1f} ms) |")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def never_read(server, conns: int, requests: int, max_tokens: int) -> None:
    rss0 = _rss_mib(server.pid)
    socks = [raw_handshake(server.port) for _ in range(conns)]
    start = time.monotonic()
    for sock in socks:
        for i in range(requests):
            send_masked_text(sock, json.dumps({"type": "generate", "id": f"r{i}", "prompt": "And God said",
                                               "max_tokens": max_tokens, "ignore_eos": True}))
    total = conns * requests
    paused_at = closed_at = None
    peak = rss0
    while time.monotonic() - start < 120:
        stats = server.stats()
        peak = max(peak, _rss_mib(server.pid))
        if paused_at is None and stats["num_paused"] and not stats["num_running"]:  # no compute spent on them
            paused_at, tokens_at_pause, rss_at_pause = time.monotonic() - start, stats["generated_tokens"], peak
        established = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1 for s in socks]
        if stats["websockets"] == 0 and not any(established):
            closed_at = time.monotonic() - start
            break
        time.sleep(0.1)
    for sock in socks:
        sock.close()
    print(f"{conns} connections x {requests} requests x {max_tokens} tokens, clients never read:")
    if paused_at is None:
        print("  never paused")
    else:
        print(f"  nothing running (paused or never started) after {paused_at:.1f} s, {tokens_at_pause:,} tokens "
              f"generated (of {total * max_tokens:,}); server RSS {rss0:.0f} -> {rss_at_pause:.0f} MiB then")
    closes = sorted({line.split("closing websocket: ")[1] for line in server.log().splitlines()
                     if "closing websocket: " in line})
    print(f"  closed after {closed_at:.1f} s ({'; '.join(closes)}); peak RSS {peak:.0f} MiB, "
          f"{server.stats()['generated_tokens']:,} tokens generated in all"
          if closed_at else "  not closed within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["prompts", "never-read"])
    parser.add_argument("--max-message-bytes", type=int, default=1 << 20)
    parser.add_argument("--synthetic-rate", type=float, help="tokens/s per stream, no model compute (a fast stream)")
    args = parser.parse_args()
    settings: dict[str, object] = {"max_message_bytes": args.max_message_bytes}
    with tempfile.TemporaryDirectory() as tmp:
        settings["session_store"] = f"sqlite://{tmp}/sessions.db"
        if args.synthetic_rate:
            settings["synthetic_rate"] = args.synthetic_rate
        server = launch(settings, Path(tmp) / "server.log")
        try:
            if args.what == "prompts":
                sizes = [30_705, 30_706, 65_536, 262_144, 1_000_000]
                sizes += [s for s in (4_000_000, 16_000_000) if s < args.max_message_bytes - 100]
                asyncio.run(prompts(server, sizes))
            else:
                never_read(server, conns=4, requests=32, max_tokens=4096)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
