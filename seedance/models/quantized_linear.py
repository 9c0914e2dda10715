"""Weight-only quantized linear layers over torch's CPU kernels, so a Q4/Q8 model stays a fraction of float32.

Two layouts, both what `torch.ops.aten` computes with directly (no dequantized copy of the weight is kept):

- int8: codes [N, K] int8 and one scale per output channel; `_weight_int8pack_mm(x, w, scales)`
  is `x @ (w * scales[:, None]).T`.
- int4: codes 0..15 in groups of G along K, one (scale, zero) pair per group and channel; the weight is
  `(q - 8) * scale + zero`. `_convert_weight_to_int4pack_for_cpu` packs the codes ([N, K/2] uint8) and
  `_weight_int4pack_mm_for_cpu(x, packed, G, scale_and_zeros[K/G, N, 2])` multiplies. N must be a multiple
  of 16 and K of G. GGUF's Q4_0 / Q4_1 / Q4_K blocks are exactly this with G = 32 (gguf_loader.py).

The activation dtype must equal the scales' dtype: `module.to(dtype)` converts the scales (the codes are integer
buffers, which `.to(dtype)` leaves alone).

Which int8 layer a model gets is `int8_linear`'s choice: fbgemm's dynamic int8 GEMM (int8_linear.py), 2-3x faster
than float32 on an AVX2 CPU, wherever torch has it; these weight-only kernels otherwise. Which 4-bit GGUF blocks
stay int4 is `int4_kernel_preferred`'s: only where ATen runs its AVX-512 kernels (docs/model.md, "Formats").
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from seedance.models import int8_linear as fbgemm
from seedance.models.fp16_linear import Fp16Linear
from seedance.models.int8_linear import Int8Linear

INT4_GROUP_SIZES = (32, 64, 128, 256)
DEQUANTIZE_ABOVE_ROWS = 8  # more rows than this (prefill chunks) dequantize the weight per call: see forward()
# ...except int4 with bfloat16 activations on AVX-512, whose kernel is fast: all of SmolLM2's projections, 1 thread,
# loaded box, CPU ms, kernel vs dequantize + bf16 GEMM: 133 vs 502 at 32 rows, 235 vs 483 at 64, 511 vs 656 at
# 128, 959 vs 850 at 256 (decode steps of 32-64 streams stay on the kernel; docs/model.md, "Formats")
AVX512_BF16_INT4_DEQUANTIZE_ABOVE_ROWS = 192


@cache
def _cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def dequantize_above_rows(bits: int, dtype: torch.dtype, capability: str | None = None) -> int:
    """Past how many rows a QuantizedLinear call dequantizes its weight for the float GEMM instead of running
    torch's weight-only kernel (measured per kernel and CPU: see the constants above)."""
    if bits == 4 and dtype == torch.bfloat16 and (capability or _cpu_capability()) == "AVX512":
        return AVX512_BF16_INT4_DEQUANTIZE_ABOVE_ROWS
    return DEQUANTIZE_ABOVE_ROWS


