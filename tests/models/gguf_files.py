"""Write GGUF files from a Hugging Face model directory with `gguf.GGUFWriter`, as llama.cpp's converter lays
them out (its names, its q/k row permutation, tokenizer metadata), so tests never download one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from safetensors.torch import load_file

OURS_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permute of q / k rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name_of(hf_name: str) -> str:
    name = hf_name.removeprefix("model.")
    if name == "embed_tokens.weight":
        return "token_embd.weight"
    if name == "norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    _, layer, *rest = name.split(".")
    module, leaf = ".".join(rest[:-1]), rest[-1]
    return f"blk.{layer}.{OURS_TO_GGUF[module]}.{leaf}"


def write_gguf(model_dir: Path, out: Path, qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
               arch: str = "llama", name: str = "tiny-test", embed_qtype: GGMLQuantizationType | None = None) -> Path:
    """The model at model_dir as a GGUF: 2-D projection weights in qtype, norms in F32, the embedding in
    embed_qtype (default qtype). arch is written as is (a wrong one tests the refusal)."""
    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    w = GGUFWriter(str(out), arch)
    w.add_name(name)
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    w.add_vocab_size(config["vocab_size"])
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tok["added_tokens"] if t["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    template = model_dir / "chat_template.jinja"
    if template.is_file():
        w.add_chat_template(template.read_text())
    for hf_name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        data = tensor.to(torch.float32).numpy()
        gname = gguf_name_of(hf_name)
        if gname.endswith("attn_q.weight"):
            data = _permute(data, config["num_attention_heads"])
        elif gname.endswith("attn_k.weight"):
            data = _permute(data, config["num_key_value_heads"])
        kind = embed_qtype if gname == "token_embd.weight" and embed_qtype is not None else qtype
        if data.ndim == 1 or kind == GGMLQuantizationType.F32:
            w.add_tensor(gname, np.ascontiguousarray(data, np.float32))
        else:
            w.add_tensor(gname, quantize(data, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
