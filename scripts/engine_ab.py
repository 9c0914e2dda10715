"""Interleaved A/B of the engine's compute path: two checkouts of `seedance/`, alternating, same minutes.

On a shared, loaded machine absolute speeds swing by 2x from one minute to the next, so a change is only
judged against its baseline measured in alternation (rounds x cases x variants), by medians and their ratio:

    git archive <base-commit> seedance | tar -x -C /tmp/base
    python scripts/engine_ab.py --variant base=/tmp/base --variant new=. \
        --case tiny:1:300 --case /path/smollm2-135m-instruct-f32:8:40 --rounds 3

A case is MODEL:STREAMS:STEPS (MODEL `tiny` = the built-in model): STREAMS requests with distinct 64-token
prompts are prefilled, then STEPS decode steps are timed (output tok/s, prefill excluded; also per CPU-second of
the engine thread, which a loaded box inflates least when torch runs one thread). A variant is
NAME=PATH[:THREADS][+QUANTIZE][@DTYPE] (that variant's `--quantize`: auto, none, int8...; its `--dtype`, float32
unless given: auto follows the CPU). `--ops` instead counts the
top-level aten ops of one decode step of the built-in model (load-independent), per variant; `--micro` times
this checkout's RMSNorm and RoPE against the formulation they replaced (transformers' order of ops), interleaved
in one process, at SmolLM2's shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter


def engine(model: str, threads: int, quantize: str = "auto", dtype: str = "float32"):
    from seedance.engine.config import EngineConfig
    from seedance.engine.llm_engine import LLMEngine

    return LLMEngine.from_config(EngineConfig(model=None if model == "tiny" else model, dtype=dtype,
                                              threads=threads or None, kv_cache_bytes=256 << 20, quantize=quantize))


def add_streams(eng, streams: int, vocab: int, max_tokens: int) -> None:
    from seedance.engine.sampling_params import SamplingParams

    rng = random.Random(0)
    for i in range(streams):
        eng.add_request(str(i), [rng.randrange(10, vocab) for _ in range(64)],
                        SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))


def decode_tok_s(model: str, streams: int, steps: int, threads: int, quantize: str,
                 dtype: str = "float32") -> tuple[float, float]:
    """Decode tokens per second of wall time, and per second of this thread's CPU time (with one torch thread,
    all of the step's compute: what a loaded box inflates least)."""
    eng = engine(model, threads, quantize, dtype)
    add_streams(eng, streams, 400 if model == "tiny" else 40000, steps + 8)
    for _ in range(max(4, -(-streams * 64 // 256) + 2)):  # the prefill chunks (256-token step budget)
        eng.step()
    tokens, t, cpu = 0, time.perf_counter(), time.thread_time()
    for _ in range(steps):
        tokens += sum(1 for e in eng.step() if e.token_id >= 0)
    return tokens / (time.perf_counter() - t), tokens / (time.thread_time() - cpu)


def ops_per_step() -> dict:
    from torch.profiler import ProfilerActivity, profile

    eng = engine("tiny", 0)
    add_streams(eng, 1, 400, 50)
    for _ in range(5):
        eng.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            eng.step()
    top = [e.name for e in prof.events()
           if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return {"ops_per_step": len(top) / 10, "by_name": {k: v / 10 for k, v in Counter(top).most_common(12)}}


def micro() -> None:
    import torch

    torch.set_num_threads(1)
    with torch.inference_mode():
        for rows in (1, 8, 64):
            times: dict[str, list[float]] = {}
            fns = micro_fns(rows)
            for _ in range(7):
                for name, fn in fns.items():
                    times.setdefault(name, []).append(per_call_us(fn))
            print(f"{rows} rows: " + ", ".join(f"{n} {statistics.median(v):.1f} us" for n, v in times.items()))


def micro_fns(rows: int) -> dict:
    """RMSNorm and RoPE as transformers orders them ("before") and as models/llama.py does ("now")."""
    import torch
    import torch.nn.functional as F

    from seedance.models.llama import apply_rope

    weight, x, qkv = torch.randn(576), torch.randn(rows, 576), torch.randn(rows, 960)  # 9 query + 3 KV heads
    cos, sin = torch.randn(rows, 1, 64), torch.randn(rows, 1, 64)

    def rms_before():
        h = x.float()
        return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)

    def rotate_half(t):
        return torch.cat((-t[..., 32:], t[..., :32]), dim=-1)

    def rope_before():
        q, k, _ = qkv.split([576, 192, 192], -1)
        q, k = q.view(rows, 9, 64), k.view(rows, 3, 64)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    return {"rmsnorm before": rms_before, "rmsnorm now": lambda: F.rms_norm(x, (576,), weight, 1e-5),
            "rope before": rope_before, "rope now": lambda: apply_rope(qkv[:, :768].view(rows, 12, 64), cos, sin)}


def per_call_us(fn, n: int = 300) -> float:
    for _ in range(20):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def child(variant_path: str, args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.path.abspath(variant_path)})
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=PATH[:THREADS][+QUANTIZE][@DTYPE] (two or more)")
    ap.add_argument("--case", action="append", default=[], help="MODEL:STREAMS:STEPS")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ops", action="store_true")
    ap.add_argument("--micro", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "ops":
            print(json.dumps(ops_per_step()))
        else:
            model, streams, steps, threads, quantize, dtype = args.child
            tok_s, cpu_tok_s = decode_tok_s(model, int(streams), int(steps), int(threads), quantize, dtype)
            print(json.dumps({"tok_s": tok_s, "cpu_tok_s": cpu_tok_s}))
        return
    if args.micro:
        micro()
        return
    variants = dict(v.split("=", 1) for v in args.variant)
    if args.ops:
        for name, spec in variants.items():
            print(name, child(spec.partition(":")[0], ["ops"]), flush=True)
        return
    results: dict[tuple, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for case in args.case:
            model, streams, steps = case.rsplit(":", 2)
            for name, spec in variants.items():
                spec, _, dtype = spec.partition("@")
                spec, _, quantize = spec.partition("+")
                path, _, threads = spec.partition(":")
                got = child(path, [model, streams, steps, threads or "0", quantize or "auto", dtype or "float32"])
                key = (os.path.basename(model), int(streams))
                for metric in ("tok_s", "cpu_tok_s"):
                    results.setdefault((*key, metric), {}).setdefault(name, []).append(got[metric])
                print(f"round {r} {key[0]} x{streams} {name}: {got['tok_s']:.1f} tok/s "
                      f"({got['cpu_tok_s']:.1f} per CPU-second of the engine thread)", flush=True)
    names = list(variants)
    for (model, streams, metric), by in results.items():
        med = {n: statistics.median(by[n]) for n in names}
        ratios = " ".join(f"{n}/{names[0]}={med[n] / med[names[0]]:.2f}" for n in names[1:])
        print(f"{model} x{streams} {metric}: " + " ".join(f"{n} {med[n]:.1f}" for n in names) + f" (medians) {ratios}")


if __name__ == "__main__":
    main()
