"""The built-in model's single stream in-process, several ways in one process: float32 / fp16 weights, eager /
compiled decode step. Each round runs one request (a distinct 64-token prompt, 128 greedy tokens, EOS ignored:
the served benchmark's workload) on every engine in turn, so a loaded box slows them alike; reports decode tok/s
(wall and per CPU-second of the engine thread) and ms per step as medians over the rounds, whether each engine's
greedy tokens equal the first's, and the floor under a step: the model's 25 GEMMs alone (its 24 projections
and the head, each weight once, as a step reads them) in float32 (torch's MKL, and numpy's OpenBLAS on one
thread for comparison) and fp16 (fbgemm). docs/benchmarks.md ("Built-in tiny
model, single stream") has a run:

    python scripts/tiny_step_ab.py --engines f32,f32-compile,fp16,fp16-compile,f32-openblas --rounds 5

f32-openblas is float32 eager with the one-row projections and head through numpy's OpenBLAS (a measurement of
that GEMV, not a mode Seedance has).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS, for the floor's comparison: one thread, as torch's

import argparse
import contextlib
import json
import random
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams
from seedance.models import float_gemv


class _OpenBlasRow(torch.nn.Module):
    """A float32 projection whose one-row calls go to numpy's matmul (OpenBLAS) on the same memory: the
    f32-openblas engine, a measurement only (Seedance's model does not do this)."""

    def __init__(self, linear: torch.nn.Module) -> None:
        super().__init__()
        self.linear, self.weight = linear, linear.weight.detach().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            return self.linear(x)
        return torch.from_numpy(np.matmul(self.weight, x.numpy()[0]))[None]


def _openblas_rows(model) -> None:
    for layer in model.layers:
        for parent, name in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"),
                             (layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")):
            setattr(parent, name, _OpenBlasRow(getattr(parent, name)))
    head = model.embed_tokens.weight.detach().numpy()  # tied
    plain = model.compute_logits

    def compute_logits(hidden):
        if hidden.shape[0] != 1:
            return plain(hidden)
        return torch.from_numpy(np.matmul(head, model.norm(hidden).numpy()[0]))[None]

    model.compute_logits = compute_logits


@contextlib.contextmanager
def _patched(owner, name: str, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def build(name: str) -> LLMEngine:
    """NAME: f32, bf16 (bfloat16 weights and activations), default (the default dtype: `auto`), fp16 (fbgemm fp16
    weights) or f32-openblas (one-row GEMMs through numpy), optionally -compile; -compile-nogemv: compiled with
    the float projections and head as F.linear (the extern GEMM) in the one-row graph, as before float_gemv;
    -t2 anywhere: on 2 torch threads (else 1)."""
    quantize = "fp16" if name.startswith("fp16") else "none"
    dtype = {"bf16": "bfloat16", "default": "auto"}.get(name.split("-")[0], "float32")
    config = EngineConfig(threads=2 if "-t2" in name else 1, dtype=dtype, quantize=quantize,
                          compile="-compile" in name)
    with contextlib.ExitStack() as stack:
        if "-nogemv" in name:  # traced without it (the graph keeps what it traced; the guards that would
            # notice are not the ones CompiledDecode checks)
            stack.enter_context(_patched(float_gemv, "attach", lambda model: 0))
            stack.enter_context(_patched(float_gemv, "linear", F.linear))
        engine = LLMEngine.from_config(config)
    if name == "f32-openblas":
        _openblas_rows(engine.runner.model)
    engine.warmup()
    return engine


def one_request(engine: LLMEngine, request_id: str, prompt: list[int], tokens: int) -> tuple[float, float, list]:
    """Decode seconds (wall, thread CPU) of one request after its prefill step, and its tokens."""
    engine.add_request(request_id, prompt, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))
    out = [e.token_id for e in engine.step() if e.token_id >= 0]  # the prefill (and its first token)
    wall, cpu = time.perf_counter(), time.thread_time()
    while engine.has_work():
        out += [e.token_id for e in engine.step() if e.token_id >= 0]
    return time.perf_counter() - wall, time.thread_time() - cpu, out


def gemm_floor_ms(engine: LLMEngine, repeats: int = 200) -> dict[str, float]:
    """ms for one pass over the 25 GEMMs of a one-row step (F.linear on float32 weights; numpy's matmul on the
    same memory; fbgemm's fp16 GEMM on their fp16 copies; F.linear on bfloat16 copies: oneDNN), medians of 7."""
    model = engine.runner.model
    weights = [m.weight for layer in model.layers for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                                             layer.mlp.gate_up_proj, layer.mlp.down_proj)]
    weights.append(model.embed_tokens.weight)
    weights = [w.detach().float() for w in weights]  # the floor is float32's (a bf16 engine's weights cast back)
    xs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    weights16, xs16 = [w.bfloat16() for w in weights], {k: v.bfloat16() for k, v in xs.items()}
    packed = [torch.ops.quantized.linear_prepack_fp16(w.contiguous(), None) for w in weights]
    arrays = [w.detach().numpy() for w in weights]
    vectors = {k: v.numpy()[0] for k, v in xs.items()}

    def f32():
        for w in weights:
            F.linear(xs[w.shape[1]], w)

    def bf16():
        for w in weights16:
            F.linear(xs16[w.shape[1]], w)

    def openblas():
        for w in arrays:
            np.matmul(w, vectors[w.shape[1]])

    def fp16():
        for w, p in zip(weights, packed, strict=True):
            torch.ops.quantized.linear_dynamic_fp16(xs[w.shape[1]], p)

    out: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(7):
            for name, fn in (("gemms_f32_ms", f32), ("gemms_f32_openblas_ms", openblas), ("gemms_fp16_ms", fp16),
                             ("gemms_bf16_ms", bf16)):
                fn()
                cpu = time.thread_time()
                for _ in range(repeats):
                    fn()
                out.setdefault(name, []).append((time.thread_time() - cpu) / repeats * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="f32,f32-compile,fp16,fp16-compile,f32-openblas")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    names = args.engines.split(",")
    engines = {}
    for name in names:
        t = time.perf_counter()
        engines[name] = build(name)
        print(json.dumps({"engine": name, "load_s": round(time.perf_counter() - t, 1),
                          "compiled": engines[name].runner.compiled is not None}), flush=True)
    rng = random.Random(0)
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    same = {n: True for n in names}
    for r in range(args.rounds):
        prompt = [rng.randrange(10, 4000) for _ in range(64)]
        first = None
        for name, engine in engines.items():
            wall, cpu, tokens = one_request(engine, f"r{r}", prompt, args.max_tokens)
            runs[name].append((wall, cpu))
            first = tokens if first is None else first
            same[name] &= tokens == first
    steps = args.max_tokens - 1
    for name in names:
        wall = statistics.median(w for w, _ in runs[name])
        cpu = statistics.median(c for _, c in runs[name])
        print(json.dumps({"engine": name, "tok_s": round(steps / wall, 1), "cpu_tok_s": round(steps / cpu, 1),
                          "step_ms": round(wall / steps * 1e3, 3), "step_cpu_ms": round(cpu / steps * 1e3, 3),
                          "greedy_equal_to_first": same[name]}), flush=True)
    print(json.dumps(gemm_floor_ms(engines[names[0]])), flush=True)


if __name__ == "__main__":
    main()
