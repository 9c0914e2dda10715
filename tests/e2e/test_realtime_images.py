"""input_image on /v1/realtime, driven by the real openai SDK's realtime client against the shared tiny-LLaVA
server: an image turn's greedy text equals the same conversation over /v1/chat/completions and over a /v1/stream
session, and the next turn reuses the image's KV instead of encoding it again."""

from __future__ import annotations

import asyncio
import json

from openai import AsyncOpenAI
from websockets.asyncio.client import connect

from tests.e2e.conftest import LLAVA_MODEL as MODEL
from tests.e2e.test_images import content, data_url
from tests.e2e.test_realtime import deltas, events_until
from tests.e2e.wire import until
from tests.models.test_llava import png

IMAGE_TOKENS = 16  # the tiny LLaVA's features per image
N = 8
TURN_1 = ("Compare", png(7), "please.")
TURN_2 = "And now?"


def realtime_parts(*items) -> list[dict]:
    return [{"type": "input_image", "image_url": data_url(i)} if isinstance(i, bytes)
            else {"type": "input_text", "text": i} for i in items]


async def stream_session_texts(server) -> list[str]:
    """The same two turns as a /v1/stream session (each turn's messages templated on their own), greedy."""
    texts = []
    async with connect(server.ws, max_size=None) as ws:
        for i, turn in enumerate([[{"role": "user", "content": content(*TURN_1)}],
                                  [{"role": "user", "content": TURN_2}]]):
            await ws.send(json.dumps({"type": "generate", "id": f"s{i}", "session": "rt-image-oracle",
                                      "messages": turn, "max_tokens": N, "temperature": 0}))
            seen = await until(ws, lambda m, i=i: m["id"] == f"s{i}" and m["type"] in ("done", "error"), 60)
            assert seen[-1]["type"] == "done", seen[-1]
            texts.append("".join(m["text"] for m in seen if m["type"] == "chunk"))
    return texts


async def test_an_image_turn_equals_chat_completions_and_the_next_turn_reuses_its_kv(llava_server):
    client = AsyncOpenAI(base_url=f"{llava_server.http}/v1", api_key="unused", max_retries=0)
    async with client.realtime.connect(model=MODEL) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0, "max_output_tokens": N})
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": realtime_parts(*TURN_1)})
        added = (await events_until(conn, "conversation.item.done"))[-1].item
        assert [p.type for p in added.content] == ["input_text", "input_image", "input_text"]
        await conn.response.create()
        first = await events_until(conn, "response.done")
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": TURN_2}]})
        await conn.response.create()
        second = await events_until(conn, "response.done")
    done_1, done_2 = first[-1].response, second[-1].response
    assert done_1.status in ("completed", "incomplete") and done_1.usage.output_tokens >= 1, done_1
    assert done_2.status in ("completed", "incomplete"), done_2
    texts = [deltas(first, done_1.id), deltas(second, done_2.id)]
    kinds = [e.type for e in first]
    assert kinds.index("response.created") < kinds.index("rate_limits.updated") < kinds.index(
        "response.output_text.delta")
    (limit,) = first[kinds.index("rate_limits.updated")].rate_limits  # the connection's client-event bucket
    assert (limit.name, limit.limit) == ("requests", 400) and 0 < limit.remaining < 400 and limit.reset_seconds > 0

    chat = await client.chat.completions.create(model=MODEL, max_tokens=N, temperature=0,
                                                messages=[{"role": "user", "content": content(*TURN_1)}])
    await client.close()
    assert texts[0] and texts[0] == chat.choices[0].message.content
    assert done_1.usage.input_tokens == chat.usage.prompt_tokens  # the image's 16 feature rows included
    details = done_1.usage.input_token_details
    assert (details.image_tokens, details.text_tokens) == (IMAGE_TOKENS, done_1.usage.input_tokens - IMAGE_TOKENS)
    assert texts == await stream_session_texts(llava_server)

    # Turn 2's prompt holds turn 1 (image included) as KV: only the new text is computed, fewer tokens than the
    # image alone, so the image was neither templated nor encoded again.
    usage = done_2.usage
    assert usage.input_tokens > done_1.usage.input_tokens + IMAGE_TOKENS
    assert usage.input_tokens - usage.input_token_details.cached_tokens < IMAGE_TOKENS
    assert usage.input_token_details.image_tokens == IMAGE_TOKENS  # its history's image rows


async def test_a_bad_image_is_an_error_event_and_the_connection_keeps_working(llava_server):
    """A URL that is not a data: URL is refused when the item is created; a data: URL that is no image fails the
    response that decodes it (on the vision thread), and after deleting that item the connection answers on."""
    client = AsyncOpenAI(base_url=f"{llava_server.http}/v1", api_key="unused", max_retries=0)
    async with client.realtime.connect(model=MODEL) as conn:
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is it?"},
            {"type": "input_image", "image_url": "https://127.0.0.1:9/cat.png"}]})
        error = (await events_until(conn, "error"))[-1].error
        assert (error.code, error.param) == ("invalid_event", "item.content[1].image_url")
        await conn.conversation.item.create(item={"type": "message", "role": "user", "id": "not_an_image",
                                                  "content": realtime_parts("What is it?", b"no PNG at all")})
        await conn.response.create(response={"max_output_tokens": 2})
        events = await events_until(conn, "response.done")
        assert events[-1].response.status == "failed"
        assert [e.error.code for e in events if e.type == "error"] == ["invalid_request"]
        await conn.conversation.item.delete(item_id="not_an_image")
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": realtime_parts("Hi", png(1))})
        await conn.response.create(response={"max_output_tokens": 2})
        done = (await events_until(conn, "response.done"))[-1].response
        assert done.status in ("completed", "incomplete"), done
    await client.close()


async def test_text_streamed_in_after_an_image_turn_is_prefilled_with_the_image_in_the_kv(llava_server):
    """Streaming input after an image turn: the prefill's prompt is the history (image rows included) plus the
    text so far, so the response computes little more than the last piece."""
    client = AsyncOpenAI(base_url=f"{llava_server.http}/v1", api_key="unused", max_retries=0)
    async with client.realtime.connect(model=MODEL) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0, "max_output_tokens": 2})
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": realtime_parts(*TURN_1)})
        await conn.response.create()
        first = (await events_until(conn, "response.done"))[-1].response
        await conn.conversation.item.create(item={"type": "message", "role": "user", "id": "typed",
                                                  "status": "in_progress", "content": []})
        typed = "one two three four five six seven eight nine ten eleven twelve "
        await conn.send({"type": "conversation.item.append", "item_id": "typed", "text": typed})
        await asyncio.sleep(1.5)  # the prefill runs meanwhile
        await conn.send({"type": "conversation.item.append", "item_id": "typed", "text": "end", "done": True})
        await conn.response.create()
        second = (await events_until(conn, "response.done"))[-1].response
    await client.close()
    assert second.status in ("completed", "incomplete"), second
    history = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_token_details.cached_tokens > history + 6  # the history and most of the new text
