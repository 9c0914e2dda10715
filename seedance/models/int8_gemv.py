"""int8 weights in the compiled decode step (compiled_decode.py): inductor's own GEMV over the int8 codes, the
int8 -> float conversion and the scale inside the reduction, so a one-row step streams each weight's int8 bytes
once (half of fp16's) instead of fbgemm's two passes over a padded packed copy.

A one-row step is memory-bound on weights, so the win is bytes: SmolLM2's decoder projections are 106 MB as int8
against 212 MB as fp16. Written as `(x * w.float()).sum(-1) * scale`, inductor does fuse it into one vectorized
reduction, but its AVX2 load of 8 int8 lanes (`Vectorized<int8_t>::loadu(ptr, 8)`) and of a counted int32
vector go through a stack copy (memcpy, then a 32-byte reload: a failed store forward each iteration) and ran
at 0.6 GB/s. So the codes are stored as 32-bit words, read as float32 (whose counted load is a plain `vmovups`),
bit-cast to int32, and the four bytes are taken out by shifts (`(w << 24) >> 24` ... `w >> 24`, sign-extending);
the bytes of word j of a row are the row's elements j, j + K/4, j + K/2, j + 3K/4, so each byte multiplies a
contiguous quarter of x. Measured (all of SmolLM2's decoder projections in one graph, 1 thread, loaded box;
docs/model.md): 19-24 ms of CPU per one-row pass against fbgemm fp16's 40-46; 2 rows 35 vs 55; past that the
GEMV (rows are its outer loop: the weight streams once per row) loses (4 rows 72 vs 63, 8 rows 106 vs 65), so
2+-row graphs call the eager int8 kernel (`Int8Linear`, fbgemm, two passes) as the custom op
`seedance::int8_linear`. `-ffp-contract=fast` for the graph (COMPILE_OPTIONS) lets gcc fuse its multiply-adds
(19 ms against 23 for the pass above).

The codes are the layer's own (unpacked from fbgemm once, when the step is compiled), with its one scale per
output channel, so the result is the float product of the int8 weight (accumulated in float32: no 7-bit
activations), within float rounding of `dequantize() @ x`. The words cost the codes' bytes again beside the packed
copy the prefill and 2+-row steps use (SmolLM2: +101 MiB, 106 MB).
"""

from __future__ import annotations

import torch
from torch import nn

from seedance.models.fp16_linear import by_handle

GEMV_MAX_ROWS = 1  # the one-row graph (its row count is a constant); 2+ rows are a symbol: fbgemm (see above)
COMPILE_OPTIONS = {"cpp.enable_floating_point_contract_flag": "fast"}


def word_layout(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] int8 codes (K a multiple of 4) as [N, K/4] float32-typed words, byte b of word j = element
    b*K/4 + j (little-endian: byte 0 the low one). The float values are never computed with, only bit-cast."""
    n, k = codes.shape
    return codes.to(torch.int8).reshape(n, 4, k // 4).transpose(1, 2).contiguous().view(torch.float32).view(n, k // 4)


def gemv(x: torch.Tensor, words: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [R, K] float32 times the int8 weight `words` stands for, scaled per output channel: [R, N]. Written for
    inductor to fuse (eager it runs, slowly, as the same arithmetic)."""
    rows = x.shape[0]
    k4 = words.shape[1]
    w = words.view(torch.int32)
    xb = x.view(rows, 4, 1, k4)
    acc = xb[:, 0] * ((w << 24) >> 24).to(x.dtype)
    acc = acc + xb[:, 1] * ((w << 16) >> 24).to(x.dtype)
    acc = acc + xb[:, 2] * ((w << 8) >> 24).to(x.dtype)
    acc = acc + xb[:, 3] * (w >> 24).to(x.dtype)
    return acc.sum(-1) * scales


def attach(model: nn.Module) -> int:
    """Give each int8 decoder projection (an `Int8Linear` named *_proj) and the int8 head (the graph ends in the
    logits: compiled_decode) its GEMV words and scales; returns how many. Layers whose input size is not a
    multiple of 32 (8 words a vector) keep fbgemm."""
    count = 0
    for name, layer in model.named_modules():
        if name.endswith(("_proj", "lm_head")) and hasattr(layer, "int8_weight") and layer.in_features % 32 == 0:
            codes, scales, _ = layer.int8_weight()
            layer.gemv_words = word_layout(codes)
            layer.gemv_scales = scales.float().contiguous()
            count += 1
    return count


def register_compile_op() -> None:
    """Define `seedance::int8_linear` once: the layer's eager forward (fbgemm), found by its handle
    (fp16_linear.set_handle), for the graphs whose row count the GEMV does not take."""
    if hasattr(torch.ops.seedance, "int8_linear"):
        return

    @torch.library.custom_op("seedance::int8_linear", mutates_args=())
    def int8_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
        return by_handle(handle)(x)

    @int8_linear.register_fake
    def _(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
        return x.new_empty(x.shape[0], out_features)


def traced_forward(layer: nn.Module, x2: torch.Tensor) -> torch.Tensor:
    """An int8 layer's forward under torch.compile, x2 [R, K] float32: the GEMV where R is a constant the GEMV
    wins at, else the eager kernel through the custom op (bias included either way)."""
    rows = x2.shape[0]
    words = getattr(layer, "gemv_words", None)
    if words is None or not isinstance(rows, int) or rows > GEMV_MAX_ROWS:
        return torch.ops.seedance.int8_linear(x2, layer.handle, layer.out_features)
    y = gemv(x2.contiguous(), words, layer.gemv_scales)
    return y if layer.bias is None else y + layer.bias
