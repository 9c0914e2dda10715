"""The WebSocket transport against the real server, driven by the `websockets` client."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from seedance.protocol import CloseCode, decode_frame
from tests.e2e.wire import messages_of, raw_handshake, read_text_frames, send_masked_text, until

pytestmark = pytest.mark.both_stacks  # every test's server on both /v1/stream stacks (tests/e2e/conftest.py)


async def run_requests(ws, requests: list[dict], timeout: float = 60) -> dict[str, dict]:
    """Send the requests, collect every message per id until each is done (or errored)."""
    results = {r["id"]: {"chunks": [], "done": None, "errors": []} for r in requests}
    for r in requests:
        await ws.send(json.dumps({"type": "generate", **r}))
    pending = set(results)
    async with asyncio.timeout(timeout):
        while pending:
            for m in messages_of(await ws.recv()):
                slot = results[m["id"]]
                if m["type"] == "chunk":
                    slot["chunks"].append(m)
                elif m["type"] == "done":
                    slot["done"] = m
                    pending.discard(m["id"])
                elif m["type"] == "error":
                    slot["errors"].append(m)
                    pending.discard(m["id"])
    return results


def text_of(result: dict) -> str:
    return "".join(c["text"] for c in result["chunks"])


GREEDY = {"max_tokens": 24, "temperature": 0, "ignore_eos": True}


async def test_many_requests_multiplexed_on_one_connection(server):
    prompts = {"a": "And God said", "b": "In the beginning", "c": "Blessed are the meek"}
    async with connect(server.ws) as ws:
        together = await run_requests(ws, [{"id": k, "prompt": p, **GREEDY} for k, p in prompts.items()])
    solo = {}
    for k, p in prompts.items():
        async with connect(server.ws) as ws:
            solo[k] = (await run_requests(ws, [{"id": k, "prompt": p, **GREEDY}]))[k]
    for k in prompts:
        assert together[k]["done"]["finish_reason"] == "length"
        assert together[k]["done"]["usage"]["completion_tokens"] == 24
        assert [c["seq"] for c in together[k]["chunks"]] == list(range(len(together[k]["chunks"])))
        assert text_of(together[k]) == text_of(solo[k]) and text_of(solo[k])
        tokens = [t for c in together[k]["chunks"] for t in c["token_ids"]]
        assert len(tokens) == 24


async def test_tokens_of_one_step_share_one_message(server):
    async with connect(server.ws) as ws:
        for i in range(6):
            await ws.send(json.dumps({"type": "generate", "id": f"r{i}", "prompt": "Amen", **GREEDY}))
        sizes = []
        done = 0
        async with asyncio.timeout(60):
            while done < 6:
                batch = messages_of(await ws.recv())
                sizes.append(len(batch))
                done += sum(m["type"] == "done" for m in batch)
    assert max(sizes) > 1  # chunks of several requests from one engine step arrived as one message


async def test_cancel_mid_stream(server):
    async with connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "And", "max_tokens": 2000,
                                  "ignore_eos": True}))
        chunks = 0
        async with asyncio.timeout(60):
            while True:
                for m in messages_of(await ws.recv()):
                    if m["type"] == "chunk":
                        chunks += 1
                        if chunks == 3:
                            await ws.send(json.dumps({"type": "cancel", "id": "long"}))
                    elif m["type"] == "done":
                        assert m["finish_reason"] == "cancelled"
                        assert m["usage"]["completion_tokens"] < 100
                        break
                else:
                    continue
                break
        # the connection is still good for more work
        result = await run_requests(ws, [{"id": "after", "prompt": "Amen", "max_tokens": 3}])
        assert result["after"]["done"] is not None
    for _ in range(50):
        if server.stats()["num_running"] == 0:
            break
        await asyncio.sleep(0.05)
    assert server.stats()["num_running"] == 0


def tokens_of(chunks: list[dict]) -> list[int]:
    return [t for c in chunks for t in c["token_ids"]]


async def test_n_choices_share_one_id_and_the_prompts_kv(server):
    prompt = "Blessed are the poor in spirit: for theirs is the kingdom of heaven. " * 3  # full KV blocks, fresh
    sampled = {"prompt": prompt, "max_tokens": 12, "temperature": 0.9, "seed": 40, "ignore_eos": True}
    greedy = {**sampled, "temperature": 0, "seed": 3}
    async with connect(server.ws) as ws:
        got = await run_requests(ws, [{"id": "n3", "n": 3, **sampled}, {"id": "g3", "n": 3, **greedy}])
        solo = await run_requests(ws, [{"id": f"s{i}", **sampled, "seed": 40 + i} for i in range(3)]
                                  + [{"id": "g", **greedy}])
    for result in (*got.values(), *solo.values()):
        assert result["errors"] == [] and result["done"] is not None
    for name, one in (("n3", lambda i: solo[f"s{i}"]), ("g3", lambda i: solo["g"])):
        chunks, done = got[name]["chunks"], got[name]["done"]
        assert [c["seq"] for c in chunks] == list(range(len(chunks)))  # one counter for the id
        for i in range(3):  # choice i is the n = 1 run with seed + i
            mine = [c for c in chunks if c["index"] == i]
            assert tokens_of(mine) == tokens_of(one(i)["chunks"]) and len(tokens_of(mine)) == 12
            assert "".join(c["text"] for c in mine) == text_of(one(i))
        assert {c["index"] for c in chunks} == {0, 1, 2}
        assert [c["index"] for c in done["choices"]] == [0, 1, 2] and done["finish_reason"] == "length"
        assert [c["usage"]["completion_tokens"] for c in done["choices"]] == [12, 12, 12]
        assert done["usage"]["completion_tokens"] == 36
        assert done["usage"]["prompt_tokens"] == 3 * solo["g"]["done"]["usage"]["prompt_tokens"]
    assert len({text_of(solo[f"s{i}"]) for i in range(3)}) > 1  # seed + i: different samples
    reuse = [c["usage"]["cached_tokens"] for c in got["n3"]["done"]["choices"]]
    assert reuse[0] == 0 and min(reuse[1:]) >= 16  # choices 1 and 2 reused choice 0's prompt KV (16-token blocks)
    assert got["n3"]["done"]["usage"]["cached_tokens"] == sum(reuse)
    assert "choices" not in solo["g"]["done"] and all("index" not in c for c in solo["g"]["chunks"])


async def test_cancelling_an_id_with_choices_cancels_every_choice(server):
    async with connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "many", "n": 4, "prompt": "And", "max_tokens": 2000,
                                  "ignore_eos": True}))
        done = None
        async with asyncio.timeout(60):
            while done is None:
                for m in messages_of(await ws.recv()):
                    if m["type"] == "chunk" and m["seq"] == 4:
                        await ws.send(json.dumps({"type": "cancel", "id": "many"}))
                    elif m["type"] == "done":
                        done = m
    assert done["finish_reason"] == "cancelled"
    assert [c["finish_reason"] for c in done["choices"]] == ["cancelled"] * 4
    assert done["usage"]["completion_tokens"] < 400
    for _ in range(50):
        if server.stats()["num_running"] == 0:
            break
        await asyncio.sleep(0.05)
    assert server.stats()["num_running"] == 0


async def test_a_message_right_after_an_n_2_generate_is_read_at_once(server):
    """The connection reads on while an n > 1 generate's first choice prefills: a ping sent right after it is
    answered long before that prefill could give a token, and a cancel ends the id before any token went out."""
    loop = asyncio.get_running_loop()
    long = " ".join(f"and the {i} day" for i in range(300))  # ~1500 tokens: a prefill of many steps
    async with connect(server.ws) as ws:
        start = loop.time()  # a fresh prompt of the same length: how long its first token takes here
        await ws.send(json.dumps({"type": "generate", "id": "ref", "prompt": "Then " + long, "max_tokens": 1}))
        await until(ws, lambda m: m.get("id") == "ref" and m["type"] == "done", 120)  # its one token, then done
        first_token_s = loop.time() - start

        start = loop.time()
        await ws.send(json.dumps({"type": "generate", "id": "two", "n": 2, "prompt": "Now " + long,
                                  "max_tokens": 64, "ignore_eos": True}))
        await ws.send(json.dumps({"type": "ping", "ts": 41}))
        await ws.send(json.dumps({"type": "cancel", "id": "two"}))
        seen = await until(ws, lambda m: m.get("id") == "two" and m["type"] == "done", 120)
        pong = next(loop.time() - start for m in seen if m["type"] == "pong")
    assert [m["type"] for m in seen if m.get("id") == "two"] == ["done"]  # no chunk: cancelled before any token
    assert seen[-1]["finish_reason"] == "cancelled"
    assert [c["finish_reason"] for c in seen[-1]["choices"]] == ["cancelled", "cancelled"]
    assert pong < first_token_s / 2, (pong, first_token_s)  # a blocked reader: pong >= the first token


async def test_closing_the_connection_cancels_its_requests(server):
    async with connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "x", "prompt": "And", "max_tokens": 3000,
                                  "ignore_eos": True}))
        await ws.recv()
    for _ in range(300):
        stats = server.stats()
        if stats["num_running"] == 0 and stats["open_requests"] == 0:
            break
        await asyncio.sleep(0.05)
    assert stats["num_running"] == 0 and stats["open_requests"] == 0


async def test_application_ping_and_protocol_ping(server):
    async with connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "ping", "ts": 12.5}))
        assert messages_of(await ws.recv()) == [{"type": "pong", "ts": 12.5}]
        pong_waiter = await ws.ping(b"hello")
        latency = await asyncio.wait_for(pong_waiter, 5)  # the server answers WebSocket pings
        assert latency >= 0


@pytest.mark.parametrize(("raw", "code"), [
    ("{not json", "invalid_json"),
    ('{"type": "fly", "id": "a"}', "unknown_type"),
    ('{"type": "generate", "prompt": "x"}', "invalid_message"),
    ('{"type": "generate", "id": "a", "prompt": "x", "max_tokens": "lots"}', "invalid_message"),
    ('{"type": "generate", "id": "a", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}',
     "invalid_message"),
    ('{"type": "cancel", "id": "nobody"}', "unknown_id"),
    ('{"type": "credit", "id": "nobody", "n": 3}', "unknown_id"),
    ('{"type": "priority", "id": "nobody", "priority": 1}', "unknown_id"),
    ('{"type": "credit", "id": "a", "n": 0}', "invalid_message"),
    ('{"type": "generate", "id": "a", "prompt": "", "max_tokens": 2}', "invalid_request"),
    ('{"type": "generate", "id": "a", "prompt": "x", "max_tokens": 100000}', "invalid_request"),
])
async def test_bad_input_gets_an_error_and_the_connection_survives(server, raw, code):
    async with connect(server.ws) as ws:
        await ws.send(raw)
        error, *rest = messages_of(await ws.recv())
        assert error["type"] == "error" and error["code"] == code and error["message"]
        if '"generate", "id"' in raw:  # a refused generate still ends with its done
            assert rest == [{"type": "done", "id": "a", "finish_reason": "error",
                             "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}}]
        else:
            assert rest == []
        result = await run_requests(ws, [{"id": "ok", "prompt": "Amen", "max_tokens": 2}])
        assert result["ok"]["done"]["finish_reason"] in ("length", "stop")


async def test_priority_message_reprioritises_a_running_request(server):
    async with connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "p", "prompt": "And", "max_tokens": 30,
                                  "temperature": 0, "ignore_eos": True}))
        await ws.send(json.dumps({"type": "priority", "id": "p", "priority": -3}))
        done, errors = None, []
        async with asyncio.timeout(30):
            while done is None:
                for m in messages_of(await ws.recv()):
                    errors += [m] if m["type"] == "error" else []
                    done = m if m["type"] == "done" else done
        assert errors == [] and done["finish_reason"] == "length"


async def test_duplicate_id_and_per_connection_limit(server):
    async with connect(server.ws) as ws:
        long = {"type": "generate", "prompt": "And", "max_tokens": 2000, "ignore_eos": True}
        await ws.send(json.dumps({**long, "id": "dup"}))
        await ws.send(json.dumps({**long, "id": "dup"}))
        error = (await until(ws, lambda m: m["type"] == "error"))[-1]
        assert error["code"] == "duplicate_id" and error["id"] == "dup"
        for i in range(7):  # the fixture's server allows 8 per connection
            await ws.send(json.dumps({**long, "id": f"n{i}"}))
        await ws.send(json.dumps({**long, "id": "one-too-many"}))
        error = (await until(ws, lambda m: m["type"] == "error"))[-1]
        assert error["code"] == "too_many_requests" and error["id"] == "one-too-many"


async def test_oversized_message_closes_with_1009(server_factory):
    srv = server_factory(max_message_bytes=4096)
    async with connect(srv.ws, max_size=None) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "big", "prompt": "x" * 10000}))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG


async def test_binary_mtf1_frames_carry_the_same_stream(server):
    request = {"id": "bin", "prompt": "And God said", "max_tokens": 20, "temperature": 0, "ignore_eos": True,
               "logprobs": 2}
    async with connect(server.ws) as ws:
        json_text = text_of((await run_requests(ws, [dict(request, id="json")]))["json"])
        await ws.send(json.dumps({"type": "generate", **request, "binary": True}))
        frames = []
        async with asyncio.timeout(60):
            while not frames or frames[-1].is_partial:
                raw = await ws.recv()
                assert isinstance(raw, bytes)
                view = memoryview(raw)
                while view:  # one message may hold several frames back to back
                    frame = decode_frame(view[: 16 + struct.unpack_from("<I", view, 8)[0]])
                    frames.append(frame)
                    view = view[16 + struct.unpack_from("<I", view, 8)[0]:]
    assert "".join(f.text for f in frames) == json_text
    assert sum(len(f.token_ids) for f in frames) == 20
    assert all(f.logprobs is not None and len(f.logprobs) == len(f.token_ids) for f in frames if f.token_ids)
    assert [f.metadata["seq"] for f in frames] == list(range(len(frames)))
    final = frames[-1].metadata
    assert final["finish_reason"] == "length" and final["usage"]["completion_tokens"] == 20


async def test_binary_token_prompt(server):
    tokens = [1063, 389, 392]
    b64 = base64.b64encode(struct.pack("<3I", *tokens)).decode()
    async with connect(server.ws) as ws:
        result = await run_requests(ws, [{"id": "t", "prompt_b64": b64, "max_tokens": 3}])
        assert result["t"]["done"]["usage"]["prompt_tokens"] == 3
        # 12 bytes as float32 rows: not whole rows of the model's hidden size (test_embedding_prompts.py has more)
        await ws.send(json.dumps({"type": "generate", "id": "e", "prompt_b64": b64,
                                  "prompt_format": "embedding_f32le"}))
        error, done = messages_of(await ws.recv())
        assert error["code"] == "invalid_request" and done["finish_reason"] == "error"


async def test_credit_pauses_the_stream_until_granted(server):
    async with connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "c", "prompt": "And", "max_tokens": 40,
                                  "temperature": 0, "ignore_eos": True, "credit": 2}))
        chunks = []
        async with asyncio.timeout(30):
            while len(chunks) < 2:
                chunks += [m for m in messages_of(await ws.recv()) if m["type"] == "chunk"]
        with pytest.raises(TimeoutError):  # out of credit: nothing more arrives
            await asyncio.wait_for(ws.recv(), 0.6)
        stats = server.stats()
        assert stats["num_paused"] >= 1  # paused in the engine, not buffered
        await ws.send(json.dumps({"type": "credit", "id": "c", "n": 1000}))
        async with asyncio.timeout(30):
            done = None
            while done is None:
                for m in messages_of(await ws.recv()):
                    if m["type"] == "chunk":
                        chunks.append(m)
                    elif m["type"] == "done":
                        done = m
        assert sum(len(c["token_ids"]) for c in chunks) == 40


def close_code_in(buf: bytes) -> int | None:
    """Walk server frames (unmasked) in buf; the close frame's code if one is complete."""
    i = 0
    while i + 2 <= len(buf):
        opcode, length = buf[i] & 0x0F, buf[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = struct.unpack(">H", buf[i : i + 2])[0], i + 2
        elif length == 127:
            length, i = struct.unpack(">Q", buf[i : i + 8])[0], i + 8
        if i + length > len(buf):
            return None
        if opcode == 0x8:
            return struct.unpack(">H", buf[i : i + 2])[0]
        i += length
    return None


def read_until_close_code(sock: socket.socket, timeout: float) -> int | None:
    """Read until a close frame arrives (its code) or the time is up (None)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):  # a reset after the close frame: what came before counts
            break
        if not data:
            break
        buf += data
        code = close_code_in(buf)
        if code is not None:
            return code
    return close_code_in(buf)


def test_heartbeat_closes_a_peer_that_misses_pongs(server_factory):
    srv = server_factory(heartbeat_interval_s=0.3, heartbeat_max_missed=2)
    sock = raw_handshake(srv.port)
    start = time.monotonic()
    code = read_until_close_code(sock, timeout=10)
    elapsed = time.monotonic() - start
    sock.close()
    assert code == CloseCode.HEARTBEAT_TIMEOUT
    assert 0.5 < elapsed < 5


def test_slow_consumer_is_paused_then_dropped(server_factory):
    srv = server_factory(synthetic_rate=2000, send_high_water_bytes=4096, send_low_water_bytes=1024,
                         slow_consumer_timeout_s=1.0, heartbeat_interval_s=60,
                         socket_send_buffer_bytes=4096)
    sock = raw_handshake(srv.port, rcvbuf=4096)
    send_masked_text(sock, json.dumps({"type": "generate", "id": "s", "prompt": "x", "max_tokens": 4000}))
    paused_seen = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not paused_seen:
        paused_seen = srv.stats()["num_paused"] >= 1
        time.sleep(0.05)
    assert paused_seen  # the reader stalled, so its stream was paused in the engine, not buffered
    assert srv.stats()["generated_tokens"] < 4000
    time.sleep(2.0)  # stay stalled past slow_consumer_timeout_s; reading now would resume the stream
    code = read_until_close_code(sock, timeout=10)
    sock.close()
    assert code == CloseCode.SLOW_CONSUMER


async def test_sigterm_drains_then_closes_websockets_with_1001(server_factory):
    srv = server_factory(shutdown_grace_s=1.0)
    async with connect(srv.ws) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "And", "max_tokens": 3000,
                                  "ignore_eos": True}))
        await ws.recv()
        srv.process.send_signal(__import__("signal").SIGTERM)
        await asyncio.sleep(0.2)
        await ws.send(json.dumps({"type": "generate", "id": "late", "prompt": "And", "max_tokens": 3}))
        seen_refusal, done = False, {}
        start = time.monotonic()
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(15):
                while True:
                    for m in messages_of(await ws.recv()):
                        seen_refusal |= m["type"] == "error" and m["id"] == "late" and m["code"] == "overloaded"
                        if m["type"] == "done":
                            done[m["id"]] = m["finish_reason"]
        assert info.value.rcvd.code == CloseCode.GOING_AWAY
        assert seen_refusal and done["late"] == "error"  # no new work while draining
        assert done["long"] == "cancelled"  # cancelled at the grace deadline, and told so
        assert time.monotonic() - start < 10
    assert srv.process.wait(15) == 0


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_the_one_port_guards_unfinished_heads_and_serves_upgrades_after_http_or_with_a_frame(server_factory):
    """The head router (server/http/head_router.py) on both stacks: a WebSocket whose head is in is no longer
    pending; unfinished /v1/stream heads count against max_pending_connections_per_ip and are closed after
    header_timeout_s; an upgrade after an HTTP request on a keep-alive connection, and one with its first
    frame in the same packet as the head, are served."""
    srv = server_factory(header_timeout_s=1.5, max_pending_connections_per_ip=2)
    socks = [raw_handshake(srv.port) for _ in range(3)]  # three WebSockets: none of them pending
    partial = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n")
        partial.append(s)
    assert _closed_within(partial[2], 1.0)  # the third unfinished head from this address: closed at accept
    assert all(_closed_within(s, 4.0) for s in partial[:2])  # the others after header_timeout_s
    for sock in socks:  # the WebSockets are still served
        send_masked_text(sock, json.dumps({"type": "ping", "ts": 7}))
        assert any(m["type"] == "pong" for m in read_text_frames(sock, lambda m: m["type"] == "pong"))
        sock.close()

    key = base64.b64encode(b"0123456789abcdef").decode()
    upgrade = (f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # keep-alive HTTP first (aiohttp)
        reply = b""
        while b'"ok"}' not in reply:
            reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
        sock.sendall(upgrade)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert b" 101 " in head
        send_masked_text(sock, json.dumps({"type": "ping", "ts": 8}))
        assert read_text_frames(sock, lambda m: m["type"] == "pong")[-1]["ts"] == 8

    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        payload, mask = json.dumps({"type": "ping", "ts": 9}).encode(), b"\x01\x02\x03\x04"
        frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(upgrade + frame)  # head and first frame in one write
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert b" 101 " in head
        assert read_text_frames(sock, lambda m: m["type"] == "pong")[-1]["ts"] == 9
