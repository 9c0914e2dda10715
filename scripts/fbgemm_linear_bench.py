"""One pass over all of SmolLM2's projections (30 layers' fused qkv, o, gate+up, down, and the 49152 x 576 head:
134M weights, so they stream from memory as in a real step) per kernel and rows, in milliseconds (docs/model.md):

    python scripts/fbgemm_linear_bench.py [--rows 1,8,32,64,256,512] [--threads 1]

Kernels: float32 `F.linear`; `Int8Linear` (fbgemm's int8 GEMM, two passes: what `--quantize int8` runs); one
fbgemm int8 pass alone (too inaccurate to serve: the reference); `Fp16Linear` (fbgemm's fp16 GEMM); torch's
weight-only int8 kernel `_weight_int8pack_mm` (QuantizedLinear, up to 8 rows). Interleaved, median of 5 passes,
both wall and this thread's CPU time (with one torch thread all the compute; what a loaded box inflates least).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from seedance.models.fp16_linear import Fp16Linear
from seedance.models.int8_linear import Int8Linear
from seedance.models.quantized_linear import QuantizedLinear, quantize_int8

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return (time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,8,32,64,256,512")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = [torch.randn(n, k) * 0.02 for n, k in SHAPES]
    int8 = [Int8Linear(*quantize_int8(w)) for w in weights]
    fp16 = [Fp16Linear(w) for w in weights]
    weight_only = [QuantizedLinear.from_float(w, 8) for w in weights]
    print("| rows | float32 | int8 (2 passes) | int8, 1 pass | fp16 | int8 weight-only |  (ms per pass: wall / CPU)")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            x = {k: torch.randn(rows, k) for k in (576, 1536)}
            kernels = {
                "f32": lambda x=x: [F.linear(x[w.shape[1]], w) for w in weights],
                "int8": lambda x=x: [m(x[m.in_features]) for m in int8],
                "int8-1": lambda x=x: [torch.ops.quantized.linear_dynamic(x[m.in_features], m.packed, True)
                                       for m in int8],
                "fp16": lambda x=x: [m(x[m.in_features]) for m in fp16],
            }
            if rows <= 8:
                kernels["weight-only"] = lambda x=x: [m(x[m.in_features]) for m in weight_only]
            times: dict[str, list[tuple[float, float]]] = {}
            for fn in kernels.values():
                fn()
            for _ in range(5):
                for name, fn in kernels.items():
                    times.setdefault(name, []).append(timed(fn))
            cells = []
            for name in ("f32", "int8", "int8-1", "fp16", "weight-only"):
                if name not in times:
                    cells.append("-")
                    continue
                wall = statistics.median(t[0] for t in times[name])
                cpu = statistics.median(t[1] for t in times[name])
                cells.append(f"{wall:.0f} / {cpu:.0f}")
            print(f"| {rows} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
