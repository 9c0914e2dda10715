"""Issue #12, the WebSocket/engine half, against the real server: stop-string tokens, large prompts,
fuzzed connections beside a canary stream, and clients that never read."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time

import httpx
import pytest
from tokenizers import Tokenizer
from websockets.asyncio.client import connect

from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.protocol import decode_frames
from seedance.protocol.errors import ERROR_CODES
from tests.conftest import start_redis
from tests.e2e.conftest import free_port
from tests.e2e.wire import messages_of, raw_handshake, send_masked_text

pytestmark = pytest.mark.both_stacks  # every test's server on both /v1/stream stacks (tests/e2e/conftest.py)

STOP_PROMPT = "And the LORD spake unto Moses, saying, Speak unto all"  # greedy: " the congregation of the..."


async def _json_stream(ws, request: dict) -> tuple[str, list[int], dict]:
    await ws.send(json.dumps({"type": "generate", **request}))
    text, ids = [], []
    async with asyncio.timeout(60):
        while True:
            for m in messages_of(await ws.recv()):
                if m["type"] == "chunk":
                    text.append(m["text"])
                    ids += m["token_ids"]
                elif m["type"] == "done":
                    return "".join(text), ids, m


async def _binary_stream(ws, request: dict) -> tuple[str, list[int], dict]:
    await ws.send(json.dumps({"type": "generate", "binary": True, **request}))
    text, ids = [], []
    async with asyncio.timeout(60):
        while True:
            for frame in decode_frames(await ws.recv()):
                text.append(frame.text)
                ids += frame.token_ids.tolist()
                if not frame.is_partial:
                    return "".join(text), ids, frame.metadata


async def test_stop_string_tokens_do_not_leak_into_token_ids_json_or_mtf1(server):
    tokenizer = Tokenizer.from_file(str(BUILTIN_MODEL_DIR / "tokenizer.json"))
    greedy = {"prompt": STOP_PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    async with connect(server.ws) as ws:
        free_text, free_ids, _ = await _json_stream(ws, {"id": "free", **greedy})
        assert " congregation" in free_text
        for stream in (_json_stream, _binary_stream):
            text, ids, end = await stream(ws, {"id": "stopped", **greedy, "stop": ["congregation", "Israel"]})
            assert end["finish_reason"] == "stop" and end["stop_reason"] == "congregation"
            assert text == free_text[: free_text.index("congregation")]
            # The ids are the longest run of output tokens whose text lies wholly before the stop string.
            assert ids == free_ids[: len(ids)] and ids
            assert text.startswith(tokenizer.decode(ids))
            assert "cong" in tokenizer.decode(free_ids[: len(ids) + 1])
            assert end["usage"]["completion_tokens"] == len(ids)


async def _ping_rtts(ws, stop: asyncio.Event) -> list[float]:
    """Ping over `ws` back to back until `stop`; the round trips in seconds."""
    rtts = []
    while not stop.is_set() or not rtts:
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "ping", "ts": sent}))
        async with asyncio.timeout(30):
            while not any(m["type"] == "pong" for m in messages_of(await ws.recv())):
                pass
        rtts.append(time.perf_counter() - sent)
        await asyncio.sleep(0.005)
    return rtts


async def test_a_megabyte_prompt_is_refused_without_delaying_other_connections(server):
    huge = "And God said unto Moses, I AM THAT I AM. " * 24_000  # 984,000 characters, under max_message_bytes
    async with connect(server.ws) as canary, connect(server.ws, max_size=None) as attacker:
        stop = asyncio.Event()
        pinger = asyncio.create_task(_ping_rtts(canary, stop))
        await asyncio.sleep(0.2)
        refusals = []
        for i, request in enumerate([{"prompt": huge}, {"messages": [{"role": "user", "content": huge}]}] * 2):
            await attacker.send(json.dumps({"type": "generate", "id": f"big{i}", **request}))
            async with asyncio.timeout(30):
                got = messages_of(await attacker.recv())
            refusals.append(got[0])
        await asyncio.sleep(0.2)
        stop.set()
        rtts = await pinger
    assert len(rtts) > 10 and max(rtts) < 0.25, f"canary ping worst {max(rtts) * 1000:.0f} ms"
    assert all(r["type"] == "error" and r["code"] == "invalid_request"
               for r in refusals), refusals


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]  # tcpi_state; 1 is ESTABLISHED


def test_clients_that_never_read_are_paused_then_closed(server_factory):
    # Default kernel buffers (on loopback they absorb megabytes), default water marks: 4 connections x 32
    # requests x 4,096 tokens, and the clients never read a byte nor answer a ping.
    timeout_s = 2.0
    srv = server_factory(synthetic_rate=2000, slow_consumer_timeout_s=timeout_s, heartbeat_interval_s=60,
                         max_requests_per_connection=32)
    socks = [raw_handshake(srv.port) for _ in range(4)]
    start = time.monotonic()
    for sock in socks:
        for i in range(32):
            send_masked_text(sock, json.dumps({"type": "generate", "id": f"r{i}", "prompt": "x", "max_tokens": 4096}))
    deadline = start + 10
    while time.monotonic() < deadline and srv.stats()["num_paused"] < 128:
        time.sleep(0.05)
    paused_after = time.monotonic() - start
    generated = srv.stats()["generated_tokens"]
    assert srv.stats()["num_paused"] == 128, "the never-reading clients' streams were not paused"
    assert generated < 128 * 4096 // 4
    deadline = start + paused_after + timeout_s + 15
    while time.monotonic() < deadline and (srv.stats()["websockets"] or any(_tcp_state(s) == 1 for s in socks)):
        time.sleep(0.1)
    closed_after = time.monotonic() - start
    stats, states = srv.stats(), [_tcp_state(s) for s in socks]
    for sock in socks:
        sock.close()
    assert stats["websockets"] == 0 and stats["open_requests"] == 0, stats
    assert 1 not in states, states  # the server let go of every socket (FIN or RST)
    assert closed_after < paused_after + timeout_s + 15


async def _until_ids(ws, wanted: dict[str, set[str]], timeout: float = 60) -> list[dict]:
    """Messages until, for each id, every wanted message type has come."""
    missing = {k: set(v) for k, v in wanted.items()}
    seen = []
    async with asyncio.timeout(timeout):
        while any(missing.values()):
            for m in messages_of(await ws.recv()):
                seen.append(m)
                missing.get(m.get("id"), set()).discard(m["type"])
    return seen


def _one(seen: list[dict], id_: str, type_: str) -> dict:
    found = [m for m in seen if m.get("id") == id_ and m["type"] == type_]
    assert len(found) == 1, (id_, type_, seen)
    return found[0]


async def test_redis_down_fails_only_the_session_request_and_readiness_says_so(server_factory, tmp_path):
    port = free_port()
    redis = start_redis(port, tmp_path)
    srv = server_factory(session_store=f"redis://127.0.0.1:{port}/0")
    turn = {"max_tokens": 8, "temperature": 0}
    try:
        async with connect(srv.ws) as ws:
            await ws.send(json.dumps({"type": "generate", "id": "t1", "session": "kept", "prompt": "Amen", **turn}))
            _one(await _until_ids(ws, {"t1": {"done", "snapshot"}}), "t1", "snapshot")
            redis.terminate()
            redis.wait(10)
            # A stream without a session, then session requests while the store is down, all on this connection.
            await ws.send(json.dumps({"type": "generate", "id": "plain", "prompt": "And God said", "max_tokens": 40,
                                      "temperature": 0, "ignore_eos": True}))
            await ws.send(json.dumps({"type": "generate", "id": "new", "session": "fresh", "prompt": "Amen", **turn}))
            await ws.send(json.dumps({"type": "generate", "id": "t2", "session": "kept", "prompt": " Amen", **turn}))
            seen = await _until_ids(ws, {"plain": {"done"}, "new": {"error", "done"}, "t2": {"done", "error"}})
            assert _one(seen, "plain", "done")["finish_reason"] == "length"  # its neighbour failing cut nothing
            assert _one(seen, "new", "error")["code"] == "store_unavailable"
            assert _one(seen, "new", "done")["finish_reason"] == "error"
            assert _one(seen, "t2", "done")["finish_reason"] == "length"  # in memory: the turn itself runs
            assert _one(seen, "t2", "error")["code"] == "snapshot_failed"  # but it says it is not durable
            async with httpx.AsyncClient(base_url=srv.http, timeout=30) as http:
                sse = await http.post("/v1/completions", json={"prompt": "Amen", "max_tokens": 4, "stream": True,
                                                               "session": "other"})
                assert sse.status_code == 503 and sse.json()["error"]["code"] == "store_unavailable"
                ready = (await http.get("/readyz")).json()
                assert ready["status"] == "degraded" and ready["reason"] == "session_store_unavailable"
                await ws.send(json.dumps({"type": "ping"}))
                assert any(m["type"] == "pong" for m in await _until_ids(ws, {None: {"pong"}}))
                # The store comes back: readiness recovers by itself, the failed turn is written and acknowledged.
                redis = start_redis(port, tmp_path)
                late = _one(await _until_ids(ws, {"t2": {"snapshot"}}, timeout=30), "t2", "snapshot")
                assert late["session"] == "kept" and late["turn"] == 2
                assert (await http.get("/readyz")).json()["status"] == "ready"
            await ws.send(json.dumps({"type": "generate", "id": "t3", "session": "fresh", "prompt": "Amen", **turn}))
            _one(await _until_ids(ws, {"t3": {"done", "snapshot"}}), "t3", "snapshot")
    finally:
        redis.terminate()
        redis.wait(10)


def _fuzz_message(rng: random.Random, i: int) -> str | bytes:
    """Bad and odd client messages, seeded: broken JSON, wrong types, unknown ids and types, binary frames,
    refused generates (huge prompts, bad parameters) and a few valid ones with odd but legal options."""
    rid = rng.choice(["f1", "f2", "", "x" * 200, 7, None, f"f{rng.randrange(40)}"])
    if i % 25 == 0:  # a prompt of almost max_message_bytes, certainly over the context: refused
        return json.dumps({"type": "generate", "id": f"big{i}", "prompt": "In the beginning " * 55_000})
    choices = [
        lambda: rng.choice(["", "{", "[]", "null", "1e999", '"\\ud800"', "[" * 1000 + "]" * 1000, "\x00\xff"]),
        lambda: json.dumps({"type": rng.choice(["generate", "cancel", "credit", "nope", 5, None])}),
        lambda: json.dumps({"type": "generate", "id": rid, "prompt": rng.choice(["Amen", "", "\ud800", 5]),
                            "max_tokens": rng.choice([1, 8, 2**63, -1, 1.5, "8"]),
                            "temperature": rng.choice([0, 1, -1, 1e308, "x"]), "top_p": rng.choice([1, 0, 2, 0.5]),
                            "stop": rng.choice([None, [], ["x" * 5000] * 16, ["the"], [""] * 20]),
                            "logprobs": rng.choice([None, 0, 20, 21]), "binary": rng.choice([True, False])}),
        lambda: json.dumps({"type": "cancel", "id": rid}),
        lambda: json.dumps({"type": "credit", "id": rid, "n": rng.choice([1, 0, -1, 2**80])}),
        lambda: json.dumps({"type": "priority", "id": rid, "priority": rng.choice([-2**31, 2**40, 1.5])}),
        lambda: json.dumps({"type": "ping", "ts": rng.choice([None, "x", 1e308])}),
        lambda: json.dumps({"type": "resume", "session": rng.choice(["s", "", 5]), "id": rid, "last_seq": 2**70}),
        lambda: json.dumps({"type": "generate", "id": rid, "max_tokens": 8,
                            "prompt_b64": rng.choice(["AAAA", "!!!", "/////w=="])}),
        lambda: json.dumps({"type": "generate", "id": rid, "max_tokens": 8,
                            "messages": rng.choice([[], [{"role": "user"}], [{"role": 5, "content": "x"}]])}),
        lambda: b"\x00\x01binary",
        lambda: json.dumps({"type": "reauth", "token": rng.choice(["", "a.b.c"])}),
    ]
    return rng.choice(choices)()


async def test_a_fuzzed_connection_gets_answers_and_a_canary_beside_it_stays_flat(server):
    greedy = {"prompt": "And God said", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    async with connect(server.ws) as canary:
        quiet_text, _, _ = await _json_stream(canary, {"id": "quiet", **greedy})
        # The fuzzer reads lazily (a 4-message queue): its replies back up on the server while it sends.
        async with connect(server.ws, max_size=None, max_queue=4) as fuzzed:
            stop = asyncio.Event()
            pinger = asyncio.create_task(_ping_rtts(canary, stop))
            rng = random.Random(12)
            for i in range(400):
                await fuzzed.send(_fuzz_message(rng, i))
                await asyncio.sleep(1 / 150)  # under the per-connection message rate
            stop.set()
            rtts = await pinger
            # The fuzzed connection still answers: everything it was owed, then the pong to a last ping.
            await fuzzed.send(json.dumps({"type": "ping", "ts": -1.0}))
            codes_seen, pong = set(), False
            async with asyncio.timeout(60):
                while not pong:
                    raw = await fuzzed.recv()
                    if isinstance(raw, bytes):
                        continue  # MTF1 output of a valid binary request
                    for m in messages_of(raw):
                        codes_seen.add(m.get("code"))
                        pong = pong or (m["type"] == "pong" and m["ts"] == -1.0)
        canary_text, _, _ = await _json_stream(canary, {"id": "after", **greedy})
    assert max(rtts) < 0.25, f"canary ping worst {max(rtts) * 1000:.0f} ms over {len(rtts)} pings"
    assert canary_text == quiet_text
    assert codes_seen - {None} <= ERROR_CODES and {"invalid_json", "invalid_message", "unsupported"} <= codes_seen
    assert "Traceback" not in server.log()
