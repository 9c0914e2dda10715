"""Per-token cost of constrained decoding: output tok/s of C concurrent streams with and without a JSON schema,
through the engine (AsyncEngine) with the real model, and the time the sampler spent computing and applying
grammar masks. The schema cannot end before max_tokens (minItems), so both runs generate the same tokens. Each
level runs free and constrained alternately --repeat times (a shared machine is noisy) and prints the median.

    python scripts/guided_overhead.py [--model smollm2] [--concurrency 1,32] [--max-tokens 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.config import EngineConfig
from seedance.engine.sampling_params import GuidedDecoding, SamplingParams

SCHEMA = {"type": "array", "minItems": 64, "items": {
    "type": "object", "required": ["name", "age"], "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}}


async def run(engine: AsyncEngine, concurrency: int, max_tokens: int, guided: GuidedDecoding | None) -> dict:
    async def one(i: int) -> int:
        params = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i, ignore_eos=True, guided=guided)
        n = 0
        async for event in engine.generate(GenerateRequest(prompt="In the beginning God created", params=params)):
            n += event.token_id >= 0
        return n

    sampler = engine.engine.runner.sampler
    spent = [0.0]
    apply = sampler._apply_guides

    def timed(*args):
        start = time.perf_counter()
        try:
            return apply(*args)
        finally:
            spent[0] += time.perf_counter() - start

    sampler._apply_guides = timed
    steps = engine.engine.steps
    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(concurrency))))
    wall = time.perf_counter() - start
    sampler._apply_guides = apply
    steps = engine.engine.steps - steps
    return {"concurrency": concurrency, "guided": guided is not None, "tokens": tokens,
            "tok_s": round(tokens / wall, 1), "steps": steps,
            "mask_ms_per_step": round(1000 * spent[0] / max(steps, 1), 3)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    engine = await AsyncEngine.create(EngineConfig(model=args.model))
    guided = GuidedDecoding("json_schema", json.dumps(SCHEMA))
    await engine.compile_guide(SamplingParams(guided=guided))  # compiled once, as a server's cache would hold it
    try:
        await run(engine, max(int(x) for x in args.concurrency.split(",")), 8, None)  # batch shapes warmed
        for c in (int(x) for x in args.concurrency.split(",")):
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(args.repeat):
                for g in (None, guided):
                    runs[g is not None].append(await run(engine, c, args.max_tokens, g))
            for rs in runs.values():
                best = sorted(rs, key=lambda r: r["tok_s"])[len(rs) // 2]
                print(json.dumps({**best, "tok_s_runs": [r["tok_s"] for r in rs]}), flush=True)
    finally:
        await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
