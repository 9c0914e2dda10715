"""All of SmolLM2's decoder projections (30 x qkv, o, gate+up, down; random weights) in one compiled graph:
fbgemm fp16 (the custom op seedance::fp16_linear) against int8_gemv's GEMV, at a given row count, one process
per run (a run compiles its graph first). docs/benchmarks.md ("int8 in the compiled decode step") has figures:

    TORCHINDUCTOR_CPP_ENABLE_FLOATING_POINT_CONTRACT_FLAG=fast python scripts/int8_gemv_bench.py 1 int8
    python scripts/int8_gemv_bench.py 1 fp16      # rows 1, 2, 4, 8: where the GEMV stops winning
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seedance.models import int8_gemv
from seedance.models.fp16_linear import Fp16Linear, register_compile_op, set_handle
from seedance.models.quantized_linear import quantize_int8

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", type=int)
    ap.add_argument("kind", choices=["fp16", "int8"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    register_compile_op()
    torch.manual_seed(0)
    layers = []
    for i, (n, k) in enumerate(SHAPES):
        w = torch.randn(n, k) * 0.02
        if args.kind == "fp16":
            layer = Fp16Linear(w)
            set_handle(layer, i)
            layers.append(layer)
        else:
            codes, scales = quantize_int8(w)
            layers.append((int8_gemv.word_layout(codes), scales.float()))

    def fp16(x):
        return [torch.ops.seedance.fp16_linear(x[:, :m.in_features], m.handle, m.out_features) for m in layers]

    def int8(x):
        return [int8_gemv.gemv(x[:, :w.shape[1] * 4].contiguous(), w, s) for w, s in layers]

    fn = torch.compile(fp16 if args.kind == "fp16" else int8, dynamic=False)
    x = torch.randn(args.rows, 1536)
    with torch.inference_mode():
        fn(x)
        times = []
        for _ in range(args.iterations):
            t, cpu = time.perf_counter(), time.thread_time()
            fn(x)
            times.append((time.perf_counter() - t, time.thread_time() - cpu))
    print(f"{args.kind} rows={args.rows}: wall {1e3 * statistics.median(a for a, _ in times):.2f} ms, "
          f"CPU {1e3 * statistics.median(b for _, b in times):.2f} ms per pass (median of {args.iterations})")


if __name__ == "__main__":
    main()
