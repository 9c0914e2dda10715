"""Per-client fairness end to end: a connection that floods the engine with long generations fills a batch that
has room (work-conserving: beyond its max_running_per_client share), yet another connection's request runs at once
instead of queueing behind the flood, and the flood's extras resume after it (engine/scheduler.py,
engine/client_share.py; the client key is the connection: server/http/client_identity.py)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import start_server
from tests.e2e.wire import messages_of

FLOOD, LONG = 6, 400


@pytest.fixture(scope="module", params=["thread", "process"])
def small_batch_server(request, tmp_path_factory):
    srv = start_server(tmp_path_factory, engine_mode=request.param, max_num_seqs=4, num_kv_blocks=512,
                       max_running_per_client=2)
    yield srv
    srv.stop()


async def test_a_flooding_connection_fills_the_batch_but_does_not_queue_another_ones_request_behind_it(
        small_batch_server):
    first_chunk: dict[str, float] = {}
    last_chunk: dict[str, float] = {}
    finished: list[str] = []
    async with connect(small_batch_server.ws, max_size=None) as noisy, connect(small_batch_server.ws) as canary:
        for i in range(FLOOD):
            await noisy.send(json.dumps({"type": "generate", "id": f"n{i}", "prompt": "In the beginning",
                                         "max_tokens": LONG, "temperature": 0, "ignore_eos": True}))

        async def read_noisy() -> None:
            done = 0
            while done < FLOOD:
                for m in messages_of(await noisy.recv()):
                    if m["type"] == "chunk":
                        first_chunk.setdefault(m["id"], time.monotonic())
                        last_chunk[m["id"]] = time.monotonic()
                    elif m["type"] == "done":
                        done += 1
                        finished.append(m["id"])
                    elif m["type"] == "error":
                        raise AssertionError(m)

        reader = asyncio.create_task(read_noisy())
        async with asyncio.timeout(20):  # the flood fills the whole batch, beyond its share of 2
            while len(first_chunk) < 4:
                await asyncio.sleep(0.01)
        assert not finished, finished  # four at once, not two, then two more as the first ones end
        async with asyncio.timeout(60):
            await canary.send(json.dumps({"type": "generate", "id": "c", "prompt": "Amen", "max_tokens": 4,
                                          "temperature": 0}))
            canary_done = None
            while canary_done is None:
                for m in messages_of(await canary.recv()):
                    assert m["type"] != "error", m
                    if m["type"] == "done":
                        canary_done = time.monotonic()
            # the extra that gave the canary its place streams again (n0..n3 all after the canary's end)
            while not all(last_chunk.get(f"n{i}", 0) > canary_done for i in range(4)):
                assert not reader.done(), reader
                await asyncio.sleep(0.01)
        reader.cancel()  # the flood is cancelled when its connection closes
    started_before = sorted(rid for rid, t in first_chunk.items() if t < canary_done)
    # The four that filled the batch ran before the canary finished, and none of the flood's waiting two jumped
    # ahead of it; without the share, the canary would have waited behind all six.
    assert started_before == ["n0", "n1", "n2", "n3"], (started_before, first_chunk, canary_done)
    assert "Traceback" not in small_batch_server.log()
