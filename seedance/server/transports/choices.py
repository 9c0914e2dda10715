"""n choices of one request (OpenAI's n, the WebSocket generate's n), each an engine request of its own, started
so that they share the prompt's KV through the prefix cache instead of computing it n times."""

from __future__ import annotations

import asyncio
import dataclasses

from seedance.engine.async_engine import AsyncEngine, GenerateRequest, RequestStream
from seedance.server.transports.openai_params import INT64_MAX


async def submit_choices(engine: AsyncEngine, request: GenerateRequest, n: int) -> list[RequestStream]:
    """Submit the request, n times for n choices. The first choice runs its prefill alone; the others are submitted
    once it has produced its first token, when the prompt's full KV blocks are in the prefix cache, so they share
    them instead of computing the prompt again. A seeded request's choice i samples with seed + i. Choice i's
    engine id is the request's with ".i" appended."""
    if n == 1:
        return [await engine.submit(request)]
    base, streams = request.request_id, []
    try:
        for i in range(n):
            params = request.params
            if params.seed is not None:
                params = dataclasses.replace(params, seed=params.seed + i if params.seed + i < INT64_MAX else -i)
            choice = dataclasses.replace(request, request_id=f"{base}.{i}", params=params)
            streams.append(await engine.submit(choice))
            if i == 0:
                started = asyncio.Event()
                streams[0].listener = started.set
                await started.wait()
                streams[0].listener = None
    except BaseException:
        for s in streams:
            s.cancel()
        raise
    return streams
