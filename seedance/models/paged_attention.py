"""Attention over a block-paged KV cache, in plain torch (runs on CPU and CUDA).

The cache of one layer is [2, kv_heads, num_blocks * block_size, head_dim]: keys then values, each head's slots
in a row of its own. A token at position p of a sequence lives in slot block_table[p // block_size] * block_size
+ p % block_size of every head. One index_copy_ stores a step's keys and values; one index_select of whole blocks
gathers a batch's contexts already laid out as [2, kv_heads * batch, length, head_dim], which is what a batched
matmul takes: from BMM_MIN_BATCH sequences a CPU step's decode attention is two bmm calls over the gathered
(block-padded) contexts and a float32 softmax between them, where torch's SDPA took up to ~1.5x as long (a
handful of queries per KV head against ~100-400 keys: its flash kernel is built for long queries); below that,
SDPA over the same gathered contexts. A step mixes decode tokens
(one query per sequence, batched) and prefill chunks (many queries of one sequence, causal against its cached
prefix and itself, through SDPA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillChunk:
    token_start: int  # offset of the chunk's first token in the flattened step batch
    num_tokens: int
    context_start: int  # tokens of this sequence already in the cache before the chunk
    context_slots: torch.Tensor | None  # slots of positions [0, context_start + num_tokens); None if fresh


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot for every token of the step
    num_decode_tokens: int = 0  # the first num_decode_tokens tokens are single-query decodes
    decode_slots: torch.Tensor | None = None  # [B, Lmax] context slots per decode sequence (or blocks: below)
    # additive [B, L] (or [B, 1, 1, L]) over the gathered length: 0 for context, -inf for padding; None: none
    decode_mask: torch.Tensor | None = None
    prefills: list[PrefillChunk] = field(default_factory=list)
    # decode attention as two batched matmuls (the eager CPU path from BMM_MIN_BATCH sequences) instead of SDPA
    decode_bmm: bool = False
    # > 0: decode_slots holds each sequence's block ids [B, blocks] and the gather copies whole blocks of this many
    # slots (one contiguous run per head instead of one row per slot): the gathered length is blocks x block size,
    # and decode_mask covers it
    decode_block_size: int = 0


# From this many decode sequences a CPU step's decode attention is two batched matmuls rather than SDPA: SDPA's
# flash kernel wins below (B = 1-4: ~35-220 against 64-280 us a layer), the matmuls from ~16 (B = 32-64: 5-35 %
# less; docs/benchmarks.md, session 16). The compiled graphs keep SDPA (one path whatever their batch).
BMM_MIN_BATCH = 16


def kv_cache_shape(slots: int, kv_heads: int, head_dim: int) -> tuple[int, int, int, int]:
    return (2, kv_heads, slots, head_dim)


def cache_slots(kv_cache: torch.Tensor) -> int:
    """How many token slots one layer's cache holds."""
    return kv_cache.shape[2]


def paged_attention(
    q: torch.Tensor,  # [T, H, D], rotary applied
    kv: torch.Tensor,  # [T, 2, Hkv, D]: the step's keys (rotary applied) and values
    kv_cache: torch.Tensor,  # [2, Hkv, slots, D]
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    # index_copy_/index_select, not tensor[index]: several times faster on CPU for these shapes.
    kv_cache.index_copy_(2, meta.slot_mapping, kv.permute(1, 2, 0, 3))
    gqa = q.shape[1] != kv.shape[2]
    nd = meta.num_decode_tokens
    if nd and not meta.prefills:  # a decode-only step (the common one): no output buffer to copy into
        return _decode_attention(q, kv_cache, meta, scale)
    out = torch.empty_like(q)
    if nd:
        out[:nd] = _decode_attention(q[:nd], kv_cache, meta, scale)
    for chunk in meta.prefills:
        s, n = chunk.token_start, chunk.num_tokens
        qc = q[s : s + n].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        if chunk.context_slots is None:  # fresh prompt: its own keys are the whole context
            kc = kv[s : s + n, 0].transpose(0, 1).unsqueeze(0)
            vc = kv[s : s + n, 1].transpose(0, 1).unsqueeze(0)
            oc = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            ctx = kv_cache.index_select(2, chunk.context_slots)  # [2, Hkv, L, D]
            kc, vc = ctx[0].unsqueeze(0), ctx[1].unsqueeze(0)  # [1, Hkv, L, D]
            total = chunk.context_start + n
            q_pos = torch.arange(chunk.context_start, total, device=q.device)
            mask = torch.arange(total, device=q.device)[None, :] <= q_pos[:, None]
            oc = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, scale=scale, enable_gqa=gqa)
        out[s : s + n] = oc.squeeze(0).transpose(0, 1)
    return out


def _decode_attention(q, kv_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """One query per sequence against its gathered context: [B, H, D].

    Grouped-query attention without repeating K/V: the G query heads sharing a KV head are that head's G query
    rows (heads grouped consecutively, as transformers' repeat_kv lays them out)."""
    batch = meta.decode_slots.shape[0]
    num_heads, num_kv_heads, head_dim = q.shape[1], kv_cache.shape[1], q.shape[2]
    group = num_heads // num_kv_heads
    index = meta.decode_slots.reshape(-1)
    if meta.decode_block_size:  # whole blocks: [2, Hkv, B * blocks, block_size * D]
        bs = meta.decode_block_size
        ctx = kv_cache.view(2, num_kv_heads, -1, bs * head_dim).index_select(2, index)
    else:  # one slot each (the compiled graphs' table): [2, Hkv, B * L, D]
        ctx = kv_cache.index_select(2, index)
    ctx = ctx.view(2, num_kv_heads * batch, -1, head_dim)  # [2, Hkv * B, L, D]: a batch of contiguous contexts
    length = ctx.shape[2]
    if meta.decode_bmm:
        return _decode_bmm(q, ctx, meta.decode_mask, scale, batch, num_kv_heads, group)
    kd = ctx[0].view(num_kv_heads, batch, length, head_dim).transpose(0, 1)  # [B, Hkv, L, D] views
    vd = ctx[1].view(num_kv_heads, batch, length, head_dim).transpose(0, 1)
    qd = q.reshape(batch, num_kv_heads, group, head_dim)
    mask = meta.decode_mask
    if mask is not None:
        mask = mask.reshape(batch, 1, 1, length).to(q.dtype)
    od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scale)
    return od.reshape(batch, num_heads, head_dim)


def _decode_bmm(q, ctx, decode_mask, scale: float, batch: int, num_kv_heads: int, group: int) -> torch.Tensor:
    """Decode attention as transformers' eager attention computes it: each (KV head, sequence) one [G, D] x
    [D, L] product of a batched matmul, the scores in the cache's dtype (float32 accumulation inside), the
    softmax in float32, its weights in the cache's dtype against V."""
    length, head_dim = ctx.shape[2], ctx.shape[3]
    qh = q.view(batch, num_kv_heads, group, head_dim).transpose(0, 1).reshape(num_kv_heads * batch, group, head_dim)
    scores = torch.bmm((qh * scale).to(ctx.dtype), ctx[0].transpose(1, 2)).float()  # [Hkv * B, G, L]
    if decode_mask is not None:
        mask = decode_mask.reshape(1, batch, 1, length).float()
        scores = scores.view(num_kv_heads, batch, group, length).add_(mask).view(-1, group, length)
    weights = torch.softmax(scores, dim=-1).to(ctx.dtype)
    out = torch.bmm(weights, ctx[1])  # [Hkv * B, G, D]
    return out.view(num_kv_heads, batch, group, head_dim).transpose(0, 1).reshape(batch, num_kv_heads * group, head_dim)
