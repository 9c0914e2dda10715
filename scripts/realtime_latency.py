"""Full-duplex latencies of /v1/realtime, measured with the openai SDK's realtime client against a server this
script starts (docs/realtime.md quotes its output):

- barge-in: from the client's barge-in (conversation.item.create + response.create while an answer streams) to
  the old answer's last delta, to its response.done, and to the new answer's first delta;
- streaming input: time to first token after the end of a ~1,000-token message that arrived in ~50-token pieces
  (prefilled as they arrived), against the same message sent at once.

    python scripts/realtime_latency.py [--model smollm2] [--trials 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from openai import AsyncOpenAI

from seedance.bench.server_process import launch

VERSE = "And the LORD spake unto Moses in the wilderness of Sinai, in the tabernacle of the congregation, saying, "


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


def message_pieces(words_per_token: float, trial: int, tokens: int, piece: int) -> list[str]:
    """A ~`tokens`-token message (unique per trial from its first word: no prefix-cache help) cut at word ends
    into ~`piece`-token pieces."""
    words = f"Trial {trial}: {VERSE * (tokens // 10)}".split(" ")[: int(tokens * words_per_token)]
    step = max(1, round(piece * words_per_token))
    pieces = [" ".join(words[i:i + step]) + " " for i in range(0, len(words), step)]
    pieces[-1] = pieces[-1].rstrip()
    return pieces


async def ttft(client, model: str, pieces: list[str], incremental: bool, interval_s: float) -> tuple[float, int, int]:
    """Seconds from the end of the message (plus response.create) to the first delta; prompt and cached tokens."""
    async with client.realtime.connect(model=model) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0, "max_output_tokens": 4})
        if incremental:
            await conn.conversation.item.create(item={**user(""), "id": "msg", "status": "in_progress"})
            for piece in pieces[:-1]:
                await conn.send({"type": "conversation.item.append", "item_id": "msg", "text": piece})
                await asyncio.sleep(interval_s)  # the pace at which the message arrives (typing, transcription)
            start = time.perf_counter()
            await conn.send({"type": "conversation.item.append", "item_id": "msg", "text": pieces[-1], "done": True})
        else:
            await asyncio.sleep(interval_s * (len(pieces) - 1))
            start = time.perf_counter()
            await conn.conversation.item.create(item=user("".join(pieces)))
        await conn.response.create()
        seen = await until(conn, "response.output_text.delta")
        first = seen[-1][0]
        done = (await until(conn, "response.done"))[-1][1].response
    usage = done.usage
    return first - start, usage.input_tokens, usage.input_token_details.cached_tokens


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="seedance serve --model (default: the built-in model)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--piece", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between pieces")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    env = {"session_store": f"sqlite://{tmp / 's.db'}", "num_kv_blocks": 1024}
    if args.model:
        env["model"] = args.model
    srv = launch(env, tmp / "server.log", ready_timeout_s=120, poll_s=0.1)
    try:
        client = AsyncOpenAI(base_url=f"{srv.http}/v1", api_key="unused")
        model = (await client.models.list()).data[0].id
        counted = await client.completions.create(model=model, prompt=VERSE * 10, max_tokens=1)
        words_per_token = len((VERSE * 10).split()) / counted.usage.prompt_tokens
        rows = [await barge_in(client, model, t) for t in range(args.trials)]
        print(f"barge-in ({model}, {args.trials} trials), median / max after the client's event (ms; last_old_delta "
              "is 0 when no delta of the old answer came after it):")
        for key in rows[0]:
            values = [r[key] for r in rows]
            print(f"  {key}: {statistics.median(values):.1f} / {max(values):.1f}")
        for incremental in (False, True):
            results = []
            for t in range(args.trials):
                pieces = message_pieces(words_per_token, t * 2 + incremental, args.tokens, args.piece)
                results.append(await ttft(client, model, pieces, incremental, args.interval))
            label = f"in {len(pieces)} pieces, prefilled as they arrive" if incremental else "sent at once"
            print(f"TTFT after the end of a {results[0][1]}-token prompt, {label}: median "
                  f"{statistics.median(r[0] for r in results) * 1e3:.1f} ms, max {max(r[0] for r in results) * 1e3:.1f}"
                  f" ms; cached tokens median {statistics.median(r[2] for r in results):.0f}")
    finally:
        srv.stop()


if __name__ == "__main__":
    asyncio.run(main())