class QuantizedLinear(nn.Module):
    """A bias-optional linear whose weight is int8 per channel or int4 groupwise. Buffers are not persistent:
    the model's state_dict (load_hf_weights' bookkeeping) lists only float parameters."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 0,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, not {bits}")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone(), persistent=False)

    # ---- constructors ----------------------------------------------------------------------------
    @classmethod
    def from_int8(cls, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> QuantizedLinear:
        n, k = codes.shape
        m = cls(k, n, 8, bias=bias)
        m.register_buffer("weight_int8", codes.to(torch.int8).contiguous(), persistent=False)
        m.register_buffer("scales", scales.reshape(n).float().contiguous(), persistent=False)
        return m

    @classmethod
    def from_int4(cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                  bias: torch.Tensor | None = None) -> QuantizedLinear:
        """codes [N, K] in 0..15; scale, zero [N, K / group_size]: w = (q - 8) * scale + zero."""
        n, k = codes.shape
        if not int4_shape_ok(n, k, group_size):
            raise ValueError(f"int4 needs N % 16 == 0 and K % group == 0 (N={n}, K={k}, group={group_size})")
        m = cls(k, n, 4, group_size, bias=bias)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        sz = torch.stack([scale.float(), zero.float()], dim=-1).transpose(0, 1).contiguous()  # [K/G, N, 2]
        m.register_buffer("weight_int4", packed, persistent=False)
        m.register_buffer("scale_and_zeros", sz, persistent=False)
        return m

    @classmethod
    def from_float(cls, weight: torch.Tensor, bits: int, group_size: int = 32,
                   bias: torch.Tensor | None = None) -> QuantizedLinear:
        """Quantize a float weight [N, K]: int8 symmetric per channel, or int4 asymmetric per group."""
        if bits == 8:
            return cls.from_int8(*quantize_int8(weight), bias=bias)
        return cls.from_int4(*quantize_int4(weight, group_size), group_size, bias=bias)

    # ---- compute ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] > self.kernel_max_rows(x2.dtype):
            # Prefill: torch's weight-only CPU kernels are slow past a few rows (measured on AVX2: 25-35x a float
            # matmul at 37 rows); dequantizing the weight for this call and using the float GEMM is cheaper.
            return F.linear(x, self.dequantize(x.dtype), self.bias)
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight_int4, self.group_size, self.scale_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def kernel_max_rows(self, dtype: torch.dtype) -> int | float:
        """dequantize_above_rows for this layer and activation dtype (inf: never), looked up once per dtype in
        eager code so that a compiled graph reads a plain attribute (the CPU capability query breaks tracing)."""
        if torch.compiler.is_compiling():
            return self.__dict__["_rows_by_dtype"][dtype]
        table = self.__dict__.setdefault("_rows_by_dtype", {})
        if dtype not in table:
            ok = self.bits == 8 or int4_unpackable(self.out_features)
            table[dtype] = dequantize_above_rows(self.bits, dtype) if ok else float("inf")
        return table[dtype]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [N, K] these buffers stand for."""
        if self.bits == 8:
            return self.weight_int8.to(dtype) * self.scales.to(dtype)[:, None]
        n, k, g = self.out_features, self.in_features, self.group_size
        codes = unpack_int4(self.weight_int4, n, k)
        if codes is None:  # a layout not read here (unpack_int4): the kernel's own product with the identity
            eye = torch.eye(k, dtype=self.scale_and_zeros.dtype)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                eye, self.weight_int4, g, self.scale_and_zeros).to(dtype).T.contiguous()
        codes = codes.to(dtype).sub_(8).view(n, k // g, g)
        sz = self.scale_and_zeros.to(dtype)  # [K/G, N, 2]
        return (codes * sz[..., 0].T.unsqueeze(-1) + sz[..., 1].T.unsqueeze(-1)).view(n, k)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{group}"


class QuantizedEmbedding(nn.Module):
    """Token embedding rows kept as int8 with one scale per row; with tied weights the same buffers are the
    output head (`as_linear`), so a quantized vocabulary is stored once."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = codes.shape
        self.register_buffer("weight_int8", codes.to(torch.int8).contiguous(), persistent=False)
        self.register_buffer("scales", scales.reshape(-1).float().contiguous(), persistent=False)

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> QuantizedEmbedding:
        return cls(*quantize_int8(weight))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight_int8[ids].to(self.scales.dtype) * self.scales[ids].unsqueeze(-1)

    def as_linear(self) -> nn.Module:
        """The tied output head on the same int8 rows: fbgemm packs its own copy (int8_linear); the weight-only
        kernel shares these buffers."""
        if fbgemm.available():
            return Int8Linear(self.weight_int8, self.scales)
        head = QuantizedLinear(self.embedding_dim, self.num_embeddings, 8)
        head.weight_int8, head.scales = self.weight_int8, self.scales  # shared, not copied
        return head

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


def int8_linear(codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    """An int8 per-channel projection on the fastest kernel this torch has: fbgemm's where available, else the
    weight-only `_weight_int8pack_mm` (QuantizedLinear)."""
    if fbgemm.available():
        return Int8Linear(codes, scales, bias)
    return QuantizedLinear.from_int8(codes, scales, bias)


def int4_kernel_preferred(dtype: str = "bfloat16") -> bool:
    """Whether 4-bit GGUF blocks stay int4 for a model served in `dtype`: where ATen's int4 weight-only kernel
    runs its AVX-512 build (its CPU capability, as it dispatches) with bfloat16 activations, or where there is no
    fbgemm. Measured on AVX-512 (docs/model.md, "Formats"): with bfloat16 activations it is the fastest kernel at
    1-8 rows, with float32 ones 17x slower than fbgemm's fp16 (so `--dtype float32` takes fp16 there); on AVX2
    ~10x slower than fbgemm's int8 whatever the dtype (there the file loads as fp16)."""
    if not fbgemm.available():
        return True
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and dtype == "bfloat16"


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, QuantizedLinear | QuantizedEmbedding | Int8Linear | Fp16Linear)


def fp16_head(embedding: nn.Embedding) -> Fp16Linear:
    """`--quantize fp16` on tied weights: the head as an fp16 copy of the float embedding, which lookups keep."""
    return Fp16Linear(embedding.weight.data)


