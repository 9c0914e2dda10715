"""Sessions end to end: multi-turn KV reuse, resume after an abrupt drop, restart between turns.

Every test runs against both session stores, SQLite and a real Redis."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.e2e.wire import messages_of, until

SAMPLED = {"max_tokens": 48, "temperature": 0.8, "top_p": 0.95, "seed": 11, "ignore_eos": True}
TURNS = ["And God said unto Moses,", " And Moses answered and said,", " Then the LORD spake, saying,"]


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'sessions.db'}"
    return request.getfixturevalue("redis_url")


async def read_turn(ws, request_id: str, want_snapshot: bool = True, timeout: float = 60) -> dict:
    """Collect a request's chunks, its done and (for completed turns) its snapshot ack."""
    out = {"chunks": [], "done": None, "snapshot": None, "errors": []}
    async with asyncio.timeout(timeout):
        while out["done"] is None or (want_snapshot and out["snapshot"] is None
                                      and out["done"]["finish_reason"] in ("stop", "length")):
            for m in messages_of(await ws.recv()):
                if m.get("id") != request_id:
                    continue
                kind = m["type"]
                if kind == "chunk":
                    out["chunks"].append(m)
                elif kind == "done":
                    out["done"] = m
                elif kind == "snapshot":
                    out["snapshot"] = m
                elif kind == "error":
                    out["errors"].append(m)
    return out


def text(turn: dict) -> str:
    return "".join(c["text"] for c in turn["chunks"])


async def chat(ws_url: str, session: str, turns: list[str], params: dict) -> list[dict]:
    results = []
    async with connect(ws_url) as ws:
        for i, message in enumerate(turns):
            await ws.send(json.dumps({"type": "generate", "id": f"t{i}", "session": session, "prompt": message,
                                      **params}))
            results.append(await read_turn(ws, f"t{i}"))
    return results


async def test_three_turn_chat_reuses_at_least_80_percent_of_prior_kv(server_factory, store_url):
    srv = server_factory(session_store=store_url)
    turns = await chat(srv.ws, "reuse-chat", TURNS, SAMPLED)
    prior = 0
    for i, turn in enumerate(turns):
        done, usage = turn["done"], turn["done"]["usage"]
        assert done["finish_reason"] == "length" and usage["completion_tokens"] == SAMPLED["max_tokens"]
        assert turn["snapshot"] == {"type": "snapshot", "id": f"t{i}", "session": "reuse-chat", "turn": i + 1,
                                    "kv_cache_hash": turn["snapshot"]["kv_cache_hash"]}
        if i:
            # The prompt is the whole conversation, and nearly all of it came from the pinned KV.
            assert usage["prompt_tokens"] > prior
            assert usage["cached_tokens"] / prior >= 0.8
            assert done["kv_reuse"] == pytest.approx(usage["cached_tokens"] / usage["prompt_tokens"], abs=1e-3)
        prior = usage["prompt_tokens"] + usage["completion_tokens"]


async def test_abrupt_drop_mid_stream_then_resume_gives_the_uninterrupted_text(server_factory, store_url, ws_stack):
    srv = server_factory(session_store=store_url, detached_buffer_tokens=8, ws_stack=ws_stack)
    name = f"dropped-{ws_stack}"  # names per stack: both stacks' runs share one Redis
    reference = (await chat(srv.ws, f"uninterrupted-{ws_stack}", TURNS[:1], SAMPLED))[0]

    ws = await connect(srv.ws)
    await ws.send(json.dumps({"type": "generate", "id": "t0", "session": name, "prompt": TURNS[0], **SAMPLED}))
    seen = []
    while len(seen) < 5:
        seen += [m for m in messages_of(await ws.recv()) if m["type"] == "chunk"]
    ws.transport.abort()  # an abrupt TCP drop: no close frame
    # While the client is away the turn runs into its bounded buffer, then is paused with its KV kept.
    for _ in range(300):  # bounded: 15 s
        stats = httpx.get(f"{srv.http}/stats").json()
        if stats["num_paused"] == 1:
            break
        await asyncio.sleep(0.05)
    assert stats["num_paused"] == 1 and stats["num_running"] == 0

    async with connect(srv.ws) as ws2:
        last_seq = seen[-1]["seq"]
        await ws2.send(json.dumps({"type": "resume", "session": name, "id": "t0", "last_seq": last_seq}))
        rest = await read_turn(ws2, "t0")
    chunks = seen + rest["chunks"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))  # nothing lost, nothing twice
    assert "".join(c["text"] for c in chunks) == text(reference)
    assert rest["done"]["usage"]["completion_tokens"] == SAMPLED["max_tokens"]
    assert rest["snapshot"]["turn"] == 1


