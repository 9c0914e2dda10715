"""Attention over a block-paged KV cache, in plain torch (runs on CPU and CUDA).

The cache of one layer is a flat slot array [num_blocks * block_size, 2, kv_heads, head_dim] (a slot's key, then
its value: one copy stores a step's keys and values, one gather reads a context's); a token at position p of a
sequence lives in slot block_table[p // block_size] * block_size + p % block_size. A step
mixes decode tokens (one query per sequence, batched into one SDPA call over gathered context) and
prefill chunks (many queries of one sequence, causal against its cached prefix and itself).
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
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, Lmax] additive: 0 for context, -inf for padding; None: none
    prefills: list[PrefillChunk] = field(default_factory=list)
    # > 0: decode_slots holds each sequence's block ids [B, blocks] and the gather copies whole blocks of this many
    # slots (one contiguous run each instead of one row per slot), then keeps the first decode_length (Lmax)
    decode_block_size: int = 0
    decode_length: int = 0


def kv_cache_shape(slots: int, kv_heads: int, head_dim: int) -> tuple[int, int, int, int]:
    return (slots, 2, kv_heads, head_dim)


def paged_attention(
    q: torch.Tensor,  # [T, H, D], rotary applied
    kv: torch.Tensor,  # [T, 2, Hkv, D]: the step's keys (rotary applied) and values
    kv_cache: torch.Tensor,  # [slots, 2, Hkv, D]
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    # index_copy_/index_select, not tensor[index]: several times faster on CPU for these shapes.
    kv_cache.index_copy_(0, meta.slot_mapping, kv)
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
            ctx = kv_cache.index_select(0, chunk.context_slots)  # [L, 2, Hkv, D]
            kc = ctx[:, 0].transpose(0, 1).unsqueeze(0)  # [1, Hkv, L, D]
            vc = ctx[:, 1].transpose(0, 1).unsqueeze(0)
            total = chunk.context_start + n
            q_pos = torch.arange(chunk.context_start, total, device=q.device)
            mask = torch.arange(total, device=q.device)[None, :] <= q_pos[:, None]
            oc = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, scale=scale, enable_gqa=gqa)
        out[s : s + n] = oc.squeeze(0).transpose(0, 1)
    return out


def _decode_attention(q, kv_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """One query per sequence against its gathered context: [B, H, D]."""
    batch, length = meta.decode_slots.shape
    num_heads, num_kv_heads, head_dim = q.shape[1], kv_cache.shape[2], q.shape[2]
    if meta.decode_block_size:
        bs, length = meta.decode_block_size, meta.decode_length
        blocks = kv_cache.view(-1, bs, 2, num_kv_heads, head_dim).index_select(0, meta.decode_slots.reshape(-1))
        ctx = blocks.view(batch, -1, 2, num_kv_heads, head_dim)[:, :length]
    else:
        ctx = kv_cache.index_select(0, meta.decode_slots.reshape(-1)).view(batch, length, 2, num_kv_heads, head_dim)
    kd, vd = ctx[:, :, 0].transpose(1, 2), ctx[:, :, 1].transpose(1, 2)  # [B, Hkv, L, D] views
    # Grouped-query attention without repeating K/V: the query heads sharing a KV head become that
    # head's "query positions" (heads are grouped consecutively, as transformers' repeat_kv lays them out).
    qd = q.reshape(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=scale)
    return od.reshape(batch, num_heads, head_dim)
