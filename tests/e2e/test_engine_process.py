"""`seedance serve --engine process`: the engine core in its own process, end to end with the built-in model.

Greedy output through the process engine equals the in-process engine's token for token; sessions (KV pinned
across the process boundary), cancel and the OpenAI SSE path work; a dead engine process fails the streams in
flight with an error, /readyz says so, and the gateway keeps answering."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal

import httpx
import numpy as np
import psutil
import pytest
from websockets.asyncio.client import connect

from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.config import EngineConfig
from seedance.engine.sampling_params import SamplingParams
from tests.e2e.conftest import start_server
from tests.e2e.wire import messages_of, until

PROMPTS = ["In the beginning", "And God said unto Moses,", "Blessed are the meek"]


@pytest.fixture(scope="module")
def process_server(tmp_path_factory):
    srv = start_server(tmp_path_factory, engine_mode="process", num_kv_blocks=1024)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def thread_server(tmp_path_factory):
    """The thread mode, what the process mode's answers are compared with (the default is process)."""
    srv = start_server(tmp_path_factory, engine_mode="thread", num_kv_blocks=1024)
    yield srv
    srv.stop()


def test_the_default_is_the_process_mode(server, thread_server):
    assert server.stats()["engine_mode"] == "process" and server.stats()["engine_pid"] is not None
    assert thread_server.stats()["engine_mode"] == "thread" and thread_server.stats()["engine_pid"] is None


def engine_pid(srv) -> int:
    """The engine process /stats names: a child of the server."""
    pid = srv.stats()["engine_pid"]
    assert pid in [c.pid for c in psutil.Process(srv.pid).children()]
    return pid


def test_the_engine_process_starts_before_the_gateway_builds_its_app(process_server):
    """`seedance serve --engine process` spawns the core first, so its torch import and model load overlap the
    gateway's imports: the child exists (by the kernel's clock, psutil) before the app was built, and the
    cold-start trace starts the model load there."""
    marks = process_server.stats()["cold_start_ms"]
    gateway_started = psutil.Process(process_server.pid).create_time()
    engine_started = psutil.Process(engine_pid(process_server)).create_time()
    assert engine_started - gateway_started < marks["app_built"] / 1000
    assert marks["engine_load_start"] < marks["app_built"] < marks["engine_ready"]


def has_torch(pid: int) -> bool:
    """libtorch mapped into the process: torch was imported there."""
    return any("libtorch" in m.path for m in psutil.Process(pid).memory_maps())


