"""Decode tokens/s of the engine alone (no server) with greedy and with sampled requests, same model, same batch:
what sampling costs a whole step, the sampler's share of it.

    python scripts/sampled_steps.py MODEL [--streams 8,64] [--tokens 64] [--rounds 2]
    PYTHONPATH=/tmp/before python scripts/sampled_steps.py MODEL ...   # another tree's engine, for a before / after

Each round: N requests at once (distinct 64-token prompts, `--tokens` output tokens, EOS ignored), run to the end
on one LLMEngine; the figure is output tokens over the time after the first step (the prefill). Mixes: greedy,
temperature 1 (what an OpenAI SDK sends unless told), temperature 0.7 + top_p 0.95 (a chat UI's).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams

MIXES = {"greedy": dict(temperature=0.0), "temperature 1": dict(temperature=1.0),
         "t 0.7 + top_p 0.95": dict(temperature=0.7, top_p=0.95)}


def one_round(engine: LLMEngine, streams: int, tokens: int, params: dict, rng: random.Random, tag: str) -> float:
    vocab = engine.runner.model.config.vocab_size
    for i in range(streams):
        prompt = [rng.randrange(100, vocab - 100) for _ in range(64)]
        engine.add_request(f"{tag}-{i}", prompt, SamplingParams(max_tokens=tokens, ignore_eos=True, **params))
    engine.step()  # the prefill and the first tokens
    t0, made = time.perf_counter(), 0
    while engine.requests:
        made += sum(e.token_id >= 0 for e in engine.step())
    return made / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--streams", default="8,64")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    engine = LLMEngine.from_config(EngineConfig(model=args.model, max_num_seqs=128))
    engine.warmup()
    rng = random.Random(0)
    levels = [int(s) for s in args.streams.split(",")]
    print("| mix | " + " | ".join(f"{n} streams tok/s" for n in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for name, params in MIXES.items():
        cells = []
        for n in levels:
            runs = [one_round(engine, n, args.tokens, params, rng, f"{name}-{n}-{r}") for r in range(args.rounds)]
            cells.append(f"{statistics.median(runs):.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
