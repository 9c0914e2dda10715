"""int8 linear over fbgemm's dynamic quantized GEMM: the fast int8 path on x86 CPUs without AVX-512.

torch's weight-only CPU kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) are written for AVX-512;
on an AVX2 CPU they run 3-20x slower than a float32 matmul (docs/model.md). fbgemm's dynamic linear (the kernel
behind `torch.ao.nn.quantized.dynamic.Linear`) multiplies int8 weights by activations it quantizes to uint8 per
call (one scale and zero point per call, from the rows' min and max) and accumulates in int32: 1.8-2.7x faster
than float32 at 1-512 rows on such a CPU. The weight is prepacked once at load into fbgemm's blocked layout (K
padded to its 512-wide blocks: a 576-wide weight takes 1.8x its int8 size, still under half of float32); no float
copy is kept.

One pass is not accurate enough for a language model: the activations' one range per call over 7 bits (below)
moved each projection's output by 5-13 % (relative norm, SmolLM2 on a chat prompt; down_proj's inputs have
channels ~900x their mean), and greedy chat answers diverged from float32's within a token or two (0 / 8 the same).
So each call runs two passes over the same packed weight: x, then the rounding residual x - q(x) on its own, much
finer, range. Their sum carries ~14 bits of the activations, and the result is as close to float32 as the int8
weight itself allows (0.7-0.9 %, the weight-only kernels' figure). For one or two rows (a decode step) the two passes
are one GEMM over twice the rows, so the weight streams from memory once: the residual is scaled up by f ~ 126 and
shifted by c into x's own range, so the call's one grid is x's, and c's contribution (c times each output's sum
of weights) is taken off afterwards. More rows are compute-bound and take two calls (the same cost, no copy).

`reduce_range=True` is required on CPUs without VNNI: their int8 instruction (vpmaddubsw) sums two uint8 x int8
products into a saturating int16, so activations keep 7 bits (0..127); with 8 they overflow (measured: errors of
0.1-0.3 on outputs of magnitude 2, against 0.02-0.04 with 7). The ops are called directly; the quantized tensor
they take is built from our own codes, with torch's "quantized tensors are deprecated" warning silenced there.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
from torch import nn

from seedance.models import int8_gemv

STACK_MAX_ROWS = 2  # up to this many rows the two passes share one GEMM (measured: 13 % less CPU at 1 row, even at 4)


@cache
def available() -> bool:
    """Whether this torch has fbgemm's CPU quantized ops (x86 builds do; others fall back: quantized_linear)."""
    try:
        return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized,
                                                                                 "linear_dynamic")
    except (AttributeError, RuntimeError):
        return False


def prepack(codes: torch.Tensor, scales: torch.Tensor):
    """fbgemm's packed weight for int8 codes [N, K] with one scale per output channel (symmetric: zero point 0)."""
    n = codes.shape[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*deprecated", category=UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(
            codes.to(torch.int8).contiguous(), scales.reshape(n).double(), torch.zeros(n, dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(qweight, None)


class Int8Linear(nn.Module):
    """y = x W^T + b with W int8 per output channel, prepacked for fbgemm. Float32 in and out; other activation
    dtypes are cast around the call. The packed weight is not a buffer (`.to()` leaves it alone): CPU only."""

    bits = 8  # as QuantizedLinear's

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.has_bias = bias is not None
        # not a buffer, so module.to(bfloat16) leaves it float32 like the GEMM's output; not packed: two passes
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.packed = prepack(codes, scales)
        self.weight_sums = (codes.float() * scales.reshape(-1, 1).float()).sum(1)  # [N]: c's share, stacked
        self.handle: int | None = None  # fp16_linear.set_handle's, when a compiled decode step calls it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features)
        if dtype != torch.float32:
            x2 = x2.float()
        if torch.compiler.is_compiling():  # traced (compiled_decode.py): inductor's GEMV or this, as an op
            y = int8_gemv.traced_forward(self, x2)
        else:
            y = self._two_passes(x2)
            if self.bias is not None:
                y += self.bias
        if dtype != torch.float32:
            y = y.to(dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _two_passes(self, x: torch.Tensor) -> torch.Tensor:
        # the grid linear_dynamic quantizes x to (the same function it calls), and what that rounding leaves out
        scale, zero_point = torch._choose_qparams_per_tensor(x, True)
        residual = x - torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 127)
        rows = x.shape[0]
        if rows > STACK_MAX_ROWS:
            y = torch.ops.quantized.linear_dynamic(x, self.packed, True)
            return y.add_(torch.ops.quantized.linear_dynamic(residual, self.packed, True))
        # |residual| <= scale / 2: f * residual + c spans (lo, hi) just inside x's range (0 included), so the
        # stacked input's min and max, hence its grid, are x's own
        lo, hi = (float(v) for v in torch.aminmax(x))
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        f = max((hi - lo) / scale * 0.99, 1.0)
        c = (lo + hi) / 2
        out = torch.ops.quantized.linear_dynamic(torch.cat([x, residual.mul_(f).add_(c)]), self.packed, True)
        return out[rows:].sub_(self.weight_sums, alpha=c).div_(f).add_(out[:rows])

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(codes [N, K] int8, scales [N] float32, bias) as packed: fbgemm unpacks a copy."""
        qweight, _ = torch.ops.quantized.linear_unpack(self.packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float(), self.bias

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [N, K] the packed codes stand for."""
        codes, scales, _ = self.int8_weight()
        return (codes.float() * scales[:, None]).to(dtype)

    @property
    def nbytes(self) -> int:
        """The int8 codes' size (the packed layout pads K to fbgemm's blocks on top of this)."""
        return self.out_features * self.in_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 fbgemm, bias={self.has_bias}"
