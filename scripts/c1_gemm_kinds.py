"""One row through SmolLM2's projection shapes (30 distinct weights each, so they stream from memory as in a
step; best of 5, ms per 30 calls and the weight bytes per second): fbgemm fp16 (served), float32, and torch's
half / bfloat16 F.linear. docs/benchmarks.md ("C = 1 decode") has a run: python scripts/c1_gemm_kinds.py 1
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "head": (49152, 576)}


def best_ms(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def shape_row(name: str, n: int, k: int) -> str:
    count = 1 if name == "head" else 30
    weights = [torch.randn(n, k) * 0.02 for _ in range(count)]
    x = torch.randn(1, k)
    packed = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in weights]
    half, bf16 = [w.half() for w in weights], [w.bfloat16() for w in weights]
    xh, xb = x.half(), x.bfloat16()
    kinds = {
        "fbgemm fp16": (2, lambda: [torch.ops.quantized.linear_dynamic_fp16(x, p) for p in packed]),
        "float32": (4, lambda: [F.linear(x, w) for w in weights]),
        "half": (2, lambda: [F.linear(xh, w) for w in half]),
        "bfloat16": (2, lambda: [F.linear(xb, w) for w in bf16]),
    }
    cells = []
    for kind, (size, fn) in kinds.items():
        ms = best_ms(fn)
        cells.append(f"{kind} {ms:.2f} ms ({n * k * count * size / ms / 1e6:.1f} GB/s)")
    return f"{name} {n}x{k} x{count}: " + ", ".join(cells)


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            print(shape_row(name, n, k), flush=True)


if __name__ == "__main__":
    main()
