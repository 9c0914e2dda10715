"""/v1/realtime driven by the real `openai` SDK's realtime client (AsyncOpenAI(...).realtime.connect), against the
shared server: a two-turn conversation equal to the same conversation as a /v1/stream session, a cancel, a
barge-in, and error events for bad events on a connection that keeps working."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect

from seedance.protocol import CloseCode
from tests.e2e.wire import messages_of

MODEL = "seedance-tiny"
TURNS = ["And God said unto Moses,", "Blessed are the"]
GREEDY = {"type": "realtime", "temperature": 0, "max_output_tokens": 20}


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def realtime(server):
    return AsyncOpenAI(base_url=f"{server.http}/v1", api_key="unused").realtime.connect(model=MODEL)


async def events_until(conn, kind: str, timeout: float = 60) -> list:
    """Server events (the SDK's typed models) up to and including the first of type `kind`."""
    seen = []
    async with asyncio.timeout(timeout):
        async for event in conn:
            seen.append(event)
            if event.type == kind:
                return seen
    raise AssertionError(f"connection closed before {kind}")


def deltas(events, response_id: str) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta" and e.response_id == response_id)


async def stream_session(server, name: str, turns: list[str], max_tokens: int) -> list[str]:
    """The same conversation as a /v1/stream session, greedy: each turn's text."""
    texts = []
    async with connect(server.ws) as ws:
        for i, message in enumerate(turns):
            await ws.send(json.dumps({"type": "generate", "id": f"t{i}", "session": name, "max_tokens": max_tokens,
                                      "temperature": 0, "messages": [{"role": "user", "content": message}]}))
            parts = []
            async with asyncio.timeout(60):
                while True:
                    batch = messages_of(await ws.recv())
                    parts += [m["text"] for m in batch if m["type"] == "chunk" and m["id"] == f"t{i}"]
                    if any(m["type"] == "done" and m["id"] == f"t{i}" for m in batch):
                        break
            texts.append("".join(parts))
    return texts


async def test_two_turn_conversation_equals_a_v1_stream_session(server):
    reference = await stream_session(server, "rt-reference", TURNS, GREEDY["max_output_tokens"])
    async with realtime(server) as conn:
        created = await events_until(conn, "session.created")
        assert created[-1].session.model == MODEL
        await conn.session.update(session=GREEDY)
        updated = (await events_until(conn, "session.updated"))[-1]
        assert updated.session.max_output_tokens == GREEDY["max_output_tokens"]
        texts, usages = [], []
        for message in TURNS:
            await conn.conversation.item.create(item=user(message))
            await conn.response.create()
            events = await events_until(conn, "response.done")
            kinds = [e.type for e in events]
            assert kinds[:2] == ["conversation.item.added", "conversation.item.done"]  # the user's item
            first_delta = kinds.index("response.output_text.delta")
            assert kinds[2:first_delta] == ["response.created", "response.output_item.added",
                                            "conversation.item.added", "response.content_part.added",
                                            "rate_limits.updated"]
            assert set(kinds[first_delta:-5]) == {"response.output_text.delta"}
            assert kinds[-5:] == ["response.output_text.done", "response.content_part.done",
                                  "response.output_item.done", "conversation.item.done", "response.done"]
            done = events[-1].response
            text = deltas(events, done.id)
            assert done.status in ("completed", "incomplete")
            assert done.output[0].content[0].text == text
            assert next(e for e in events if e.type == "response.output_text.done").text == text
            texts.append(text)
            usages.append(done.usage)
    assert texts == reference
    assert all(texts)
    # The conversation is a session: turn 2 reuses the KV of everything turn 1 computed.
    assert usages[0].input_token_details.cached_tokens == 0
    history = usages[0].input_tokens + usages[0].output_tokens
    assert usages[1].input_token_details.cached_tokens >= history - 1
    assert usages[1].input_tokens > history


async def long_answer_started(conn) -> list:
    """Ask for a long greedy answer (400 tokens) and wait for its first delta: the events so far."""
    await conn.session.update(session={"type": "realtime", "temperature": 0, "max_output_tokens": 400})
    await conn.conversation.item.create(item=user(TURNS[0]))
    await conn.response.create()
    return await events_until(conn, "response.output_text.delta")


async def test_cancel_keeps_what_was_sent(server):
    async with realtime(server) as conn:
        events = await long_answer_started(conn)
        response_id = events[-1].response_id
        await conn.response.cancel(response_id=response_id)
        events += await events_until(conn, "response.done")
        done = events[-1].response
        assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
        assert done.output[0].content[0].text == deltas(events, response_id)
        assert done.output[0].status == "incomplete"
        assert done.usage.output_tokens < 400
        # cancelling again: nothing is active, an error event, and the connection still works
        await conn.send({"type": "response.cancel", "event_id": "again", "response_id": response_id})
        error = (await events_until(conn, "error"))[-1].error
        assert error.event_id == "again" and error.code == "response_cancel_not_active"


async def test_barge_in_cancels_and_answers_the_new_message_reusing_the_kept_kv(server):
    async with realtime(server) as conn:
        events = await long_answer_started(conn)
        old = events[-1].response_id
        events += [e for _ in range(3) for e in await events_until(conn, "response.output_text.delta")]
        sent_at = time.monotonic()
        await conn.conversation.item.create(item=user(TURNS[1]))
        await conn.response.create(response={"max_output_tokens": 8})
        rest = await events_until(conn, "response.done")  # the old one's end
        old_done_at = time.monotonic()
        rest += await events_until(conn, "response.output_text.delta")
        first_new_at = time.monotonic()
        rest += await events_until(conn, "response.done")
        events += rest
        old_done = next(e for e in events if e.type == "response.done" and e.response.id == old).response
        new_done = events[-1].response
        assert old_done.status == "cancelled" and new_done.status in ("completed", "incomplete")
        assert new_done.id != old
        # the old answer stops: no delta of it after its done, and its item holds exactly what was sent
        kinds = [(e.type, getattr(e, "response_id", None)) for e in events]
        assert ("response.output_text.delta", old) not in kinds[kinds.index(("response.done", None)):]
        kept = deltas(events, old)
        assert old_done.output[0].content[0].text == kept and kept
        assert old_done.usage.output_tokens < 400
        assert deltas(events, new_done.id)
        # the new response continues the kept history: its prompt holds it, and its KV is reused
        kept_history = old_done.usage.input_tokens + old_done.usage.output_tokens
        assert new_done.usage.input_tokens > kept_history
        assert new_done.usage.input_token_details.cached_tokens >= old_done.usage.input_tokens
        assert old_done_at - sent_at < 5 and first_new_at - sent_at < 10


@pytest.mark.parametrize("event, code", [
    ({"type": "conversation.item.delete"}, "invalid_event"),
    ({"type": "conversation.item.delete", "item_id": "nope"}, "item_not_found"),
    ({"type": "no.such.event"}, "unknown_event_type"),
    ({"type": "input_audio_buffer.append", "audio": ""}, "unsupported"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}}, "unsupported_content_type"),
    ({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"]}}, "unsupported"),
    ({"type": "session.update", "session": {"type": "realtime", "tools": [{"type": "function", "name": "f"}]}},
     "unsupported"),
])
async def test_a_bad_event_gets_an_error_event_and_the_connection_keeps_working(server, event, code):
    async with realtime(server) as conn:
        await conn.send({**event, "event_id": "evt_bad"})
        error = (await events_until(conn, "error"))[-1].error
        assert (error.code, error.event_id, error.type) == (code, "evt_bad", "invalid_request_error")
        await conn.conversation.item.create(item=user(TURNS[0]))
        await conn.response.create(response={"max_output_tokens": 4})
        done = (await events_until(conn, "response.done"))[-1].response
        assert done.status in ("completed", "incomplete") and done.usage.output_tokens >= 1


async def test_not_json_and_a_wrong_model(server):
    async with connect(server.ws.replace("/v1/stream", f"/v1/realtime?model={MODEL}")) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send("{not json")
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["code"] == "invalid_json"
        await ws.send(b"\x00binary")
        assert json.loads(await ws.recv())["error"]["code"] == "invalid_event"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /v1/realtime?model=other HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    status = await reader.readline()
    writer.close()
    assert status.split()[1] == b"404"  # refused before the upgrade, with the JSON error body


LONG_MESSAGE = " ".join(["And the LORD spake unto Moses in the wilderness of Sinai, saying,"] * 12)


async def answer_whole(server, message: str) -> object:
    async with realtime(server) as conn:
        await conn.session.update(session=GREEDY)
        await conn.conversation.item.create(item=user(message))
        await conn.response.create()
        return (await events_until(conn, "response.done"))[-1].response


async def test_a_message_arriving_in_pieces_is_prefilled_as_it_arrives(server):
    words = LONG_MESSAGE.split(" ")
    pieces = [" ".join(words[i:i + 8]) + " " for i in range(0, len(words), 8)]
    pieces[-1] = pieces[-1].rstrip()
    async with realtime(server) as conn:
        await conn.session.update(session=GREEDY)
        await conn.conversation.item.create(item={**user(""), "id": "typing", "status": "in_progress"})
        added = (await events_until(conn, "conversation.item.added"))[-1]
        assert added.item.status == "in_progress"
        for piece in pieces[:-1]:
            await conn.send({"type": "conversation.item.append", "item_id": "typing", "text": piece})
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the last prefill catches up
        await conn.send({"type": "conversation.item.append", "item_id": "typing", "text": pieces[-1], "done": True})
        done_item = (await events_until(conn, "conversation.item.done"))[-1].item
        assert done_item.status == "completed" and done_item.content[0].text == LONG_MESSAGE
        await conn.response.create()
        streamed = (await events_until(conn, "response.done"))[-1].response
    # First on this server with this message: its cached tokens are what its own prefills left.
    whole = await answer_whole(server, LONG_MESSAGE)
    # the same answer as the message sent at once, from a prompt almost all prefilled before it ended
    assert streamed.output[0].content[0].text == whole.output[0].content[0].text
    assert streamed.usage.input_tokens == whole.usage.input_tokens
    last_piece_tokens = 20
    assert streamed.usage.input_token_details.cached_tokens >= streamed.usage.input_tokens - last_piece_tokens


async def test_a_named_session_continues_on_a_new_connection(server):
    reference = await stream_session(server, "rt-named-reference", TURNS, GREEDY["max_output_tokens"])
    client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key="unused")
    dones = []
    for message in TURNS:  # one connection per turn, the same ?session=
        async with client.realtime.connect(model=MODEL, extra_query={"session": "rt-named"}) as conn:
            await conn.session.update(session=GREEDY)
            await conn.conversation.item.create(item=user(message))
            await conn.response.create()
            dones.append((await events_until(conn, "response.done"))[-1].response)
    assert [d.output[0].content[0].text for d in dones] == reference
    history = dones[0].usage.input_tokens + dones[0].usage.output_tokens
    assert dones[1].usage.input_token_details.cached_tokens >= history - 1  # its KV outlived the connection


