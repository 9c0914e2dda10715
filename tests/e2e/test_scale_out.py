"""Scale-out: two replicas behind a real nginx (consistent hash on the session id) sharing a real Redis.
A replica is SIGKILLed mid-turn; the client lands on the other one, which restores the session from
Redis, and the conversation continues with every acknowledged turn intact."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from websockets.asyncio.client import connect

from seedance.client import SeedanceClient, SeedanceError
from tests.e2e.conftest import free_port
from tests.e2e.nginx import DEPLOY, render, requires_nginx, running_nginx
from tests.e2e.wire import until

pytestmark = requires_nginx
TURNS = ["And God said unto Moses,", " And Moses answered and said,", " Then the LORD spake, saying,"]
PARAMS = {"max_tokens": 80, "temperature": 0.8, "top_p": 0.95, "ignore_eos": True}


def replicas_site(port: int, replicas: list[int]) -> str:
    return render(DEPLOY / "nginx-replicas.conf", [("listen 8080;", f"listen 127.0.0.1:{port};"),
                                                   ("127.0.0.1:8001", f"127.0.0.1:{replicas[0]}"),
                                                   ("127.0.0.1:8002", f"127.0.0.1:{replicas[1]}")])


async def run_chat(url: str, session: str) -> list[str]:
    async with SeedanceClient(f"{url}?session={session}") as client:
        return [await client.generate(t, session=session, seed=i, **PARAMS).collect() for i, t in enumerate(TURNS)]


async def test_replica_killed_mid_turn_and_the_conversation_continues_on_the_other(server_factory, redis_url,
                                                                                    tmp_path):
    replicas = [server_factory(session_store=redis_url) for _ in range(2)]
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/stream"
    with running_nginx(tmp_path, replicas_site(port, [r.port for r in replicas]), port):
        reference = await run_chat(url, "reference")

        session = "scale-out"
        client = SeedanceClient(f"{url}?session={session}", backoff_base=0.05, backoff_max=0.5)
        await client.connect()
        texts, acked_ids = [], []
        for i in range(2):
            stream = client.generate(TURNS[i], session=session, seed=i, **PARAMS)
            acked_ids.append(stream.id)
            texts.append(await stream.collect())
            for _ in range(100):  # acknowledged: durable in Redis
                if stream.id in client.snapshots:
                    break
                await asyncio.sleep(0.02)
            assert client.snapshots[stream.id]["turn"] == i + 1

        # Turn 3 starts; find the replica that serves it and kill it mid-stream.
        stream = client.generate(TURNS[2], session=session, seed=2, **PARAMS)
        got = []
        async for chunk in stream:
            got.append(chunk)
            if len(got) == 5:
                break_at = time.monotonic()
                break
        holder = next(r for r in replicas if r.stats()["open_requests"] == 1)
        holder.process.send_signal(signal.SIGKILL)
        holder.process.wait(10)
        killed_at = time.monotonic()
        # The turn in flight died with its replica: it was never acknowledged, so the client sends it again
        # (same seed) and the other replica restores the session from Redis first.
        with pytest.raises(SeedanceError):
            async with asyncio.timeout(30):
                async for chunk in stream:
                    got.append(chunk)
        # The last acknowledged turn replays, chunk for chunk, on the survivor: out of Redis.
        async with connect(f"{url}?session={session}") as ws:
            await ws.send(json.dumps({"type": "resume", "session": session, "id": acked_ids[1], "last_seq": -1}))
            replayed = [m for m in await until(ws, lambda m: m["type"] == "done", 10) if m["type"] == "chunk"]
        assert "".join(m["text"] for m in replayed) == texts[1]
        assert [m["seq"] for m in replayed] == list(range(len(replayed)))
        retry = client.generate(TURNS[2], session=session, seed=2, **PARAMS)
        first = None
        parts = []
        async for chunk in retry:
            first = first or time.monotonic()
            parts.append(chunk.text)
        texts.append("".join(parts))
        recovery_s = first - killed_at
        survivor = next(r for r in replicas if r is not holder)
        await client.close()

        assert texts == reference  # every turn as in a run where nothing failed
        assert survivor.stats()["sessions"] >= 1
        assert recovery_s < 10
        print(f"\nrecovery time (SIGKILL -> first token of the re-sent turn on the other replica): {recovery_s:.2f} s"
              f" (kill issued {killed_at - break_at:.2f} s after the 5th chunk)")