async def test_a_client_that_does_not_come_back_is_cancelled_after_the_grace(server_factory):
    srv = server_factory(resume_grace_s=0.5, detached_buffer_tokens=4)
    ws = await connect(srv.ws)
    await ws.send(json.dumps({"type": "generate", "id": "t0", "session": "gone", "prompt": "And",
                              "max_tokens": 2000, "ignore_eos": True}))
    await ws.recv()
    ws.transport.abort()
    for _ in range(300):  # bounded: 15 s
        stats = httpx.get(f"{srv.http}/stats").json()
        if stats["open_requests"] == 0 and stats["num_running"] == 0 and stats["num_paused"] == 0:
            break
        await asyncio.sleep(0.05)
    assert stats["open_requests"] == 0 and stats["num_running"] == 0 and stats["num_paused"] == 0
    async with connect(srv.ws) as ws2:
        await ws2.send(json.dumps({"type": "resume", "session": "gone", "id": "t0"}))
        (error,) = messages_of(await ws2.recv())
        assert error["code"] == "unknown_id"


async def test_restart_between_turns_continues_the_conversation(server_factory, store_url):
    reference_srv = server_factory(session_store=store_url)
    reference = await chat(reference_srv.ws, "no-restart", TURNS[:2], SAMPLED)
    reference_srv.stop()

    first = server_factory(session_store=store_url)
    turn1 = (await chat(first.ws, "restarted", TURNS[:1], SAMPLED))[0]
    assert turn1["snapshot"]["turn"] == 1  # acknowledged: durable from here on
    first.process.send_signal(signal.SIGKILL)  # no graceful anything
    first.process.wait(10)

    second = server_factory(session_store=store_url)
    async with connect(second.ws) as ws:
        # The last completed turn replays from the snapshot...
        await ws.send(json.dumps({"type": "resume", "session": "restarted", "id": "t0", "last_seq": 2}))
        replayed = await read_turn(ws, "t0", want_snapshot=False)
        assert [c["seq"] for c in replayed["chunks"]] == [c["seq"] for c in turn1["chunks"][3:]]
        assert text(replayed) == text(turn1)[len("".join(c["text"] for c in turn1["chunks"][:3])):]
        # ...and the conversation goes on as if nothing happened.
        await ws.send(json.dumps({"type": "generate", "id": "t1", "session": "restarted", "prompt": TURNS[1],
                                  **SAMPLED}))
        turn2 = await read_turn(ws, "t1")
    assert text(turn1) == text(reference[0])
    assert text(turn2) == text(reference[1])
    assert turn2["done"]["usage"]["prompt_tokens"] == reference[1]["done"]["usage"]["prompt_tokens"]
    assert turn2["snapshot"]["kv_cache_hash"] == reference[1]["snapshot"]["kv_cache_hash"]


async def test_one_turn_at_a_time_per_session(server):
    async with connect(server.ws) as ws:
        long = {"type": "generate", "session": "busy", "prompt": "And", "max_tokens": 500, "ignore_eos": True}
        await ws.send(json.dumps({**long, "id": "a"}))
        await ws.send(json.dumps({**long, "id": "b"}))
        error = (await until(ws, lambda m: m["type"] == "error"))[-1]
        assert error["id"] == "b" and "turn in progress" in error["message"]
        await ws.send(json.dumps({"type": "cancel", "id": "a"}))
        cancelled = await read_turn(ws, "a", want_snapshot=False)
        assert cancelled["done"]["finish_reason"] == "cancelled"


