"""QuantizedLinear per call: torch's weight-only CPU kernel vs dequantize-then-float-GEMM, by rows (docs/model.md).

    python scripts/quantized_linear_bench.py
"""

from __future__ import annotations

import time

import torch

import seedance.models.quantized_linear as ql

SHAPES = [(3072, 576), (576, 1536), (49152, 576)]  # SmolLM2's gate+up, down and output head (N, K)
ROWS = (1, 4, 8, 16, 37)


def per_call_ms(fn, repeat: int = 10) -> float:
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1e3


def main() -> None:
    torch.manual_seed(0)
    print("| N × K | rows | float32 | int8 kernel | int8 dequantize | int4 kernel | int4 dequantize |")
    print("|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for n, k in SHAPES:
            weight = torch.randn(n, k) * 0.05
            layers = {8: ql.QuantizedLinear.from_float(weight, 8), 4: ql.QuantizedLinear.from_float(weight, 4, 32)}
            for rows in ROWS:
                x = torch.randn(rows, k)
                cells = [f"{per_call_ms(lambda x=x, w=weight: x @ w.T):.2f}"]
                for bits in (8, 4):
                    for threshold in (1 << 30, 0):  # never / always dequantize
                        ql.DEQUANTIZE_ABOVE_ROWS = threshold
                        cells.append(f"{per_call_ms(lambda layer=layers[bits], x=x: layer(x)):.2f}")
                print(f"| {n} × {k} | {rows} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