async def test_the_gateway_serves_without_importing_torch(process_server):
    """The gateway parses, tokenizes, routes and writes: after a WebSocket session turn, a prompt with f32le
    embedding rows, a streamed chat completion, /v1/embeddings, /tokenize and /stats it still has no libtorch
    mapped; the engine process has. (Before the first test that sends torch.save'd rows or a snapshot with rows
    to restore: those load torch in the gateway on use.)"""
    rows = np.random.default_rng(0).standard_normal((3, 256), dtype=np.float32) * 0.02
    parts = [{"type": "tokens", "ids": [1063, 389]}, {"type": "embedding",
                                                     "b64": base64.b64encode(rows.astype("<f4").tobytes()).decode()}]
    async with connect(process_server.ws) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "t", "session": "notorch", "prompt": PROMPTS[0],
                                  "max_tokens": 4}))
        ids, done = await ws_tokens(ws, "t")
        await ws.send(json.dumps({"type": "generate", "id": "rows", "prompt_parts": parts, "max_tokens": 4}))
        row_ids, row_done = await ws_tokens(ws, "rows")
    assert len(ids) == 4 and done["finish_reason"] == "length"
    assert len(row_ids) == 4 and row_done["usage"]["embedding_tokens"] == 3
    async with httpx.AsyncClient(base_url=process_server.http, timeout=60) as http:
        chat = await http.post("/v1/chat/completions", json={
            "model": "seedance-tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "stream": True})
        embeds = await http.post("/v1/embeddings", json={"model": "seedance-tiny", "input": "In the beginning"})
        tokens = await http.post("/tokenize", json={"prompt": "In the beginning"})
    assert chat.status_code == embeds.status_code == tokens.status_code == 200
    assert "data: [DONE]" in chat.text and len(embeds.json()["data"][0]["embedding"]) == 256
    assert process_server.stats()["engine_mode"] == "process"
    assert not has_torch(process_server.pid)
    assert has_torch(engine_pid(process_server))  # the check sees torch where it is


async def in_process_greedy(prompt: str, max_tokens: int) -> list[int]:
    engine = await AsyncEngine.create(EngineConfig(num_kv_blocks=1024, dtype="float32"))  # as start_server's
    try:
        request = GenerateRequest(prompt=prompt, params=SamplingParams(max_tokens=max_tokens, temperature=0.0))
        return [e.token_id async for e in engine.generate(request) if e.token_id >= 0]
    finally:
        await engine.close()


async def ws_tokens(ws, request_id: str) -> tuple[list[int], dict]:
    seen = await until(ws, lambda m: m.get("id") == request_id and m["type"] == "done", timeout=60)
    ids = [t for m in seen if m["type"] == "chunk" and m["id"] == request_id for t in m["token_ids"]]
    return ids, seen[-1]


async def test_greedy_output_equals_the_in_process_engine(process_server):
    assert process_server.stats()["engine_mode"] == "process"
    engine_pid(process_server)
    async with connect(process_server.ws) as ws:
        for i, prompt in enumerate(PROMPTS):  # three at once: one step batches all of them
            await ws.send(json.dumps({"type": "generate", "id": f"g{i}", "prompt": prompt, "max_tokens": 24,
                                      "temperature": 0.0}))
        got = {}
        seen: list[dict] = []
        async with asyncio.timeout(60):
            while len(got) < len(PROMPTS):
                for m in messages_of(await ws.recv()):
                    seen.append(m)
                    if m["type"] == "done":
                        got[m["id"]] = [t for c in seen if c["type"] == "chunk" and c["id"] == m["id"]
                                        for t in c["token_ids"]]
    for i, prompt in enumerate(PROMPTS):
        assert got[f"g{i}"] == await in_process_greedy(prompt, 24), prompt
    stats = process_server.stats()
    assert stats["generated_tokens"] >= 24 * len(PROMPTS) and stats["open_requests"] == 0


async def test_session_turn_reuses_kv_pinned_in_the_engine_process(process_server):
    async with connect(process_server.ws) as ws:
        params = {"max_tokens": 16, "temperature": 0.0, "ignore_eos": True}
        await ws.send(json.dumps({"type": "generate", "id": "t0", "session": "proc", "prompt": PROMPTS[1], **params}))
        _, first = await ws_tokens(ws, "t0")
        await ws.send(json.dumps({"type": "generate", "id": "t1", "session": "proc", "prompt": " And", **params}))
        _, second = await ws_tokens(ws, "t1")
    assert first["finish_reason"] == second["finish_reason"] == "length"
    prior = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
    assert second["usage"]["cached_tokens"] / prior >= 0.8  # the first turn's KV, kept pinned across the boundary


async def test_cancel_and_sse_through_the_process_engine(process_server):
    async with connect(process_server.ws) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "And", "max_tokens": 2000,
                                  "ignore_eos": True}))
        await until(ws, lambda m: m["type"] == "chunk")
        await ws.send(json.dumps({"type": "cancel", "id": "long"}))
        done = (await until(ws, lambda m: m["type"] == "done"))[-1]
    assert done["finish_reason"] == "cancelled"
    body = {"model": "seedance-tiny", "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0.0}
    async with httpx.AsyncClient(base_url=process_server.http, timeout=60) as http:
        resp = await http.post("/v1/completions", json=body)
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 8


async def test_a_dead_engine_process_fails_streams_in_flight_and_readyz_says_so(tmp_path_factory):
    srv = start_server(tmp_path_factory, engine_mode="process", num_kv_blocks=256)
    try:
        async with connect(srv.ws) as ws:
            await ws.send(json.dumps({"type": "generate", "id": "a", "prompt": "And", "max_tokens": 4000,
                                      "ignore_eos": True}))
            await until(ws, lambda m: m["type"] == "chunk")
            os.kill(engine_pid(srv), signal.SIGKILL)
            seen = await until(ws, lambda m: m.get("id") == "a" and m["type"] == "done", timeout=20)
            assert seen[-1]["finish_reason"] == "error"
            assert any(m["type"] == "error" and m.get("id") == "a" for m in seen), seen
            await ws.send(json.dumps({"type": "generate", "id": "b", "prompt": "And", "max_tokens": 4}))
            refused = await until(ws, lambda m: m.get("id") == "b" and m["type"] == "done", timeout=20)
            assert any(m["type"] == "error" and m["code"] == "overloaded" for m in refused), refused
        ready = httpx.get(f"{srv.http}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["reason"] == "engine_unavailable"
        assert httpx.get(f"{srv.http}/healthz", timeout=10).status_code == 200
        resp = httpx.post(f"{srv.http}/v1/completions", json={"model": "seedance-tiny", "prompt": "x", "max_tokens": 2},
                          timeout=10)
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "overloaded"
    finally:
        assert srv.stop() == 0


# ---- main's features across the process boundary: each equals the thread-mode server's answer (`server`) ----
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def completion(srv, **body) -> httpx.Response:
    return httpx.post(f"{srv.http}/v1/completions", json={"model": "seedance-tiny", "prompt": PROMPTS[0], **body},
                      timeout=60)


def test_guided_requests_compile_in_the_engine_process(process_server, thread_server):
    body = {"max_tokens": 60, "temperature": 0.0, "guided_json": PERSON}
    got = completion(process_server, **body)
    assert got.status_code == 200, got.text
    text = got.json()["choices"][0]["text"]
    assert set(json.loads(text)) == {"name", "age"}
    assert text == completion(thread_server, **body).json()["choices"][0]["text"]  # the thread mode's, exactly
    choice = completion(process_server, max_tokens=10, temperature=1.0, seed=4, guided_choice=["light", "dark"])
    assert choice.json()["choices"][0]["text"] in {"light", "dark"}
    bad = completion(process_server, max_tokens=4, guided_regex="(unclosed")  # refused in the core: a 400, no hang
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request", bad.text
    assert completion(process_server, max_tokens=2).status_code == 200  # the engine went on


async def test_embedding_prompts_cross_as_bytes(process_server, thread_server):
    from safetensors.torch import load_file

    from seedance.models.loader import BUILTIN_MODEL_DIR
    from tests.e2e.test_embedding_prompts import GREEDY, IDS, f32le, ids_of, tokens_b64
    from tests.e2e.test_websocket import run_requests

    table = load_file(str(BUILTIN_MODEL_DIR / "model.safetensors"))["model.embed_tokens.weight"].float()
    requests = [{"id": "ids", "prompt_b64": tokens_b64(IDS), **GREEDY},
                {"id": "parts", "prompt_parts": [{"type": "tokens", "ids": IDS[:2]},
                                                 {"type": "embedding", "b64": f32le(table[IDS[2:5]])},
                                                 {"type": "tokens", "ids": IDS[5:]}], **GREEDY}]
    async with connect(process_server.ws) as ws:
        results = await run_requests(ws, requests)
    async with connect(thread_server.ws) as ws:
        thread = await run_requests(ws, requests[1:])
    assert all(not r["errors"] for r in results.values()), results
    assert ids_of(results["parts"]) == ids_of(results["ids"]) == ids_of(thread["parts"])
    usage = results["parts"]["done"]["usage"]
    assert (usage["prompt_tokens"], usage["embedding_tokens"]) == (7, 3)


def test_v1_embeddings_run_in_the_engine_process(process_server, thread_server):
    body = {"model": "seedance-tiny", "input": ["In the beginning", [1063, 389, 392]]}
    got = httpx.post(f"{process_server.http}/v1/embeddings", json=body, timeout=60)
    want = httpx.post(f"{thread_server.http}/v1/embeddings", json=body, timeout=60).json()
    assert got.status_code == 200, got.text
    for a, b in zip(got.json()["data"], want["data"], strict=True):
        assert len(a["embedding"]) == 256 and sum(x * y for x, y in zip(a["embedding"], b["embedding"],
                                                                        strict=True)) > 0.99999
    assert got.json()["usage"] == want["usage"]


async def test_concurrent_turns_of_one_session_are_one_turn_and_409s_never_a_500(process_server):
    """Turns of one session submitted at once all pass the busy check before any begins (submit awaits the engine
    process's verdict); each but the first to begin was a 500 (found by `seedance bench fuzz --engine process`).
    They are 409s with the JSON error body."""
    body = {"prompt": [1, 2, 3], "max_tokens": 3, "stream": True, "session": "concurrent-turns"}
    async with httpx.AsyncClient(base_url=process_server.http, timeout=60) as client:
        for _ in range(3):
            replies = await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(8)))
            statuses = {r.status_code for r in replies}
            assert statuses <= {200, 409}, [(r.status_code, r.text[:200]) for r in replies]
            assert 200 in statuses
            assert all(r.json()["error"]["code"] == "invalid_request" for r in replies if r.status_code == 409)