async def test_closing_mid_answer_leaves_a_named_session_usable(server):
    client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key="unused")
    async with client.realtime.connect(model=MODEL, extra_query={"session": "rt-dropped"}) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0, "max_output_tokens": 1500})
        await conn.conversation.item.create(item=user(TURNS[0]))
        await conn.response.create()
        seen = await events_until(conn, "response.output_text.delta")
    kept = seen[-1].delta
    async with client.realtime.connect(model=MODEL, extra_query={"session": "rt-dropped"}) as conn:
        await conn.conversation.item.create(item=user(TURNS[1]))
        await conn.response.create(response={"max_output_tokens": 4})
        done = (await events_until(conn, "response.done"))[-1].response
    assert done.status in ("completed", "incomplete"), done.status_details  # not refused as busy
    assert kept and done.usage.input_token_details.cached_tokens > 0


async def test_realtime_responses_are_counted_in_metrics(server):
    import re

    import httpx

    await answer_whole(server, "Amen")
    metrics = httpx.get(f"{server.http}/metrics", timeout=10).text
    counted = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("seedance_requests_total{") and 'transport="realtime"' in line]
    assert counted and sum(counted) >= 1, metrics[:2000]
    assert re.search(r'seedance_ttft_seconds_count\{transport="realtime"\} [1-9]', metrics)


