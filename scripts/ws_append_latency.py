"""Streaming input on /v1/stream: time to first token after the end of a ~1,000-token user message that arrived
as `append` pieces of ~50 tokens (prefilled as they arrived), against the same message sent at once, each as a
session turn against a server this script starts (docs/sessions.md quotes its output). Message and pieces as
scripts/realtime_latency.py makes them.

    python scripts/ws_append_latency.py [--model smollm2] [--trials 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from openai import AsyncOpenAI
from realtime_latency import VERSE, message_pieces  # scripts/ is sys.path[0] when this runs as a script
from websockets.asyncio.client import connect

from seedance.bench.server_process import launch


async def ttft(url: str, session: str, pieces: list[str], incremental: bool,
               interval_s: float) -> tuple[float, int, int]:
    """Seconds from the message's end (its generate) to the first chunk; prompt and cached tokens."""
    async with connect(url, max_size=None) as ws:
        if incremental:
            for piece in pieces[:-1]:
                await ws.send(json.dumps({"type": "append", "session": session, "text": piece}))
                await asyncio.sleep(interval_s)  # the pace at which the message arrives (typing, transcription)
            last = pieces[-1]
        else:
            await asyncio.sleep(interval_s * (len(pieces) - 1))
            last = "".join(pieces)
        start = time.perf_counter()
        await ws.send(json.dumps({"type": "generate", "id": "t", "session": session, "max_tokens": 4,
                                  "temperature": 0, "messages": [{"role": "user", "content": last}]}))
        first = None
        while True:
            for m in (lambda v: v if isinstance(v, list) else [v])(json.loads(await ws.recv())):
                if m["type"] == "chunk" and first is None:
                    first = time.perf_counter()
                elif m["type"] == "error":
                    raise RuntimeError(m)
                elif m["type"] == "done":
                    return first - start, m["usage"]["prompt_tokens"], m["usage"]["cached_tokens"]


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
        for incremental in (False, True):
            results = []
            for t in range(args.trials):
                pieces = message_pieces(words_per_token, t * 2 + incremental, args.tokens, args.piece)
                results.append(await ttft(srv.ws, f"s{t}-{incremental}", pieces, incremental, args.interval))
            label = f"in {len(pieces)} append pieces, prefilled as they arrive" if incremental else "sent at once"
            print(f"TTFT after the end of a {results[0][1]}-token prompt, {label} ({model}): median "
                  f"{statistics.median(r[0] for r in results) * 1e3:.1f} ms, max {max(r[0] for r in results) * 1e3:.1f}"
                  f" ms; cached tokens median {statistics.median(r[2] for r in results):.0f}")
    finally:
        srv.stop()


if __name__ == "__main__":
    asyncio.run(main())
