"""bfloat16 projections on oneDNN with the weight reordered once, for CPUs with AMX or AVX512_BF16.

`F.linear` on bfloat16 CPU tensors calls oneDNN, which reorders the plain [N, K] weight into its blocked AMX
layout on every call. `torch.ops.mkldnn._reorder_linear_weight` does that once (what inductor's freezing does
for bf16 linears, and vLLM's CPU backend with its own oneDNN handles) and `_linear_pointwise` multiplies by the
reordered weight: the same products and float32 accumulation, bit-identical results here, 1.25-1.55x faster over
all of SmolLM2's decoder projections at 1-64 rows on an AMX CPU (1 thread; `scripts/onednn_linear_bench.py`,
docs/benchmarks.md "SmolLM2 served on the AMX CPU"), 1.1-1.7x on a Zen 5 CPU with AVX512_BF16 and no AMX.

On such a CPU torch's int4 weight-only kernel is the faster one only at a few rows (all of SmolLM2's decoder
projections, weights streamed from memory, 1 thread, ms per pass, int4 / reordered bf16: 10.4 / 28.6 at one row,
17.0 / 26.3 at 4, 27.4 / 27.5 at 6, 31.4 / 26.6 at 8, 118.2 / 30.7 at 32; Zen 5: 7.3 / 9.6 at 4, 12.9 / 11.7
at 8, 44.6 / 23.0 at 32, 88.4 / 38.1 at 64), so an int4 projection keeps a bfloat16
copy of its weight, reordered, for calls of more rows (`RowSplitLinear`): 2 bytes per weight on top of int4's
~0.6, for int4's speed at a few streams and bf16's past them (under `auto` on AMX CPUs only: int4_copies).

Which mode a model gets is `EngineConfig.onednn_linear` ("auto": on where the CPU has AMX-BF16 or AVX512_BF16
(precision.BF16_CPU_FLAGS) and the model runs
in bfloat16 on the CPU, with at least AUTO_MIN_WEIGHTS weights; "on", "off"). A compiled decode step keeps an
int4 model's copy and puts float projections back on their plain weights (compiled_decode.py).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from seedance.models.fp16_linear import by_handle
from seedance.models.int8_linear import Int8Linear
from seedance.models.precision import BF16_CPU_FLAGS, cpu_flags
from seedance.models.quantized_linear import QuantizedLinear
from seedance.models.registry import ONEDNN_LINEAR_MODES

REORDER_BATCH_HINT = 64  # the row count oneDNN picks the reordered layout for (measured flat over 1-128 rows)
# `auto` only for models of at least this many weights: the built-in 5.5M-weight model's one-stream step was ~10 %
# slower with it (7.2-7.5 vs 7.8-8.5 ms, interleaved, AMX box), where oneDNN's per-call cost outweighs the GEMMs
AUTO_MIN_WEIGHTS = 32_000_000
INT4_ABOVE_ROWS = 6  # past this many rows an int4 projection runs on its bf16 copy (the crossover, AMX: below)


@cache
def available() -> bool:
    """Whether this torch has the ops (oneDNN built in: x86 builds do)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


def enabled(mode: str, dtype: torch.dtype, device: str, flags: frozenset[str] | None = None,
            weights: int | None = None) -> bool:
    """Whether a model in this dtype on this device (of this many weights, for `auto`) takes the reordered
    projections under `mode`."""
    if mode not in ONEDNN_LINEAR_MODES:
        raise ValueError(f"onednn_linear must be one of {', '.join(ONEDNN_LINEAR_MODES)}, not {mode!r}")
    if mode == "off" or dtype != torch.bfloat16 or torch.device(device).type != "cpu" or not available():
        return False
    if mode == "on":
        return True
    big = weights is None or weights >= AUTO_MIN_WEIGHTS
    return big and bool(BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags))


def int4_copies(mode: str, flags: frozenset[str] | None = None) -> bool:
    """Whether an int4 model (enabled() being true) also gets its bfloat16 copies for steps of more rows
    (RowSplitLinear). The reordered float projections are the same products as F.linear; a copy is not: it rounds
    the dequantized weights to bfloat16, which the int4 kernel never does. `auto` keeps the copies to AMX CPUs, where
    the greedy answers were measured to stay the kernel's (5 / 8 against float32, "What is the capital of France?"
    right, docs/benchmarks.md session 13); on a Zen 5 CPU with AVX512_BF16 the copy's rounding broke that answer's
    near tie the other way in a served single request (session 16), so there the int4 kernel runs at every row
    count. "on" gives the copies everywhere."""
    return mode == "on" or "amx_bf16" in (cpu_flags() if flags is None else flags)


