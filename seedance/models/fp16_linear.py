"""fp16-weight linear over fbgemm's fp16 GEMM (`--quantize fp16`): half of float32's weight bytes, float32
activations and accumulation, so within ~1e-4 of float32 where int8 is within ~1e-2.

fbgemm's `linear_dynamic_fp16` (the kernel behind `torch.ao.nn.quantized.dynamic.Linear` with `float16`) is an
AVX2/F16C GEMM on a weight prepacked once at load: on the 2-core AVX2 box it ran SmolLM2's projections 1.8-2.6x
faster than float32's GEMM at 1-64 rows (docs/model.md), as fast as the int8 path with 40x its accuracy.
A weight beyond fp16's range (|w| > 65504) saturates; a language model's do not come near.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

# Layers the compiled decode step (compiled_decode.py) calls by handle: dynamo cannot trace fbgemm's packed weight
# (a TorchScript object without __obj_flatten__), so under torch.compile the GEMM is the custom op below, which
# finds the layer here. Weak: a model dropped by its owner leaves no packed weights behind.
_BY_HANDLE: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()


def set_handle(layer: nn.Module, handle: int) -> None:
    """Name the layer for the compiled graph. The handle is a constant of that graph, so it must not depend on
    what else the process loaded, or inductor's on-disk cache would miss (compiled_decode.py numbers them)."""
    layer.handle = handle
    _BY_HANDLE[handle] = layer


def by_handle(handle: int) -> nn.Module:
    """The layer set_handle named (int8_gemv.py's op finds fbgemm int8 layers the same way)."""
    return _BY_HANDLE[handle]


def register_compile_op() -> None:
    """Define `seedance::fp16_linear` once (on first use only: serving without --compile never needs it)."""
    if hasattr(torch.ops.seedance, "fp16_linear"):
        return

    @torch.library.custom_op("seedance::fp16_linear", mutates_args=())
    def fp16_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, _BY_HANDLE[handle].packed)

    @fp16_linear.register_fake
    def _(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
        return x.new_empty(x.shape[0], out_features)


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
        self.handle: int | None = None  # set_handle's, when a compiled decode step calls it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, flat = x.dtype, x.dim() == 2  # the runner's [T, K]: no reshapes either side
        x2 = x if flat else x.reshape(-1, self.in_features)
        x2 = x2 if dtype == torch.float32 else x2.float()
        if torch.compiler.is_compiling():  # traced (compiled_decode.py): the handle is a constant of the graph
            y = torch.ops.seedance.fp16_linear(x2, self.handle, self.out_features)
        else:
            y = torch.ops.quantized.linear_dynamic_fp16(x2, self.packed)
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
