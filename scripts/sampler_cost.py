"""What the sampler costs per step, by batch and request mix, on the vocabulary of a real model (SmolLM2: 49,152).

    python scripts/sampler_cost.py [--vocab 49152] [--batches 1,8,64] [--rounds 30]
    PYTHONPATH=/tmp/before python scripts/sampler_cost.py ...   # another tree's sampler, for a before / after

Each case calls `Sampler` on random float32 logits (one torch thread, as the engine's steps run), with every row's
past tokens for the penalties, and reports the median ms per call. The mixes: greedy (temperature 0, the serving
benchmarks'), temperature 1 (what an OpenAI SDK sends unless told: top_p 1), temperature 0.7 + top_p 0.95 (a chat
UI's), top_k 40, seeded, and one row of each beside greedy rows.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from seedance.engine.sampler import Sampler
from seedance.engine.sampling_params import SamplingParams

MIXES = {
    "greedy": [SamplingParams(temperature=0)],
    "temperature 1": [SamplingParams(temperature=1.0)],
    "t 0.7 + top_p 0.95": [SamplingParams(temperature=0.7, top_p=0.95)],
    "top_k 40": [SamplingParams(temperature=0.8, top_k=40)],
    "seeded": [SamplingParams(temperature=1.0, seed=7)],
    "one of each + greedy": [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_p=0.95),
                             SamplingParams(temperature=0.8, top_k=40), SamplingParams(temperature=1.0, seed=7),
                             SamplingParams(temperature=0, repetition_penalty=1.1), SamplingParams(temperature=0,
                                                                                                   logprobs=5)],
}


def case(sampler: Sampler, mix: list[SamplingParams], batch: int, vocab: int, rounds: int) -> float:
    # one kind: every row; a mix: one row of each, the rest greedy (a batch of 1: the first)
    params = mix * batch if len(mix) == 1 else (mix + [SamplingParams(temperature=0)] * batch)[:batch]
    gen = torch.Generator().manual_seed(batch)
    logits = torch.randn(batch, vocab, generator=gen) * 3
    rng = random.Random(batch)
    history = [[rng.randrange(vocab) for _ in range(96)] for _ in range(batch)]
    ids = [f"r{i}" for i in range(batch)]
    times = []
    for _ in range(rounds + 3):
        t = time.perf_counter()
        sampler(logits, ids, params, history, [64] * batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--output")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sampler = Sampler(0)
    batches = [int(b) for b in args.batches.split(",")]
    rows = {name: {b: round(case(sampler, mix, b, args.vocab, args.rounds), 3) for b in batches}
            for name, mix in MIXES.items()}
    print(f"| mix (vocab {args.vocab}) | " + " | ".join(f"batch {b} ms" for b in batches) + " |")
    print("|---|" + "---|" * len(batches))
    for name, by_batch in rows.items():
        print(f"| {name} | " + " | ".join(f"{by_batch[b]:.2f}" for b in batches) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"vocab": args.vocab, "ms": rows}, f, indent=1)


if __name__ == "__main__":
    main()
