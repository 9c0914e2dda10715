"""Per-client fairness end to end: a connection that floods the engine with long generations holds at most
max_running_per_client places in the batch, so another connection's request runs at once instead of queueing
behind the flood (engine/scheduler.py; the client key is the connection: server/http/client_identity.py)."""

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


async def test_a_flooding_connection_does_not_queue_another_ones_request_behind_it(small_batch_server):
    first_chunk: dict[str, float] = {}
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
                    elif m["type"] == "done":
                        done += 1
                    elif m["type"] == "error":
                        raise AssertionError(m)

        reader = asyncio.create_task(read_noisy())
        async with asyncio.timeout(60):
            while len(first_chunk) < 2:  # the flood is running
                await asyncio.sleep(0.01)
            await canary.send(json.dumps({"type": "generate", "id": "c", "prompt": "Amen", "max_tokens": 4,
                                          "temperature": 0}))
            canary_done = None
            while canary_done is None:
                for m in messages_of(await canary.recv()):
                    assert m["type"] != "error", m
                    if m["type"] == "done":
                        canary_done = time.monotonic()
        await asyncio.sleep(0.2)  # a flood request that had started by now has sent its first chunk
        reader.cancel()  # the flood is cancelled when its connection closes
    started_before = sorted(rid for rid, t in first_chunk.items() if t < canary_done)
    # Only the noisy client's first two ran before the canary finished; without the cap, four of its six
    # would have filled the batch and the canary would have waited behind all six.
    assert started_before == ["n0", "n1"], (started_before, first_chunk, canary_done)
    assert "Traceback" not in small_batch_server.log()
