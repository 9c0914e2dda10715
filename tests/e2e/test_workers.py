"""`seedance serve --workers 2`: two gateway processes on one port, one engine process behind them.

Connections are routed by client address (a BPF program on the SO_REUSEPORT group), so an address's limits,
tickets and session resumes meet their state in one worker; these tests connect from several loopback
addresses (127.0.0.x) to land on both workers, and check that auth, per-IP limits, sessions and resume hold."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import start_server
from tests.e2e.test_sessions import read_turn, text
from tests.e2e.wire import messages_of
from tests.pki import AUDIENCE, ISSUER, SECRET, hs256

PARAMS = {"max_tokens": 40, "temperature": 0.0, "ignore_eos": True}


def http(srv, src: str) -> httpx.Client:
    return httpx.Client(base_url=srv.http, transport=httpx.HTTPTransport(local_address=src), timeout=30)


def ws_connect(srv, src: str, token: str | None = None, query: str = ""):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return connect(srv.ws + query, additional_headers=headers, local_addr=(src, 0), proxy=None, open_timeout=10)


def stats(srv, src: str) -> dict:
    with http(srv, src) as client:
        # A fresh token per call: one made at import would have expired (ttl 300 s) by the time a full run gets here.
        admin = hs256(sub="ops", scope="admin")
        return client.get("/stats", headers={"Authorization": f"Bearer {admin}"}).json()


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    srv = start_server(tmp_path_factory, workers=2, jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER,
                       max_connections_per_ip=2, max_connections_per_token=0, num_kv_blocks=1024,
                       detached_buffer_tokens=8)
    deadline = time.monotonic() + 180  # launch() saw one worker ready; wait for the other too (a loaded CI box)
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = [stats(srv, f"127.0.0.{i}") for i in (2, 3)]
            if {answer.get("worker") for answer in last} == {0, 1}:
                break
        except (httpx.HTTPError, json.JSONDecodeError) as err:
            last = repr(err)
        time.sleep(0.2)
    else:
        srv.stop()
        pytest.fail(f"the second worker never answered; last /stats: {str(last)[:500]}\n{srv.log()[-3000:]}")
    yield srv
    assert srv.stop() == 0


async def generate(ws, request_id: str, **fields) -> dict:
    await ws.send(json.dumps({"type": "generate", "id": request_id, "prompt": "In the beginning", **PARAMS,
                              **fields}))
    return await read_turn(ws, request_id, want_snapshot="session" in fields)


def test_only_the_engine_process_imports_torch(workers):
    """The supervisor only starts and watches its engine process and workers: it imports neither the app nor
    torch (~200 MiB here). The workers (gateways) serve without torch too: only the engine process has it.
    libtorch mapped into a process = torch imported."""
    supervisor = psutil.Process(workers.pid)
    children = supervisor.children()
    assert len(children) >= 3  # the engine process and the two workers (and multiprocessing's resource tracker)

    def has_torch(process: psutil.Process) -> bool:
        return any("libtorch" in m.path for m in process.memory_maps())

    assert not has_torch(supervisor)
    assert sum(has_torch(c) for c in children) == 1  # the check sees torch where it is: the engine process


async def test_two_workers_one_engine(workers):
    a, b = stats(workers, "127.0.0.2"), stats(workers, "127.0.0.3")
    assert {a["worker"], b["worker"]} == {0, 1} and a["engine_mode"] == b["engine_mode"] == "process"
    before = b["generated_tokens"]
    async with ws_connect(workers, "127.0.0.2", hs256()) as ws:
        turn = await generate(ws, "g")
    assert turn["done"]["finish_reason"] == "length"
    async with ws_connect(workers, "127.0.0.3", hs256()) as ws:
        again = await generate(ws, "g")
    assert text(again) == text(turn)  # greedy, same engine
    for _ in range(50):  # the engine's counters reach every worker (stats ride on its step frames)
        if stats(workers, "127.0.0.3")["generated_tokens"] >= before + 2 * PARAMS["max_tokens"]:
            break
        await asyncio.sleep(0.05)
    assert stats(workers, "127.0.0.3")["generated_tokens"] >= before + 2 * PARAMS["max_tokens"]


@pytest.mark.parametrize("src", ["127.0.0.2", "127.0.0.3"])
async def test_auth_and_one_time_tickets_on_each_worker(workers, src):
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(workers, src):
            pass
    assert refused.value.response.status_code == 401
    with http(workers, src) as client:
        ticket = client.post("/v1/tickets", headers={"Authorization": f"Bearer {hs256(sub='tia')}"}).json()["ticket"]
    async with ws_connect(workers, src, query=f"?ticket={ticket}") as ws:  # redeemed where it was issued
        await ws.send(json.dumps({"type": "ping", "ts": 1.0}))
        assert messages_of(await ws.recv())[0]["type"] == "pong"
    with pytest.raises(InvalidStatus) as reused:
        async with ws_connect(workers, src, query=f"?ticket={ticket}"):
            pass
    assert reused.value.response.status_code == 401


async def test_the_per_ip_limit_counts_every_connection_of_an_address(workers):
    src = "127.0.0.6"  # with 4-tuple hashing these would spread over both workers, each counting 1 or 2
    async with ws_connect(workers, src, hs256(sub="u1")), ws_connect(workers, src, hs256(sub="u2")):
        for _ in range(3):
            with pytest.raises(InvalidStatus) as third:
                async with ws_connect(workers, src, hs256(sub="u3")):
                    pass
            assert third.value.response.status_code == 429
            assert "from 127.0.0.6 (limit 2)" in json.loads(third.value.response.body)["error"]["message"]
    async with ws_connect(workers, "127.0.0.7", hs256(sub="u4")):  # another address is not affected
        pass


@pytest.mark.parametrize("src", ["127.0.0.8", "127.0.0.9"])
async def test_session_turns_and_a_resume_after_a_drop(workers, src):
    token = hs256(sub=f"s{src}")
    async with ws_connect(workers, src, token) as ws:
        reference = await generate(ws, "t0", session=f"ref-{src}")
        second = await generate(ws, "t1", session=f"ref-{src}", prompt=" And")
    prior = reference["done"]["usage"]["prompt_tokens"] + reference["done"]["usage"]["completion_tokens"]
    assert second["done"]["usage"]["cached_tokens"] / prior >= 0.8  # pinned KV in the shared engine

    ws = await ws_connect(workers, src, token)
    await ws.send(json.dumps({"type": "generate", "id": "t0", "session": f"drop-{src}", "prompt": "In the beginning",
                              **PARAMS}))
    seen: list[dict] = []
    while len(seen) < 5:
        seen += [m for m in messages_of(await ws.recv()) if m["type"] == "chunk"]
    ws.transport.abort()  # dropped without a close frame
    await asyncio.sleep(0.3)
    async with ws_connect(workers, src, token) as ws2:  # the same address: the worker that holds the turn
        await ws2.send(json.dumps({"type": "resume", "session": f"drop-{src}", "id": "t0",
                                   "last_seq": seen[-1]["seq"]}))
        rest = await read_turn(ws2, "t0")
    chunks = seen + rest["chunks"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["text"] for c in chunks) == text(reference)
    assert rest["done"]["usage"]["completion_tokens"] == PARAMS["max_tokens"] and rest["snapshot"]["turn"] == 1
