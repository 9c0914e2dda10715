"""n choices of one request (OpenAI's n, the WebSocket generate's n), each an engine request of its own, started
so that they share the prompt's KV through the prefix cache instead of computing it n times."""

from __future__ import annotations

import asyncio
import dataclasses

from seedance.engine.async_engine import AsyncEngine, GenerateRequest, RequestStream
from seedance.server.transports.openai_params import INT64_MAX


def choice_request(request: GenerateRequest, i: int) -> GenerateRequest:
    """Choice i of the request: its engine id is the request's with ".i" appended; a seeded request's choice i
    samples with seed + i."""
    params = request.params
    if params.seed is not None:
        params = dataclasses.replace(params, seed=params.seed + i if params.seed + i < INT64_MAX else -i)
    return dataclasses.replace(request, request_id=f"{request.request_id}.{i}", params=params)


def watch_first_output(stream: RequestStream) -> asyncio.Event:
    """An event set once the stream has produced (its first token, or its end): its prompt's full KV blocks are
    then in the prefix cache for the other choices. The stream's listener is still called."""
    started = asyncio.Event()
    listener = stream.listener

    def delivered() -> None:
        started.set()
        if listener is not None:
            listener()

    stream.listener = delivered
    if not stream.queue.empty() or stream.finished:
        started.set()
    return started


async def submit_choices(engine: AsyncEngine, request: GenerateRequest, n: int) -> list[RequestStream]:
    """Submit the request, n times for n choices. The first choice runs its prefill alone; the others are submitted
    once it has produced its first token, so they share the prompt's KV instead of computing it again."""
    if n == 1:
        return [await engine.submit(request)]
    streams = []
    try:
        for i in range(n):
            streams.append(await engine.submit(choice_request(request, i)))
            if i == 0:
                await watch_first_output(streams[0]).wait()
                streams[0].listener = None
    except BaseException:
        for s in streams:
            s.cancel()
        raise
    return streams
