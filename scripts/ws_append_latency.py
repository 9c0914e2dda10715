"""Streaming input on /v1/stream: time to first token after the end of a ~1,000-token user message that arrived
as `append` pieces of ~50 tokens (prefilled as they arrived), against the same message sent at once, each as a
session turn against a server this script starts (docs/sessions.md quotes its output). Message, pieces and
trials: scripts/streaming_input.py, shared with scripts/realtime_latency.py.

    python scripts/ws_append_latency.py [--model smollm2] [--trials 5]
"""

from __future__ import annotations

import asyncio
import json
import time

from streaming_input import arguments, arrive, compare, served  # scripts/ is sys.path[0] when this runs as a script
from websockets.asyncio.client import connect


async def ttft(url: str, session: str, pieces: list[str], incremental: bool,
               interval_s: float) -> tuple[float, int, int]:
    """Seconds from the message's end (its generate) to the first chunk; prompt and cached tokens."""
    async with connect(url, max_size=None) as ws:
        last = await arrive(pieces, incremental, interval_s, lambda piece: ws.send(
            json.dumps({"type": "append", "session": session, "text": piece})))
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
    args = arguments(__doc__)
    async with served(args.model) as (srv, _, model, words_per_token):
        await compare(lambda t, pieces, incremental: ttft(srv.ws, f"s{t}-{incremental}", pieces, incremental,
                                                          args.interval),
                      args, words_per_token, model, "append pieces")


if __name__ == "__main__":
    asyncio.run(main())
