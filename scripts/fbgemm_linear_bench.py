"""One pass over all of SmolLM2's projections (30 layers' fused qkv, o, gate+up, down, and the 49152 x 576 head:
134M weights, so they stream from memory as in a real step) per kernel and rows, in milliseconds (docs/model.md):

    python scripts/fbgemm_linear_bench.py [--rows 1,8,32,64,256] [--threads 1] [--kernels f32,bf16,...]

Kernels (`--kernels`, default all):
- f32: float32 `F.linear`; bf16: bfloat16 weights and activations through `F.linear` (oneDNN's bf16 GEMM where
  the CPU has AVX512_BF16 / AMX, else emulated);
- int8: `Int8Linear` (fbgemm's int8 GEMM, two passes: what `--quantize int8` runs on a CPU without VNNI);
- int8-1: one fbgemm pass with 7-bit activations (`reduce_range=True`, AVX2's); int8-1f: one pass with full
  8-bit activations (`reduce_range=False`: exact only where VNNI's int32 accumulation does not saturate);
- fp16: `Fp16Linear` (fbgemm's fp16 GEMM);
- wo8 / wo4: torch's weight-only `_weight_int8pack_mm` / `_weight_int4pack_mm_for_cpu` kernels called directly
  (float32 activations; wo4b: bfloat16 activations), at every row count (QuantizedLinear dequantizes past
  DEQUANTIZE_ABOVE_ROWS instead).
Interleaved, median of 5 passes, both wall and this thread's CPU time (with one torch thread all the compute;
what a loaded box inflates least). `--error` adds each kernel's relative error (norm) against the exact product
of its own weight (int8 / int4 codes dequantized, else the float32 weight), on inputs with SmolLM2-like outlier
channels (a few at 100x): the activation rounding alone, what separates one pass from two.
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
KERNELS = ("f32", "bf16", "int8", "int8-1", "int8-1f", "fp16", "wo8", "wo4", "wo4b")


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return (time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3


def outlier_input(rows: int, k: int) -> torch.Tensor:
    """Activations with a few channels ~100x the rest, as SmolLM2's (down_proj's inputs reach ~900x their mean)."""
    x = torch.randn(rows, k)
    x[:, :4] *= 100
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,8,32,64,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--error", action="store_true", help="also each kernel's relative error (outlier inputs)")
    ap.add_argument("--layers", type=int, default=30, help="fewer for a quick check")
    args = ap.parse_args()
    wanted = args.kernels.split(",")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = SHAPES[:4 * args.layers] + SHAPES[-1:]
    weights = [torch.randn(n, k) * 0.02 for n, k in shapes]
    need8 = {"int8", "int8-1", "int8-1f"} & set(wanted)
    int8 = [Int8Linear(*quantize_int8(w)) for w in weights] if need8 else []
    int8_ref = [m.dequantize() for m in int8] if need8 and args.error else []
    bf16 = [w.bfloat16() for w in weights] if "bf16" in wanted else []
    fp16 = [Fp16Linear(w) for w in weights] if "fp16" in wanted else []
    wo8 = [QuantizedLinear.from_float(w, 8) for w in weights] if "wo8" in wanted else []
    wo4 = [QuantizedLinear.from_float(w, 4, 32) for w in weights] if {"wo4", "wo4b"} & set(wanted) else []
    wo4b_sz = [m.scale_and_zeros.bfloat16() for m in wo4] if "wo4b" in wanted else []
    mm8, mm4 = torch.ops.aten._weight_int8pack_mm, torch.ops.aten._weight_int4pack_mm_for_cpu
    dyn = torch.ops.quantized.linear_dynamic

    def fns(x: dict[int, torch.Tensor]) -> dict[str, tuple]:
        """name -> (the pass, the exact products' weights it is measured against)."""
        xb = {k: v.bfloat16() for k, v in x.items()}
        table = {
            "f32": (lambda: [F.linear(x[w.shape[1]], w) for w in weights], weights),
            "bf16": (lambda: [F.linear(xb[w.shape[1]], w) for w in bf16], weights),
            "int8": (lambda: [m(x[m.in_features]) for m in int8], int8_ref),
            "int8-1": (lambda: [dyn(x[m.in_features], m.packed, True) for m in int8], int8_ref),
            "int8-1f": (lambda: [dyn(x[m.in_features], m.packed, False) for m in int8], int8_ref),
            "fp16": (lambda: [m(x[m.in_features]) for m in fp16], weights),
            "wo8": (lambda: [mm8(x[m.in_features], m.weight_int8, m.scales) for m in wo8],
                    [m.dequantize() for m in wo8] if args.error else []),
            "wo4": (lambda: [mm4(x[m.in_features], m.weight_int4, 32, m.scale_and_zeros) for m in wo4],
                    [m.dequantize() for m in wo4] if args.error else []),
            "wo4b": (lambda: [mm4(xb[m.in_features], m.weight_int4, 32, sz) for m, sz in zip(wo4, wo4b_sz,
                                                                                            strict=True)],
                     [m.dequantize() for m in wo4] if args.error else []),
        }
        return {name: table[name] for name in wanted}

    cols = " | ".join(wanted)
    print(f"| rows | {cols} |  (ms per pass: wall / CPU{'; relative error' if args.error else ''})")
    print("|---|" + "---|" * len(wanted))
    with torch.inference_mode():
        if args.error:
            x = {k: outlier_input(8, k) for k in (576, 1536)}
            cells = []
            for _name, (fn, ref) in fns(x).items():
                errs = [float((y.float() - F.linear(x[w.shape[1]], w)).norm() / F.linear(x[w.shape[1]], w).norm())
                        for y, w in zip(fn(), ref, strict=True)]
                cells.append(f"{statistics.mean(errs):.2e}")
            print("| error | " + " | ".join(cells) + " |", flush=True)
        for rows in (int(r) for r in args.rows.split(",")):
            x = {k: torch.randn(rows, k) for k in (576, 1536)}
            kernels = {name: fn for name, (fn, _) in fns(x).items()}
            times: dict[str, list[tuple[float, float]]] = {}
            for fn in kernels.values():
                fn()
            for _ in range(5):
                for name, fn in kernels.items():
                    times.setdefault(name, []).append(timed(fn))
            cells = []
            for name in wanted:
                wall = statistics.median(t[0] for t in times[name])
                cpu = statistics.median(t[1] for t in times[name])
                cells.append(f"{wall:.0f} / {cpu:.0f}")
            print(f"| {rows} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