def unpack_int4(packed: torch.Tensor, n: int, k: int) -> torch.Tensor | None:
    """The codes [N, K] (uint8, 0..15) inside `_convert_weight_to_int4pack_for_cpu`'s [N, K/2] output, or None
    where this CPU's layout is not one known here (the caller multiplies by the identity instead). The layout
    is the CPU's: ATen packs for the build it dispatches to (`int4_pack_block`)."""
    if not int4_unpackable(n):
        return None
    return (_unpack_int4_avx512 if int4_pack_block() == 64 else _unpack_int4_avx2)(packed, n, k)


def int4_unpackable(n: int) -> bool:
    """Whether unpack_int4 reads an N-row packed weight on this CPU (AVX2's layout: N a multiple of 32)."""
    block = int4_pack_block()
    return block == 64 or (block == 32 and n % 32 == 0)


def _unpack_int4_avx2(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """AVX2 / default build (torch 2.13), N a multiple of 32: blocks of 32 rows stored [K/2, 2, 16], rows 0-15
    in the low nibbles, 16-31 in the high ones."""
    buf = packed.view(n // 32, k // 2, 2, 16)
    lo = (buf & 15).permute(0, 3, 1, 2).reshape(n // 32, 16, k)
    hi = (buf >> 4).permute(0, 3, 1, 2).reshape(n // 32, 16, k)
    return torch.cat([lo, hi], dim=1).view(n, k)


def _unpack_int4_avx512(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """AVX-512 build (torch 2.13): blocks of 64 rows stored [K, 32] bytes, rows 0-31 in the low nibbles, 32-63 in
    the high ones; a last block of 16-48 rows stores adjacent row pairs [K, rows/2] (low nibble the even row)."""
    full = n // 64
    buf = packed[:full * 64].reshape(full, k, 32)
    parts = [torch.cat([(buf & 15).permute(0, 2, 1), (buf >> 4).permute(0, 2, 1)], dim=1).reshape(full * 64, k)]
    tail = n - full * 64
    if tail:
        rest = packed[full * 64:].reshape(k, tail // 2)
        parts.append(torch.stack([(rest & 15).T, (rest >> 4).T], dim=1).reshape(tail, k))
    return torch.cat(parts)


@cache
def int4_pack_block() -> int:
    """The row block of this CPU's int4 packing: 64 where ATen runs its AVX-512 kernels, 32 on AVX2 (what
    `ATEN_CPU_CAPABILITY` selects), 0 if a probe packs into neither. Found by packing a probe once, so a torch
    that changes its layout makes dequantize take the identity product rather than read garbage."""
    codes = torch.randint(0, 16, (128, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    for block, unpack in ((64, _unpack_int4_avx512), (32, _unpack_int4_avx2)):
        try:
            if torch.equal(unpack(packed, 128, 64).to(torch.int32), codes):
                return block
        except RuntimeError:  # a shape this layout cannot have
            continue
    return 0


def int4_shape_ok(n: int, k: int, group_size: int) -> bool:
    return n % 16 == 0 and group_size in INT4_GROUP_SIZES and k % group_size == 0


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: codes [N, K] and scales [N] (absmax / 127)."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    codes = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return codes, scales


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of K (min/max): codes 0..15 [N, K], scale and zero [N, K/G]."""
    n, k = weight.shape
    w = weight.float().reshape(n, k // group_size, group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    codes = torch.round((w - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.int32).reshape(n, k)
    return codes, scale, lo + 8.0 * scale  # zero: the value of code 8


def quantize_linears(net: nn.Module, bits: int, group_size: int = 32) -> int:
    """Swap every nn.Linear in net for a quantized one (`--quantize int8|int4|fp16` on a float model: bits 8, 4,
    16); a layer int4 cannot take (N % 16, K % group) falls back to int8. Returns how many were swapped."""
    count = 0
    for name, module in list(net.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        n, k = module.weight.shape
        if bits == 16:
            q = Fp16Linear(module.weight.data, module.bias)
        elif bits == 4 and int4_shape_ok(n, k, group_size):
            q = QuantizedLinear.from_float(module.weight.data, 4, group_size, module.bias)
        else:
            q = int8_linear(*quantize_int8(module.weight.data), module.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, q)
        count += 1
    return count


def quantize_model(net: nn.Module, bits: int, group_size: int = 32) -> None:
    """`--quantize`: every projection, and a tied embedding (int8 rows, shared with the output head; fp16: the
    embedding stays float and the head is its fp16 copy)."""
    if bits == 16:
        quantize_linears(net, 16)
        if getattr(net, "lm_head", True) is None:
            net.lm_head = fp16_head(net.embed_tokens)
        return
    if getattr(net, "lm_head", True) is None and isinstance(net.embed_tokens, nn.Embedding):
        net.embed_tokens = QuantizedEmbedding.from_float(net.embed_tokens.weight.data)
        quantize_linears(net, bits, group_size)
        net.lm_head = net.embed_tokens.as_linear()
        return
    quantize_linears(net, bits, group_size)
