"""The fused per-layer math (one RoPE over query and key heads, fused RMSNorm) against transformers' own
functions: RoPE bit for bit, RMSNorm to float32 rounding, in float32 and bfloat16."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from seedance.models.llama import RMSNorm, apply_rope, apply_rope_, signed_sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_over_query_and_key_heads_equals_transformers(dtype):
    torch.manual_seed(0)
    t, heads, kv_heads, dim = 7, 9, 3, 64
    q, k = torch.randn(t, heads, dim, dtype=dtype), torch.randn(t, kv_heads, dim, dtype=dtype)
    angles = torch.randn(t, dim // 2)
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(dtype), torch.cat([angles.sin()] * 2, -1).to(dtype)
    # transformers: [batch, heads, seq, dim] with cos/sin [batch, seq, dim]
    ref_q, ref_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    ours = apply_rope(torch.cat([q, k], dim=1), cos.unsqueeze(1), signed_sin(sin).unsqueeze(1))
    assert torch.equal(ours[:, :heads], ref_q[0].transpose(0, 1))
    assert torch.equal(ours[:, heads:], ref_k[0].transpose(0, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_transformers(dtype):
    torch.manual_seed(0)
    x = torch.randn(5, 96, dtype=dtype) * 3
    ours, ref = RMSNorm(96, 1e-5), LlamaRMSNorm(96, eps=1e-5)
    with torch.no_grad():
        weight = torch.randn(96)
        ours.weight.copy_(weight)
        ref.weight.copy_(weight)
    ours, ref = ours.to(dtype), ref.to(dtype)
    with torch.no_grad():
        got, want = ours(x), ref(x)
    assert got.dtype == want.dtype
    tol = 1e-6 if dtype == torch.float32 else 0
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_in_place_on_the_fused_projection_equals_rope(dtype):
    """The attention's in-place RoPE over the q and k heads of a [T, H + 2 Hkv, D] projection (a strided view):
    bit for bit apply_rope's, and the value heads beside them untouched."""
    torch.manual_seed(0)
    t, heads, kv_heads, dim = 7, 9, 3, 64
    qkv = torch.randn(t, heads + 2 * kv_heads, dim, dtype=dtype)
    before = qkv.clone()
    angles = torch.randn(t, dim // 2)
    cos = torch.cat([angles.cos()] * 2, -1).to(dtype).unsqueeze(1)
    sin = signed_sin(torch.cat([angles.sin()] * 2, -1).to(dtype)).unsqueeze(1)
    want = apply_rope(before[:, : heads + kv_heads], cos, sin)
    apply_rope_(qkv[:, : heads + kv_heads], cos, sin)
    assert torch.equal(qkv[:, : heads + kv_heads], want)
    assert torch.equal(qkv[:, heads + kv_heads :], before[:, heads + kv_heads :])