class PackedLinear(nn.Module):
    """y = x W^T + b with a bfloat16 W held in oneDNN's reordered layout (not a parameter: `.to()` leaves it,
    CPU only). `counted`: whether loader.model_weights counts it (False for a RowSplitLinear's copy, whose
    weights its int4 twin already counts)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, counted: bool = True) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.counted = counted
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous(),
                                                              REORDER_BATCH_HINT)
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16).contiguous()
        self.handle: int | None = None  # fp16_linear.set_handle's, when a compiled decode step calls it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.bfloat16:
            x2 = x2.to(torch.bfloat16)
        if torch.compiler.is_compiling():  # traced (compiled_decode.py): the handle is a constant of the graph
            y = torch.ops.seedance.packed_linear(x2, self.handle, self.out_features)
        else:
            y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, "none", [], "")
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The plain [N, K] weight (reordered back)."""
        return self.packed.to_dense().to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 oneDNN reordered"


def register_compile_op() -> None:
    """Define `seedance::packed_linear` once (on first use: only a compiled decode step needs it). Inductor
    cannot take the reordered weight (an opaque oneDNN tensor) as a graph constant, so the graph calls the layer
    by handle, as it does fbgemm's packed ones (fp16_linear.py)."""
    if hasattr(torch.ops.seedance, "packed_linear"):
        return

    @torch.library.custom_op("seedance::packed_linear", mutates_args=())
    def packed_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
        layer = by_handle(handle)
        return torch.ops.mkldnn._linear_pointwise(x, layer.packed, layer.bias, "none", [], "")

    @packed_linear.register_fake
    def _(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
        return x.new_empty(x.shape[0], out_features)


class RowSplitLinear(nn.Module):
    """A quantized projection (int4, or a quantized model's int8 head) that calls its own kernel up to
    `above_rows` rows and its bf16 copy past them."""

    def __init__(self, small: nn.Module, above_rows: int = INT4_ABOVE_ROWS) -> None:
        super().__init__()
        self.in_features, self.out_features = small.in_features, small.out_features
        self.small, self.above_rows = small, above_rows
        self.large = PackedLinear(small.dequantize(torch.float32), getattr(small, "bias", None), counted=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        return self.large(x) if rows > self.above_rows else self.small(x)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.small.dequantize(dtype)

    def extra_repr(self) -> str:
        return f"int4 up to {self.above_rows} rows, bf16 oneDNN past them"


def _splits(module: nn.Module, name: str, int4_model: bool) -> bool:
    """An int4 projection, or an int4 model's quantized head."""
    if isinstance(module, QuantizedLinear) and module.bits == 4:
        return True
    return int4_model and name == "lm_head" and isinstance(module, QuantizedLinear | Int8Linear)


def attach(net: nn.Module, int4_copies: bool = True) -> int:
    """Swap, in place, a bfloat16 model's float projections for PackedLinear and, with int4_copies, its int4 ones
    for RowSplitLinear (an int4 model's int8 head too); a tied float head becomes a PackedLinear copy of the
    embedding (the lookups keep the embedding). Returns how many were swapped. A model whose projections are all
    int8 / fp16 (fbgemm, float32 activations: not this mode's dtype) is left alone."""
    int4 = int4_copies and any(isinstance(m, QuantizedLinear) and m.bits == 4 for m in net.modules())
    count = 0
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.Linear) and module.weight.dtype == torch.bfloat16:
            new: nn.Module = PackedLinear(module.weight, module.bias)
        elif int4 and _splits(module, name, int4):
            new = RowSplitLinear(module)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, new)
        count += 1
    embed = getattr(net, "embed_tokens", None)
    tied = getattr(net, "lm_head", True) is None
    if tied and isinstance(embed, nn.Embedding) and embed.weight.dtype == torch.bfloat16:
        net.lm_head = PackedLinear(embed.weight, counted=False)
        count += 1
    return count
