"""Engine alone: one decode step of STREAMS greedy streams (distinct 64-token prompts), eager or compiled, and the
load + compile time; docs/benchmarks.md ("C = 1 compiled on the AMX CPU") has runs:

    python scripts/compiled_step.py MODEL STREAMS STEPS [--compile] [--threads 2] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import random
import time

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("streams", type=int)
    parser.add_argument("steps", type=int)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    args = parser.parse_args()
    t0 = time.perf_counter()
    engine = LLMEngine.from_config(EngineConfig(model=args.model, dtype=args.dtype, kv_cache_bytes=256 << 20,
                                                threads=args.threads, compile=args.compile,
                                                max_num_seqs=args.max_num_seqs))
    print(f"load{' + compile' if args.compile else ''}: {time.perf_counter() - t0:.1f} s")
    rng = random.Random(0)
    params = SamplingParams(max_tokens=args.steps + 64, temperature=0, ignore_eos=True)
    for i in range(args.streams):
        engine.add_request(str(i), [rng.randrange(10, 40000) for _ in range(64)], params)
    for _ in range(max(4, args.streams * 64 // 256 + 2) + 5):  # the prefills, then a few decode steps
        engine.step()
    start = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    step = (time.perf_counter() - start) / args.steps
    print(f"{args.streams} streams: {step * 1e3:.2f} ms a decode step, {args.streams / step:.1f} tok/s")


if __name__ == "__main__":
    main()
