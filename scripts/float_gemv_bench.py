"""All of SmolLM2's decoder projections (30 x qkv, o, gate+up, down; random weights) at one row, one pass: CPU
and wall ms (medians of 15) and weight bytes per wall ms. F.linear eager (MKL for float32, oneDNN for bfloat16),
F.linear compiled (inductor calls the same extern GEMM), and float_gemv's reduction compiled (what the compiled
one-row decode step now runs). docs/benchmarks.md ("Single stream on AVX-512") has a run:

    python scripts/float_gemv_bench.py bf16-red        # bf16-eager, bf16-compile, bf16-red, f32-eager, f32-red
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from seedance.models import float_gemv
from seedance.models.compiled_decode import OPTIONS
from seedance.models.int8_gemv import COMPILE_OPTIONS

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["bf16-eager", "bf16-compile", "bf16-red", "f32-eager", "f32-compile", "f32-red"])
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.kind.startswith("bf16") else torch.float32
    weights = [(torch.randn(n, k) * 0.02).to(dtype) for n, k in SHAPES]
    x = torch.randn(args.rows, 1536).to(dtype)

    def linear(x):
        return [F.linear(x[:, :w.shape[1]], w) for w in weights]

    def reduction(x):
        return [float_gemv.gemv(x[:, :w.shape[1]], w) for w in weights]

    options = {**OPTIONS, **COMPILE_OPTIONS}  # the decode graph's
    how = args.kind.split("-")[1]
    fn = {"eager": linear, "compile": torch.compile(linear, dynamic=False, options=options),
          "red": torch.compile(reduction, dynamic=False, options=options)}[how]
    with torch.inference_mode():
        fn(x)
        times = []
        for _ in range(args.iterations):
            wall, cpu = time.perf_counter(), time.thread_time()
            fn(x)
            times.append((time.perf_counter() - wall, time.thread_time() - cpu))
        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(linear(x), fn(x), strict=True))
    wall = statistics.median(w for w, _ in times) * 1e3
    ms = statistics.median(c for _, c in times) * 1e3
    mb = sum(w.numel() * w.element_size() for w in weights) / 1e6
    print(f"{args.kind} rows={args.rows} threads={args.threads}: {ms:.2f} ms CPU ({wall:.2f} wall) per pass, "
          f"{mb / wall:.1f} GB/s of wall ({mb:.0f} MB), max |diff| against eager {diff:.3g}", flush=True)


if __name__ == "__main__":
    main()
