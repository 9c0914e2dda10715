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
from seedance.models.paged_attention import AttentionMetadata, PrefillChunk


@torch.inference_mode()
def mean_pooled_embedding(model: LlamaForCausalLM, token_ids: list[int]) -> torch.Tensor:
    """[hidden_size] float32, unit L2 norm: mean over positions of norm(last layer output)."""
    if not token_ids:
        raise ValueError("an embedding needs at least one token")
    device = model.norm.weight.device
    n = len(token_ids)
    ids = torch.tensor(token_ids, dtype=torch.long, device=device)
    positions = torch.arange(n, device=device)
    cfg = model.config
    kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
    shape = (n, kv_heads, head_dim_of(cfg))
    dtype = model.norm.weight.dtype
    scratch = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
               for _ in model.layers]
    meta = AttentionMetadata(slot_mapping=positions, prefills=[PrefillChunk(0, n, 0, None)])
    hidden = model.norm(model(ids, positions, scratch, meta))
    return F.normalize(hidden.float().mean(dim=0), dim=0).cpu()
