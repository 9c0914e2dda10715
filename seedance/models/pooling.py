"""Sentence embeddings from a causal LM: the mean of the last hidden state over the input's tokens,
L2-normalised — what sentence-transformers' mean pooling computes on transformers' `last_hidden_state`
(after the final norm). The Llama-family models served here have no pooling head of their own.

The forward runs on scratch K/V buffers sized to the input, never the engine's paged cache, so an embedding
cannot disturb a running generation's KV or the prefix cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seedance.models.llama import LlamaForCausalLM, head_dim_of
from seedance.models.paged_attention import AttentionMetadata, PrefillChunk, kv_cache_shape


@torch.inference_mode()
def mean_pooled_embeddings(model: LlamaForCausalLM, inputs: list[list[int]]) -> list[torch.Tensor]:
    """One [hidden_size] float32 unit-norm vector per token list: mean over positions of norm(last layer output).
    The inputs go through one forward, as separate fresh prefill chunks (each attends to itself only)."""
    if not inputs or not all(inputs):
        raise ValueError("an embedding needs at least one token")
    device = model.norm.weight.device
    lengths = [len(ids) for ids in inputs]
    total = sum(lengths)
    ids = torch.tensor([t for one in inputs for t in one], dtype=torch.long, device=device)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])
    cfg = model.config
    kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
    shape = kv_cache_shape(total, kv_heads, head_dim_of(cfg))
    dtype = model.norm.weight.dtype
    scratch = [torch.empty(shape, dtype=dtype, device=device) for _ in model.layers]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    meta = AttentionMetadata(slot_mapping=torch.arange(total, device=device),
                             prefills=[PrefillChunk(s, n, 0, None) for s, n in zip(starts, lengths, strict=True)])
    hidden = model.norm(model(ids, positions, scratch, meta)).float()
    return [F.normalize(part.mean(dim=0), dim=0).cpu() for part in torch.split(hidden, lengths)]


def mean_pooled_embedding(model: LlamaForCausalLM, token_ids: list[int]) -> torch.Tensor:
    """One input's vector (the oracle tests' unit)."""
    return mean_pooled_embeddings(model, [token_ids])[0]
