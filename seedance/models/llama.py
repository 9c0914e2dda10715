"""Llama-family decoder (Llama, Qwen2, Mistral, SmolLM layouts) over a paged KV cache.

Numerically it follows transformers' implementation (RMSNorm in float32, rotate-half RoPE from the
config's rope parameters); projections are fused (qkv, gate+up) so a step issues fewer matmuls.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from seedance.models import float_gemv
from seedance.models.paged_attention import AttentionMetadata, paged_attention

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


@contextlib.contextmanager
def empty_weights():
    """Build modules on the meta device without running their initialisers: the weights are loaded right after,
    and torch's normal_ on meta tensors imports torch._dynamo (over a second of every cold start)."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        with torch.device("meta"):
            yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused kernel instead of six ops; transformers' order below is the same math in float32.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(config, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_positions, head_dim], from transformers' own RoPE initialisers so every
    rope_type (default, llama3, linear, dynamic, yarn...) means what it means there. The default one is
    computed here, so a plain model starts without importing transformers. Always computed on the CPU (under
    a meta-device context torch's reference kernels would import torch._dynamo: a second of cold start)."""
    with torch.device("cpu"):
        return _rope_tables(config, max_positions)


def _rope_tables(config, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        head_dim = head_dim_of(config)
        partial = getattr(config, "partial_rotary_factor", 1.0)
        dim = int(head_dim * partial)
        base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        scaling = 1.0
    else:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :].float()
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling, emb.sin() * scaling


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated, so transformers' `rotate_half(x) * sin` equals
    `x.roll(half, -1) * signed_sin(sin)` exactly (a sign flip is exact): computed once per step, it leaves each
    layer's RoPE one roll instead of two slices, a neg and a cat."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin_signed


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """apply_rope written back into x (the same ops and rounding: both products exist before the sum lands)."""
    if torch.compiler.is_compiling():  # dynamo refuses out= into a strided view; inductor fuses this into one kernel
        return x.copy_(apply_rope(x, cos, sin_signed))
    return torch.add(x * cos, x.roll(x.shape[-1] // 2, -1) * sin_signed, out=x)


class Attention(nn.Module):
    def __init__(self, config, bias: bool) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads or self.num_heads
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=getattr(config, "attention_bias", False) and bias)
        self.scale = self.head_dim**-0.5

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        t = x.shape[0]
        heads = self.qkv_proj(x).view(t, self.num_heads + 2 * self.num_kv_heads, self.head_dim)  # q | k | v heads
        # RoPE once over the query and key heads together, in place: the keys stay beside the values, so the
        # cache takes both in one copy (sin: signed_sin's, from the model's forward).
        apply_rope_(heads[:, : self.num_heads + self.num_kv_heads], cos, sin)
        q = heads[:, : self.num_heads]
        kv = heads[:, self.num_heads :].view(t, 2, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, kv, kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.intermediate = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate, bias=bias)
        self.down_proj = nn.Linear(self.intermediate, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate).mul_(up))  # gate is a strided view: silu makes the contiguous one


class DecoderLayer(nn.Module):
    def __init__(self, config, qkv_bias: bool) -> None:
        super().__init__()
        self.self_attn = Attention(config, qkv_bias)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, kv_cache, meta) -> torch.Tensor:
        """x: the residual stream, updated in place (the model's forward owns it)."""
        x += self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, meta)
        return x.add_(self.mlp(self.post_attention_layernorm(x)))


class LlamaForCausalLM(nn.Module):
    def __init__(self, config, max_positions: int) -> None:
        super().__init__()
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {config.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        self.config = config
        qkv_bias = config.model_type == "qwen2" or getattr(config, "attention_bias", False)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, qkv_bias) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = (
            None if self.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        cos, sin = rope_tables(config, max_positions)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, input_ids, positions, kv_caches, meta: AttentionMetadata, embeds=None) -> torch.Tensor:
        """Hidden states [T, hidden] for a flattened step batch; kv_caches: one [slots, 2, Hkv, D] per layer
        (paged_attention.py). embeds: None, or
        (index [E], rows [E, hidden]) input embeddings that replace the token embeddings at those batch indices
        (prompt embeddings, image features); the ids there are placeholders and never looked up."""
        if embeds is None:
            x = self.embed_tokens(input_ids)
        else:
            index, rows = embeds
            x = self.embed_tokens(input_ids.clamp(min=0))
            x[index] = rows.to(device=x.device, dtype=x.dtype)
        cos = self.rope_cos[positions].to(x.dtype).unsqueeze(1)  # [T, 1, D]
        sin = signed_sin(self.rope_sin[positions].to(x.dtype)).unsqueeze(1)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x = layer(x, cos, sin, kv_cache, meta)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(hidden)
        if self.lm_head is not None:  # its own head, or a quantized one (quantized_linear.py)
            return self.lm_head(hidden)
        return float_gemv.linear(hidden, self.embed_tokens.weight)  # F.linear; traced at one row, a GEMV

    def load_hf_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load a transformers-layout state dict, fusing q/k/v and gate/up as it goes."""
        own = self.state_dict()
        loaded: set[str] = set()
        fused = {
            "q_proj": ("qkv_proj", 0),
            "k_proj": ("qkv_proj", 1),
            "v_proj": ("qkv_proj", 2),
            "gate_proj": ("gate_up_proj", 0),
            "up_proj": ("gate_up_proj", 1),
        }
        pending: dict[str, list] = {}
        for name, tensor in weights.items():
            name = name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            parts = name.split(".")
            if len(parts) >= 2 and parts[-2] in fused:
                target, index = fused[parts[-2]]
                key = ".".join([*parts[:-2], target, parts[-1]])
                pending.setdefault(key, [None] * (3 if target == "qkv_proj" else 2))[index] = tensor
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # tied: the embedding is the head
            if name not in own:
                raise ValueError(f"unexpected weight {name!r}")
            own[name].copy_(tensor)
            loaded.add(name)
        for key, pieces in pending.items():
            if any(p is None for p in pieces):
                raise ValueError(f"incomplete fused weight {key!r}")
            own[key].copy_(torch.cat(pieces, dim=0))
            loaded.add(key)
        missing = set(own) - loaded - {"rope_cos", "rope_sin"}
        if missing:
            raise ValueError(f"missing weights: {sorted(missing)[:5]}")
