"""Attention over a block-paged KV cache, in plain torch (runs on CPU and CUDA).

The cache of one layer is a flat slot array [num_blocks * block_size, kv_heads, head_dim]; a token at
position p of a sequence lives in slot block_table[p // block_size] * block_size + p % block_size. A step
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
    decode_slots: torch.Tensor | None = None  # [B, Lmax] context slots per decode sequence
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, Lmax] additive: 0 for context, -inf for padding; None: none
    prefills: list[PrefillChunk] = field(default_factory=list)


def paged_attention(
    q: torch.Tensor,  # [T, H, D], rotary applied
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [slots, Hkv, D]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    # index_copy_/index_select, not tensor[index]: several times faster on CPU for these shapes.
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    gqa = q.shape[1] != k.shape[1]
    nd = meta.num_decode_tokens
    if nd and not meta.prefills:  # a decode-only step (the common one): no output buffer to copy into
        return _decode_attention(q, k_cache, v_cache, meta, scale)
    out = torch.empty_like(q)
    if nd:
        out[:nd] = _decode_attention(q[:nd], k_cache, v_cache, meta, scale)
    for chunk in meta.prefills:
        s, n = chunk.token_start, chunk.num_tokens
        qc = q[s : s + n].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        if chunk.context_slots is None:  # fresh prompt: its own keys are the whole context
            kc = k[s : s + n].transpose(0, 1).unsqueeze(0)
            vc = v[s : s + n].transpose(0, 1).unsqueeze(0)
            oc = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            kc = k_cache.index_select(0, chunk.context_slots).transpose(0, 1).unsqueeze(0)  # [1, Hkv, L, D]
            vc = v_cache.index_select(0, chunk.context_slots).transpose(0, 1).unsqueeze(0)
            total = chunk.context_start + n
            q_pos = torch.arange(chunk.context_start, total, device=q.device)
            mask = torch.arange(total, device=q.device)[None, :] <= q_pos[:, None]
            oc = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, scale=scale, enable_gqa=gqa)
        out[s : s + n] = oc.squeeze(0).transpose(0, 1)
    return out


def _decode_attention(q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """One query per sequence against its gathered context: [B, H, D]."""
    batch, length = meta.decode_slots.shape
    num_heads, num_kv_heads, head_dim = q.shape[1], k_cache.shape[1], q.shape[2]
    flat = meta.decode_slots.reshape(-1)
    kd = k_cache.index_select(0, flat).view(batch, length, num_kv_heads, head_dim).transpose(1, 2)
    vd = v_cache.index_select(0, flat).view(batch, length, num_kv_heads, head_dim).transpose(1, 2)
    # Grouped-query attention without repeating K/V: the query heads sharing a KV head become that
    # head's "query positions" (heads are grouped consecutively, as transformers' repeat_kv lays them out).
    qd = q.view(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=scale)
    return od.reshape(batch, num_heads, head_dim)