def test_n_choices_of_a_one_token_request_answer(process_server):
    """Choice 0's only event came with its admission, before submit_choices waited for it: the request hung
    (found by `seedance bench fuzz --engine process`)."""
    body = {"messages": [{"role": "user", "content": "Rain?"}], "max_tokens": 1, "n": 2, "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"a": {"type": "integer"}}}}}]}
    for _ in range(3):
        reply = httpx.post(f"{process_server.http}/v1/chat/completions", json=body, timeout=20)
        assert reply.status_code == 200, reply.text
        assert [c["index"] for c in reply.json()["choices"]] == [0, 1]


async def test_concurrent_turns_of_one_session_on_two_websockets_fail_one_request_not_the_server(process_server):
    """The same race on /v1/stream: two connections' turns of one session; the second to begin is refused
    (`error` with the session's code, then `done`), never `internal`, and both connections go on."""
    long = {"type": "generate", "session": "two-sockets", "prompt": "Amen", "max_tokens": 3}
    async with connect(process_server.ws) as a, connect(process_server.ws) as b:
        for round_ in range(5):
            await asyncio.gather(a.send(json.dumps({**long, "id": f"a{round_}"})),
                                 b.send(json.dumps({**long, "id": f"b{round_}"})))
            codes = []
            for ws, rid in ((a, f"a{round_}"), (b, f"b{round_}")):
                messages = await until(ws, lambda m, rid=rid: m["type"] == "done" and m["id"] == rid)
                codes += [m["code"] for m in messages if m["type"] == "error"]
            assert "internal" not in codes and len(codes) <= 1, codes


async def test_concurrent_responses_of_one_realtime_session_fail_one_response_not_internal(process_server):
    """Two /v1/realtime connections on one session asking for a response at once: the second to begin fails to
    start (`error` with the session's code, then `response.done` failed), never `internal`."""
    url = process_server.ws.replace("/v1/stream", "/v1/realtime") + "?session=two-realtime"
    async with connect(url) as a, connect(url) as b:
        for round_ in range(5):
            item = {"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"Amen {round_}"}]}}
            create = {"type": "response.create", "response": {"max_output_tokens": 3}}
            await asyncio.gather(*(ws.send(json.dumps(m)) for ws in (a, b) for m in (item, create)))
            codes = []
            for ws in (a, b):
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if event["type"] == "error":
                        codes.append(event["error"]["code"])
                    if event["type"] == "response.done":
                        break
            assert "internal" not in codes, codes


async def test_a_requests_first_token_goes_out_with_its_admission_not_a_step_later(process_server):
    """The process engine's first token of a request rides on the Step frame that admits it, before the WebSocket's
    stream has its listener; it waited for the next step's delivery: every first chunk carried two tokens (TTFT a
    step longer, the fuzz canary's first messages the slowest) and a one-token request waited for the heartbeat
    (15 s)."""
    firsts = []
    async with connect(process_server.ws) as ws:
        for i in range(5):
            await ws.send(json.dumps({"type": "generate", "id": f"f{i}", "prompt": PROMPTS[1], "max_tokens": 4,
                                      "temperature": 0.0, "ignore_eos": True}))
            seen = await until(ws, lambda m, i=i: m["type"] == "done" and m["id"] == f"f{i}")
            firsts.append(len(next(m for m in seen if m["type"] == "chunk")["token_ids"]))
        await ws.send(json.dumps({"type": "generate", "id": "one", "prompt": PROMPTS[0], "max_tokens": 1}))
        done = (await until(ws, lambda m: m["type"] == "done", timeout=5))[-1]  # before: at the heartbeat, 15 s
    assert done["id"] == "one" and done["usage"]["completion_tokens"] == 1
    assert 1 in firsts, firsts  # before: [2, 2, 2, 2, 2]