@pytest.fixture(scope="module")
def slow_reader_server(tmp_path_factory):
    """Small water marks and socket buffers, the synthetic engine (fast, steady output), a short slow-consumer
    timeout and a heartbeat that closes later than it (3 s above high water: 4001; two unanswered pings 2.5 s
    apart: 4000 at 7.5 s): for the clients that stop reading."""
    from tests.e2e.conftest import start_server

    srv = start_server(tmp_path_factory, synthetic_rate=2000, send_high_water_bytes=4096, send_low_water_bytes=1024,
                       socket_send_buffer_bytes=4096, slow_consumer_timeout_s=3, heartbeat_interval_s=2.5,
                       heartbeat_max_missed=2)
    yield srv
    srv.stop()


def stalled_response(srv, max_output_tokens: int):
    """A raw client with a 4 KiB receive buffer asks for a long answer and reads nothing: its socket, once the
    server has paused the response (the engine's num_paused), and the stats then."""
    from tests.e2e.wire import raw_handshake, send_masked_text

    sock = raw_handshake(srv.port, rcvbuf=4096, path=f"/v1/realtime?model={MODEL}")
    send_masked_text(sock, json.dumps({"type": "conversation.item.create", "item": user(TURNS[0])}))
    send_masked_text(sock, json.dumps({"type": "response.create",
                                       "response": {"max_output_tokens": max_output_tokens}}))
    deadline = time.monotonic() + 2.5  # (before the slow-consumer timeout closes it)
    while (stats := srv.stats())["num_paused"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["num_paused"] == 1, stats  # the reader stalled: its response waits in the engine
    return sock, stats


def test_a_client_that_stops_reading_has_its_response_paused_then_resumed(slow_reader_server):
    """Back-pressure: past the high water mark of unread bytes (what the client's pongs to the probe pings have not
    acknowledged) the response is paused in the engine, not buffered on the server; once the client reads again
    (and answers the probes) it resumes, and the client gets all of it, in order."""
    from tests.e2e.wire import read_text_frames

    srv = slow_reader_server
    sock, stats = stalled_response(srv, 4000)
    time.sleep(1)
    again = srv.stats()
    # Paused: the client acknowledged nothing, so the response stays paused however its kernel coalesces; over the
    # second it generates a small fraction of the 2000 tokens the engine's rate would give.
    assert again["generated_tokens"] - stats["generated_tokens"] < 300, (stats, again)
    events = read_text_frames(sock, lambda e: e["type"] == "response.done", timeout=30)
    sock.close()
    done = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert done["status"] in ("completed", "incomplete"), done
    assert text and text == next(e["text"] for e in events if e["type"] == "response.output_text.done")
    assert done["usage"]["output_tokens"] > 300  # it went on past the pause (a few hundred tokens fill 12 KB)
    assert srv.stats()["num_paused"] == 0


def test_a_client_that_never_reads_is_paused_then_closed_4001_after_an_error_event(slow_reader_server):
    """/v1/stream's policy on /v1/realtime (issue #12 defect 10): a client that never reads has its response paused
    in the engine, and after slow_consumer_timeout_s above high water it gets an `error` event (slow_consumer) and
    a 4001 close, in bounded time; its response is cancelled in the engine."""
    from tests.e2e.wire import frames_until_close

    srv = slow_reader_server
    started = time.monotonic()
    sock, paused = stalled_response(srv, 4000)
    while srv.stats()["num_paused"] and time.monotonic() - started < 15:  # reads nothing, answers no ping
        time.sleep(0.1)
    closed_after = time.monotonic() - started
    after = srv.stats()
    assert after["num_paused"] == 0 and after["num_running"] == 0, after  # closed: the response was cancelled
    assert 2.5 < closed_after < 7.5, closed_after  # the slow-consumer timeout (3 s), before the heartbeat's 7.5 s
    assert after["generated_tokens"] - paused["generated_tokens"] < 300, (paused, after)  # paused until the close
    time.sleep(1.5)  # it may take the close frame late: up to 10 s after the close (ws_liveness.CLOSE_TIMEOUT_S)
    events, code = frames_until_close(sock)  # what it never read is there, ending with the close frame
    sock.close()
    assert code == CloseCode.SLOW_CONSUMER, (code, [e["type"] for e in events[-3:]])
    assert events[0]["type"] == "session.created"
    assert events[-1]["type"] == "error"
    assert (events[-1]["error"]["type"], events[-1]["error"]["code"]) == ("server_error", "slow_consumer")
    assert not any(e["type"] == "response.done" for e in events)


def test_a_client_that_answers_no_ping_is_closed_by_the_heartbeat(slow_reader_server):
    """Liveness: a client that reads but answers no ping gets an `error` event (heartbeat_timeout) and a 4000 close
    after heartbeat_max_missed pings went unanswered."""
    from tests.e2e.wire import frames_until_close, raw_handshake

    srv = slow_reader_server
    sock = raw_handshake(srv.port, path=f"/v1/realtime?model={MODEL}")
    started = time.monotonic()
    events, code = frames_until_close(sock, timeout=20)  # reads everything, answers nothing
    elapsed = time.monotonic() - started
    sock.close()
    assert code == CloseCode.HEARTBEAT_TIMEOUT
    assert 6 < elapsed < 12, elapsed  # the third heartbeat tick, 2.5 s apart
    assert [e["type"] for e in events] == ["session.created", "error"]
    assert events[-1]["error"]["code"] == "heartbeat_timeout"
