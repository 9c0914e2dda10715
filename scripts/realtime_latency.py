"""Full-duplex latencies of /v1/realtime, measured with the openai SDK's realtime client against a server this
script starts (docs/realtime.md quotes its output):

- barge-in: from the client's barge-in (conversation.item.create + response.create while an answer streams) to
  the old answer's last delta, to its response.done, and to the new answer's first delta;
- streaming input: time to first token after the end of a ~1,000-token message that arrived in ~50-token pieces
  (prefilled as they arrived), against the same message sent at once.

    python scripts/realtime_latency.py [--model smollm2] [--trials 5]
"""

from __future__ import annotations

import asyncio
import statistics
import time

from streaming_input import arguments, arrive, compare, served  # scripts/ is sys.path[0] when this runs as a script


def user(text: str, **extra) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}], **extra}


async def until(conn, kind: str) -> list:
    seen = []
    async for event in conn:
        seen.append((time.perf_counter(), event))
        if event.type == kind:
            return seen
    raise RuntimeError(f"closed before {kind}")


async def barge_in(client, model: str, trial: int) -> dict[str, float]:
    async with client.realtime.connect(model=model) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0, "max_output_tokens": 400})
        await conn.conversation.item.create(item=user(f"{trial}. Tell the story of Moses."))
        await conn.response.create()
        seen = await until(conn, "response.output_text.delta")
        old = seen[-1][1].response_id
        for _ in range(5):
            seen += await until(conn, "response.output_text.delta")
        sent = time.perf_counter()
        await conn.conversation.item.create(item=user("Stop. Who was Aaron?"))
        await conn.response.create(response={"max_output_tokens": 8})
        seen = await until(conn, "response.done")
        old_deltas = [t for t, e in seen if e.type == "response.output_text.delta" and e.response_id == old]
        old_done = seen[-1][0]
        seen = await until(conn, "response.output_text.delta")
        first_new = seen[-1][0]
        await until(conn, "response.done")
    return {"old_deltas_after_event": len(old_deltas),
            "last_old_delta_ms": ((old_deltas[-1] if old_deltas else sent) - sent) * 1e3,
            "old_done_ms": (old_done - sent) * 1e3, "new_first_delta_ms": (first_new - sent) * 1e3}


async def ttft(client, model: str, pieces: list[str], incremental: bool, interval_s: float) -> tuple[float, int, int]:
    """Seconds from the end of the message (plus response.create) to the first delta; prompt and cached tokens."""
    async with client.realtime.connect(model=model) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0, "max_output_tokens": 4})
        if incremental:
            await conn.conversation.item.create(item={**user(""), "id": "msg", "status": "in_progress"})
        rest = await arrive(pieces, incremental, interval_s, lambda piece: conn.send(
            {"type": "conversation.item.append", "item_id": "msg", "text": piece}))
        start = time.perf_counter()
        if incremental:
            await conn.send({"type": "conversation.item.append", "item_id": "msg", "text": rest, "done": True})
        else:
            await conn.conversation.item.create(item=user(rest))
        await conn.response.create()
        seen = await until(conn, "response.output_text.delta")
        first = seen[-1][0]
        done = (await until(conn, "response.done"))[-1][1].response
    usage = done.usage
    return first - start, usage.input_tokens, usage.input_token_details.cached_tokens


async def main() -> None:
    args = arguments(__doc__)
    async with served(args.model) as (_, client, model, words_per_token):
        rows = [await barge_in(client, model, t) for t in range(args.trials)]
        print(f"barge-in ({model}, {args.trials} trials), median / max after the client's event (ms; last_old_delta "
              "is 0 when no delta of the old answer came after it):")
        for key in rows[0]:
            values = [r[key] for r in rows]
            print(f"  {key}: {statistics.median(values):.1f} / {max(values):.1f}")
        await compare(lambda t, pieces, incremental: ttft(client, model, pieces, incremental, args.interval),
                      args, words_per_token, model, "pieces")


if __name__ == "__main__":
    asyncio.run(main())
