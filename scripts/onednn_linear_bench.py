"""One pass over all of SmolLM2's projections (30 layers' fused qkv, o, gate+up and down: 120 distinct weights, so
they stream from memory as in a real step; the head with --head), per kernel and row count, 1 torch thread (or
$THREADS):
plain bf16 `F.linear`, bf16 on oneDNN's reordered weights (models/onednn_linear.py, `PackedLinear`) and torch's
int4 kernel with bf16 activations (`QuantizedLinear`), ms per pass, median of --repeat.

    python scripts/onednn_linear_bench.py --rows 1,2,4,6,8,16,32,64    # THREADS=2 for two torch threads
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from seedance.models.onednn_linear import PackedLinear
from seedance.models.quantized_linear import QuantizedLinear

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # qkv (9 + 3 + 3 heads of 64), o, gate+up, down


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,2,4,6,8,16,32,64")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--head", action="store_true", help="the 49152 x 576 tied head too")
    args = ap.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "1")))
    gen = torch.Generator().manual_seed(0)
    shapes = SHAPES * 30 + ([(49152, 576)] if args.head else [])
    weights = [(torch.randn(n, k, generator=gen) * 0.05) for n, k in shapes]
    plain = [w.bfloat16() for w in weights]
    packed = [PackedLinear(w) for w in plain]
    int4 = [QuantizedLinear.from_float(w, 4, 32).to(torch.bfloat16) for w in weights]
    del weights
    kernels = {"bf16 F.linear": lambda x, i: F.linear(x, plain[i]), "bf16 reordered": lambda x, i: packed[i](x),
               "int4": lambda x, i: int4[i](x)}
    print("rows | " + " | ".join(kernels))
    for rows in (int(r) for r in args.rows.split(",")):
        xs = {k: torch.randn(rows, k, generator=gen).bfloat16() for k in (576, 1536)}
        cells = []
        for fn in kernels.values():
            def one_pass(fn=fn, xs=xs):
                for i, (_, k) in enumerate(shapes):
                    fn(xs[k], i)
            one_pass()
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                one_pass()
                times.append((time.perf_counter() - t) * 1e3)
            cells.append(f"{statistics.median(times):.1f}")
        print(f"{rows} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