def sse_events(lines) -> list[tuple[str, str]]:
    """(id, data) pairs from SSE lines."""
    events, event_id = [], None
    for line in lines:
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            events.append((event_id, line[6:]))
    return events


def completion_text(events) -> str:
    return "".join(json.loads(d)["choices"][0]["text"] for _, d in events
                   if d != "[DONE]" and json.loads(d).get("choices"))


def test_sse_session_turn_resumes_with_last_event_id(server):
    body = {"model": "seedance-tiny", "prompt": TURNS[0], "stream": True, **SAMPLED}
    with httpx.Client(base_url=server.http, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json={**body, "session": "sse-ref"}) as whole:
            reference = sse_events(whole.iter_lines())
        assert reference[-1][1] == "[DONE]" and reference[0][0].startswith("sse-ref/cmpl-")
        seen, lines_read = [], []
        with http.stream("POST", "/v1/completions", json={**body, "session": "sse-cut"}) as cut:
            lines = cut.iter_lines()
            while len(seen) < 4:
                lines_read.append(next(lines))
                seen = sse_events(lines_read)
        # The client went away mid-stream; it comes back with the last event id it saw.
        with http.stream("POST", "/v1/completions", json={}, headers={"Last-Event-ID": seen[-1][0]}) as rest:
            assert rest.status_code == 200
            resumed = sse_events(rest.iter_lines())
    seqs = [int(i.rsplit(":", 1)[1]) for i, d in seen + resumed if i is not None and d != "[DONE]"]
    assert seqs == list(range(len(seqs)))  # nothing lost, nothing twice
    assert completion_text(seen + resumed) == completion_text(reference)
    assert resumed[-1][1] == "[DONE]"
    missing = httpx.post(f"{server.http}/v1/completions", json={}, headers={"Last-Event-ID": "nobody/cmpl-x:3"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_id"


async def test_missed_heartbeats_start_the_same_grace_window(server_factory):
    from tests.e2e.test_websocket import raw_handshake, read_until_close_code, send_masked_text

    srv = server_factory(heartbeat_interval_s=0.3, heartbeat_max_missed=2, detached_buffer_tokens=6)
    sock = raw_handshake(srv.port)
    # credit 5: it stops after five chunks, so the turn is still in progress when the server gives up on us
    send_masked_text(sock, json.dumps({"type": "generate", "id": "t0", "session": "silent", "prompt": TURNS[0],
                                       "credit": 5, **SAMPLED}))
    assert read_until_close_code(sock, timeout=10) == 4000  # it never answered a ping
    sock.close()
    stats = httpx.get(f"{srv.http}/stats").json()
    assert stats["open_requests"] == 1  # detached, not cancelled
    async with connect(srv.ws) as ws:
        await ws.send(json.dumps({"type": "resume", "session": "silent", "id": "t0"}))
        turn = await read_turn(ws, "t0")
    assert turn["done"]["usage"]["completion_tokens"] == SAMPLED["max_tokens"]
    assert [c["seq"] for c in turn["chunks"]] == list(range(len(turn["chunks"])))


STREAMED = ("And it came to pass, when the king heard the words of the book of the law, that he rent his clothes. "
            "And the king commanded the priest, and the scribe, and the servant of the king, saying, Go ye, "
            "enquire of the LORD for me, and for the people, concerning the words of this book that is found.")


async def test_append_prefills_a_streamed_message_and_answers_as_if_it_came_whole(server):
    """The message in pieces cut mid-word, after a first turn: the same greedy answer as the whole message,
    with the pieces' KV reused (cached_tokens) where the whole message's turn computes it."""
    greedy = {"max_tokens": 24, "temperature": 0, "ignore_eos": True}
    first = {"messages": [{"role": "user", "content": "Who wrote the law?"}], **greedy}
    cuts = list(range(0, len(STREAMED), 37))
    pieces = [STREAMED[a:b] for a, b in zip(cuts, [*cuts[1:], len(STREAMED)], strict=True)]
    turns = {}
    async with connect(server.ws) as ws:
        for name in ("whole", "pieced"):
            await ws.send(json.dumps({"type": "generate", "id": "t0", "session": f"append-{name}", **first}))
            assert (await read_turn(ws, "t0"))["done"]["finish_reason"] == "length"
        await ws.send(json.dumps({"type": "generate", "id": "t1", "session": "append-whole",
                                  "messages": [{"role": "user", "content": STREAMED}], **greedy}))
        turns["whole"] = await read_turn(ws, "t1")
        for piece in pieces[:-1]:
            await ws.send(json.dumps({"type": "append", "session": "append-pieced", "text": piece}))
        await ws.send(json.dumps({"type": "generate", "id": "t1", "session": "append-pieced",
                                  "messages": [{"role": "user", "content": pieces[-1]}], **greedy}))
        turns["pieced"] = await read_turn(ws, "t1")
    whole, pieced = (turns[k]["done"]["usage"] for k in ("whole", "pieced"))
    assert not turns["pieced"]["errors"] and text(turns["pieced"]) == text(turns["whole"]) != ""
    assert pieced["prompt_tokens"] == whole["prompt_tokens"]
    # the whole message's turn reuses only the first turn's KV; the pieced one all but the last piece's
    assert pieced["cached_tokens"] >= whole["cached_tokens"] + 40
    assert pieced["prompt_tokens"] - pieced["cached_tokens"] < 30


async def test_a_restored_session_keeps_its_embedding_rows(server_factory, store_url):
    """A turn whose prompt had embedding rows, snapshotted, the server killed and another started on the store:
    the next turn's greedy tokens equal those of the same conversation on a server never restarted."""
    import torch

    from tests.e2e.test_embedding_prompts import IDS, f32le

    torch.manual_seed(3)
    rows = torch.randn(5, 256) * 0.05  # rows no token has: lose them and the conversation changes
    greedy = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}
    turn1 = {"type": "generate", "id": "t0", "prompt_parts": [
        {"type": "tokens", "ids": IDS[:3]}, {"type": "embedding", "b64": f32le(rows)},
        {"type": "tokens", "ids": IDS[3:]}], **greedy}
    turn2 = {"type": "generate", "id": "t1", "prompt": " And Moses answered", **greedy}

    def ids(turn: dict) -> list[int]:
        assert not turn["errors"], turn["errors"]
        return [t for c in turn["chunks"] for t in c["token_ids"]]

    first = server_factory(session_store=store_url)
    async with connect(first.ws) as ws:
        reference = []
        for message in (turn1, turn2):  # the never-restarted run
            await ws.send(json.dumps({**message, "session": "rows-ref"}))
            reference.append(await read_turn(ws, message["id"]))
        await ws.send(json.dumps({**turn1, "session": "rows"}))
        restarted1 = await read_turn(ws, "t0")
    assert ids(restarted1) == ids(reference[0]) and restarted1["snapshot"]["turn"] == 1
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)

    second = server_factory(session_store=store_url)
    async with connect(second.ws) as ws:
        await ws.send(json.dumps({**turn2, "session": "rows"}))
        restarted2 = await read_turn(ws, "t1")
    assert ids(restarted2) == ids(reference[1])
    assert restarted2["snapshot"]["kv_cache_hash"] == reference[1]["snapshot"]["kv_cache_hash"]
    usage = restarted2["done"]["usage"]
    assert usage["prompt_tokens"] == reference[1]["done"]["usage"]["prompt_tokens"] and usage["embedding_tokens"] == 5
