"""fp16-weight linear over fbgemm's fp16 GEMM (`--quantize fp16`): half of float32's weight bytes, float32
activations and accumulation, so within ~1e-4 of float32 where int8 is within ~1e-2.

fbgemm's `linear_dynamic_fp16` (the kernel behind `torch.ao.nn.quantized.dynamic.Linear` with `float16`) is an
AVX2/F16C GEMM on a weight prepacked once at load: on the 2-core AVX2 box it ran SmolLM2's projections 1.8-2.6x
faster than float32's GEMM at 1-64 rows (docs/model.md), as fast as the int8 path with 40x its accuracy.
A weight beyond fp16's range (|w| > 65504) saturates; a language model's do not come near.
"""

from __future__ import annotations

import torch
from torch import nn


class Fp16Linear(nn.Module):
    """y = x W^T + b with W stored as fp16 in fbgemm's packed layout. Float32 in and out; other activation
    dtypes are cast around the call. The packed weight is not a buffer (`.to()` leaves it alone): CPU only."""

    bits = 16

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.has_bias = bias is not None
        b = None if bias is None else bias.detach().float().contiguous()
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, flat = x.dtype, x.dim() == 2  # the runner's [T, K]: no reshapes either side
        x2 = x if flat else x.reshape(-1, self.in_features)
        y = torch.ops.quantized.linear_dynamic_fp16(x2 if dtype == torch.float32 else x2.float(), self.packed)
        if dtype != torch.float32:
            y = y.to(dtype)
        return y if flat else y.reshape(*x.shape[:-1], self.out_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [N, K] the packed fp16 values stand for (fbgemm unpacks a copy)."""
        return torch.ops.quantized.linear_unpack_fp16(self.packed)[0].to(dtype)

    @property
    def nbytes(self) -> int:
        return 2 * self.out_features * self.in_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 fbgemm, bias={self.has_bias}"
