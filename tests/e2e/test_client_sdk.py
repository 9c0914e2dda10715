"""The client SDK against the real server, and through a TCP proxy that keeps cutting the connection."""

from __future__ import annotations

import asyncio
import random

import pytest

from seedance.client import SeedanceClient, SeedanceError

PARAMS = {"max_tokens": 120, "temperature": 0.8, "top_p": 0.95, "ignore_eos": True}
PROMPTS = ["And God said unto Moses,", "In the beginning", "Blessed are the meek"]


async def test_concurrent_generations_on_one_connection(server):
    async with SeedanceClient(server.ws) as client:
        streams = [client.generate(p, seed=i, **PARAMS) for i, p in enumerate(PROMPTS)]
        texts = await asyncio.gather(*(s.collect() for s in streams))
        assert all(t for t in texts) and len(set(texts)) == 3
        assert all(s.done.finish_reason == "length" and s.done.usage["completion_tokens"] == 120 for s in streams)
        binary = SeedanceClient(server.ws, binary=True, credit_window=4)
        async with binary:
            again = await binary.generate(PROMPTS[0], seed=0, **PARAMS).collect()
        assert again == texts[0]  # MTF1 frames and credit flow control carry the same stream


async def test_errors_reach_the_caller(server):
    async with SeedanceClient(server.ws) as client:
        with pytest.raises(SeedanceError) as info:
            await client.generate("x", max_tokens=10**6).collect()
        assert info.value.code == "invalid_request"


class CuttingProxy:
    """A TCP proxy on loopback that cuts every connection after a random number of bytes from the server."""

    def __init__(self, target_port: int, rng: random.Random, min_bytes: int, max_bytes: int) -> None:
        self.target_port = target_port
        self.rng = rng
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        self.cuts = 0
        self.cutting = True
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, client_r, client_w) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        budget = self.rng.randint(self.min_bytes, self.max_bytes) if self.cutting else None

        async def pump(reader, writer, count: bool) -> None:
            nonlocal budget
            try:
                while data := await reader.read(4096):
                    if count and budget is not None:
                        if len(data) >= budget:
                            writer.write(data[:budget])
                            raise ConnectionResetError("cut")
                        budget -= len(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for w in (client_w, server_w):
                    if w.transport is not None:
                        w.transport.abort()  # abrupt: no FIN handshake, no close frame

        before = self.cuts
        await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True))
        if budget is not None and budget <= 4096 and self.cuts == before:
            self.cuts += 1

    async def stop(self) -> None:
        self.server.close()


async def test_chaos_proxy_cuts_many_times_and_every_text_matches_an_uninterrupted_run(server):
    async with SeedanceClient(server.ws) as direct:
        reference = await asyncio.gather(*(direct.generate(p, seed=i, **PARAMS).collect()
                                           for i, p in enumerate(PROMPTS)))

    proxy = CuttingProxy(server.port, random.Random(7), min_bytes=600, max_bytes=3000)
    port = await proxy.start()
    client = SeedanceClient(f"ws://127.0.0.1:{port}/v1/stream", backoff_base=0.01, backoff_max=0.2)
    try:
        await client.connect()
        streams = [client.generate(p, seed=i, **PARAMS) for i, p in enumerate(PROMPTS)]
        async with asyncio.timeout(120):
            texts = await asyncio.gather(*(s.collect() for s in streams))
    finally:
        proxy.cutting = False
        await client.close()
        await proxy.stop()
    assert client.reconnects >= 5  # it really was cut, many times
    assert texts == reference  # and nothing was lost or duplicated


def test_sync_client_streams_and_can_stop_early(server):
    from seedance.client import SyncSeedanceClient

    with SyncSeedanceClient(server.ws) as client:
        chunks = list(client.generate("In the beginning", max_tokens=20, temperature=0, ignore_eos=True))
        assert sum(len(c.token_ids) for c in chunks) == 20 and client.last_done.finish_reason == "length"
        for i, _chunk in enumerate(client.generate("And", max_tokens=2000, ignore_eos=True)):
            if i == 3:
                break  # leaving the iterator cancels the generation on the server
    for _ in range(300):
        if server.stats()["num_running"] == 0:
            break
        __import__("time").sleep(0.05)
    assert server.stats()["num_running"] == 0


def test_cli_client_and_chat_against_the_server(server):
    import subprocess
    import sys

    one_shot = subprocess.run([sys.executable, "-m", "seedance.cli", "client", "In the beginning", "--url", server.ws,
                               "-n", "12", "--seed", "3", "--top-k", "0", "--top-p", "1"],  # no EOS within 12
                              capture_output=True, text=True, timeout=60)
    assert one_shot.returncode == 0, one_shot.stderr
    assert one_shot.stdout.strip() and "12 tokens" in one_shot.stderr
    chat = subprocess.run([sys.executable, "-m", "seedance.cli", "chat", "--url", server.ws, "-n", "10",
                           "--session", "cli-chat", "--top-k", "0", "--top-p", "1"],
                          input="And God said\nAnd Moses answered\n\n", capture_output=True, text=True, timeout=60)
    assert chat.returncode == 0, chat.stderr
    assert chat.stderr.count("10 tokens") == 2
    assert "KV reused" in chat.stderr  # the second turn continued from the first turn's KV
