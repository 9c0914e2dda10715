"""The transport benchmark's workload with no server at all: N closed-loop streams straight on an in-process
AsyncEngine, same prompt, same 32-token requests, same engine bounds as the server under test. Its tokens/s
is the ceiling the WebSocket figure is held to (`seedance bench transports --backend model --engine-alone`)."""

from __future__ import annotations

import asyncio
import time

from seedance.bench.loadgen import PROMPT


async def _run(clients: int, max_tokens: int, duration: float, settings: dict[str, object]) -> dict:
    from seedance.engine.async_engine import AsyncEngine, GenerateRequest
    from seedance.engine.config import EngineConfig
    from seedance.engine.sampling_params import SamplingParams

    fields = set(EngineConfig.__dataclass_fields__)
    engine = await AsyncEngine.create(EngineConfig(**{k: v for k, v in settings.items() if k in fields}))
    counted = {"tokens": 0, "completed": 0}
    warm_until = time.perf_counter() + 1.0  # the first second is not measured (every stream starting at once)
    end = warm_until + duration

    async def client() -> None:
        while time.perf_counter() < end:
            request = GenerateRequest(prompt=PROMPT, params=SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                           ignore_eos=True))
            async for event in engine.generate(request):
                now = time.perf_counter()
                if warm_until <= now <= end:
                    counted["tokens"] += event.token_id >= 0
                    counted["completed"] += event.finished
    try:
        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        await engine.close()
    return {"clients": clients, "duration_s": duration, "tokens_per_s": counted["tokens"] / duration,
            "requests_per_s": counted["completed"] / duration}


def engine_alone(clients: int, max_tokens: int, duration: float, settings: dict[str, object]) -> dict:
    import uvloop

    return uvloop.run(_run(clients, max_tokens, duration, settings))
