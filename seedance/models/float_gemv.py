"""Float weights (float32, bfloat16, float16) in the compiled one-row decode step: inductor's own GEMV, a
vectorized reduction `(x.float() * w.float()).sum(-1)`, instead of the extern GEMM call (MKL / oneDNN) that
`F.linear` lowers to.

A one-row step is memory-bound on weights, and at one row the libraries' GEMMs do not stream them at full
bandwidth on this machine kind's AVX-512 CPU: all of SmolLM2's decoder projections at one row, 1 thread, CPU ms
per pass (loaded box, docs/benchmarks.md "Single stream on AVX-512"): bfloat16 eager (oneDNN) 42.6, compiled as
`F.linear` (the same extern call) 33.4, this reduction **14.8** (14 GB/s); float32 eager (MKL) 43.9, this
reduction 24.9. Past one row the graph has a symbolic row count and keeps `F.linear` (a GEMV streams the weight
once per row).

The products and the sum are float32 (as oneDNN's bf16 GEMM accumulates), rounded to the activations' dtype once:
the same result as `F.linear` up to the order of the float32 sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [1, K] times weight [N, K]^T, accumulated in float32, in x's dtype: written for inductor to fuse into one
    vectorized reduction over the weight (eager it runs, slowly, as the same arithmetic)."""
    return (x[:, None, :].float() * weight.float()).sum(-1).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, except while torch.compile traces a one-row [1, K] input on a float CPU weight: then the GEMV.
    Eager (every step outside the compiled graph) it is F.linear itself."""
    if (torch.compiler.is_compiling() and x.dim() == 2 and isinstance(x.shape[0], int) and x.shape[0] == 1
            and weight.dtype in _FLOATS and x.dtype == weight.dtype and weight.device.type == "cpu"):
        y = gemv(x, weight)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose traced one-row forward is the GEMV (`linear` above); eager, nn.Linear's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def attach(model: nn.Module) -> int:
    """Make the model's plain float projections (nn.Linear named *_proj or lm_head) `Linear`s, in place (the same
    module and parameters: only its traced forward differs); returns how many."""
    count = 0
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name.endswith(("_proj", "lm_head")):
            module.__class__ = Linear
            count += 1
    return count
