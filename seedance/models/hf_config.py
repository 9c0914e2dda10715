"""config.json read without transformers, for the plain Llama layout (the built-in model, SmolLM, Llama 2/3
without RoPE scaling): importing transformers costs about 2 s of a cold start. Defaults are transformers'
LlamaConfig's. Other model types, and RoPE scaling (whose initialisers live in transformers), return None so
the caller loads transformers' AutoConfig instead."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

LLAMA_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "head_dim": None,
    "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None,
}


def plain_llama_config(path: Path) -> SimpleNamespace | None:
    raw = json.loads((path / "config.json").read_text())
    if raw.get("model_type") != "llama":
        return None
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return None
    config = SimpleNamespace(**{**LLAMA_DEFAULTS, **raw})
    if config.num_key_value_heads is None:
        config.num_key_value_heads = config.num_attention_heads
    if config.head_dim is None:
        config.head_dim = config.hidden_size // config.num_attention_heads
    config.rope_parameters = {"rope_type": "default", "rope_theta": rope.get("rope_theta", config.rope_theta)}
    return config
