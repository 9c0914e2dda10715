"""Load a GGUF file (llama.cpp / Ollama's format) into our Llama-family runner, quantized weights kept quantized.

gguf_reader.py reads the file (memory-mapped); Q8_0 / Q4_0 / Q4_1 dequantize here in torch, other types through
the `gguf` library; this module maps llama.cpp's names and metadata onto ours and picks, per projection, the path
its GGUF type allows (docs/model.md, "Formats"):

- F32 / F16 / BF16: loaded as they are (cast to the serving dtype).
- Q4_0, Q4_1, Q4_K, where the int4 kernel is the fast one (`int4_kernel_preferred`: AVX-512 with bfloat16
  activations, the default dtype on a CPU with AVX512_BF16): exactly int4
  groupwise with group 32 (QuantizedLinear over `_weight_int4pack_mm_for_cpu`): Q4_0 is w = d (q - 8), Q4_1
  w = d q + m, Q4_K's 32-element sub-blocks w = (d sc) q - (dmin m). Elsewhere (AVX2, or float32) a file with 4-bit
  projections loads as `fp16` does (`auto_mode`): its values expand into fp16 nearly exactly, and fbgemm's fp16
  GEMM is the fastest kernel there (docs/model.md); requantizing them to int8 would add int8's rounding.
- every other quantized type (Q8_0, Q6_K, Q5_x, Q2_K/Q3_K/Q5_K, IQ*...): dequantized (`dequantize_rows`), then
  requantized to int8 per output channel (`int8_linear`: fbgemm's dynamic int8 GEMM; lossy, the tolerance is
  measured in tests/models/test_gguf.py).
- the token embedding, when quantized: int8 rows (QuantizedEmbedding), shared with a tied output head.

`quantize="none"` dequantizes everything to the serving dtype (the path transformers' own GGUF loading matches);
"int8" / "int4" force one kind for every projection; "fp16" dequantizes every projection into fbgemm's fp16 GEMM
(fp16_linear.py) and keeps the embedding float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from seedance.models.fp16_linear import Fp16Linear
from seedance.models.hf_config import LLAMA_DEFAULTS
from seedance.models.int8_linear import available as fbgemm_available
from seedance.models.llama import LlamaForCausalLM
from seedance.models.quantized_linear import (
    QuantizedEmbedding,
    QuantizedLinear,
    int4_kernel_preferred,
    int4_shape_ok,
    int8_linear,
    quantize_int4,
    quantize_int8,
)
from seedance.models.registry import QUANTIZE_MODES

GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2")
INT4_EXACT = ("Q4_0", "Q4_1", "Q4_K")
FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}  # 32 elements each: an fp16 scale (Q4_1: and min), the codes

# GGUF tensor name (after "blk.N.") -> our module path and the HF piece it is (for fused projections).
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_output": "self_attn.o_proj",
    "ffn_down": "mlp.down_proj",
}
FUSED = {  # our fused module -> its GGUF pieces, in order
    "self_attn.qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "mlp.gate_up_proj": ("ffn_gate", "ffn_up"),
}


class GGUFError(ValueError):
    """A GGUF file we cannot serve (corrupt, unsupported architecture or tensor); the message says why."""


@dataclass(slots=True)
class GGUFModel:
    path: Path
    reader: object  # gguf_reader.Reader (or gguf.GGUFReader for what it does not read)
    architecture: str
    config: object  # a namespace (plain Llama) or a transformers PretrainedConfig
    name: str


def open_gguf(path: Path) -> GGUFModel:
    from seedance.models.gguf_reader import read_gguf

    try:
        reader = read_gguf(path)
    except Exception as err:  # the library raises ValueError, struct.error, OSError... for a damaged file
        raise GGUFError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})") from None
    arch = field_value(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise GGUFError(f"{path}: unsupported GGUF architecture {arch!r}; supported: {', '.join(GGUF_ARCHITECTURES)}")
    name = field_value(reader, "general.name") or path.stem  # = registry.served_name
    return GGUFModel(path, reader, arch, gguf_config(reader, arch), str(name))


def field_value(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader, arch: str):
    """A config from llama.cpp's metadata keys (`{arch}.block_count`, ...): for a plain Llama (no RoPE scaling) the
    same namespace `hf_config.plain_llama_config` makes, without importing transformers (seconds of a cold start);
    else transformers' own config class."""
    def meta(key: str, default=None):
        return field_value(reader, f"{arch}.{key}", default)

    tensors = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise GGUFError("GGUF files with per-frequency RoPE factors (rope_freqs, Llama 3.1 style) are not supported")
    n_vocab = meta("vocab_size") or len(field_value(reader, "tokenizer.ggml.tokens") or [])
    heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    kwargs = dict(
        vocab_size=int(n_vocab), hidden_size=hidden, intermediate_size=int(meta("feed_forward_length")),
        num_hidden_layers=int(meta("block_count")), num_attention_heads=heads,
        num_key_value_heads=int(meta("attention.head_count_kv", heads)),
        head_dim=int(meta("attention.key_length", hidden // heads)),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=int(meta("context_length", 2048)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=field_value(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=field_value(reader, "tokenizer.ggml.eos_token_id"),
    )
    scaling = meta("rope.scaling.type")
    if scaling and scaling != "none":
        if scaling != "linear":
            raise GGUFError(f"GGUF RoPE scaling {scaling!r} is not supported (linear is)")
        kwargs["rope_scaling"] = {"rope_type": "linear", "factor": float(meta("rope.scaling.factor", 1.0))}
    if arch == "llama" and "rope_scaling" not in kwargs:
        rope = {"rope_type": "default", "rope_theta": kwargs["rope_theta"]}
        return SimpleNamespace(**{**LLAMA_DEFAULTS, **kwargs, "model_type": "llama", "rope_parameters": rope})
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    if arch == "mistral":
        kwargs["sliding_window"] = meta("attention.sliding_window")
    return cls(**kwargs)


# ---- tensors ---------------------------------------------------------------------------------------


def _rows(tensor, model: GGUFModel) -> np.ndarray:
    """The tensor's rows (output channels) as stored: raw blocks for quantized types. llama.cpp's converter
    permutes Llama's q / k rows for its RoPE layout; undone here, on whole rows, so it works on blocks too."""
    data = np.array(tensor.data)  # a copy: the memory map is read-only
    name = tensor.name
    if model.architecture in ("llama", "mistral") and name.endswith(("attn_q.weight", "attn_k.weight")):
        cfg = model.config
        heads = cfg.num_attention_heads if "attn_q" in name else cfg.num_key_value_heads
        n = data.shape[0]
        data = data.reshape(heads, n // heads // 2, 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)
    return data


def _dequantize(tensor, model: GGUFModel) -> torch.Tensor:
    return dequantize_rows(_rows(tensor, model), tensor.tensor_type.name)


def dequantize_rows(data: np.ndarray, kind: str) -> torch.Tensor:
    """Float32 [N, K] from a tensor's rows as stored. Q8_0 / Q4_0 / Q4_1 (SmolLM2's files) and the float types
    in whole-tensor torch ops: the same float32 arithmetic as `gguf.quants` (bit for bit: tests/models/
    test_gguf.py), which loops in numpy over row groups (~1 s of a Q8_0 load); other types through it."""
    if kind == "F32":
        return torch.from_numpy(np.ascontiguousarray(data, np.float32))
    if kind == "F16":
        return torch.from_numpy(np.ascontiguousarray(data)).float()
    if kind == "BF16":
        return torch.from_numpy(np.ascontiguousarray(data)).view(torch.bfloat16).float()
    if kind not in BLOCK_BYTES:
        from gguf.quants import GGMLQuantizationType, dequantize

        return torch.from_numpy(np.ascontiguousarray(dequantize(data, GGMLQuantizationType[kind]), np.float32))
    n = data.shape[0]
    blocks = torch.from_numpy(np.ascontiguousarray(data)).view(n, -1, BLOCK_BYTES[kind])
    d = blocks[..., :2].contiguous().view(torch.float16).float()  # [N, blocks, 1]
    if kind == "Q8_0":
        w = blocks[..., 2:].contiguous().view(torch.int8).float() * d
    else:
        qs = blocks[..., 2 if kind == "Q4_0" else 4 :]  # element i in the low nibble, i + 16 in the high one
        q = torch.cat([qs & 0x0F, qs >> 4], dim=-1)
        if kind == "Q4_0":
            w = (q.to(torch.int8) - 8).float() * d
        else:
            w = q.float() * d + blocks[..., 2:4].contiguous().view(torch.float16).float()
    return w.reshape(n, -1)


def int4_blocks(tensor, data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_0 / Q4_1 / Q4_K rows as int4 group-32 (codes 0..15 [N, K], scale and zero [N, K/32]), exactly:
    (q - 8) * scale + zero is the block's own dequantization."""
    from gguf.quants import Q4_K

    kind = tensor.tensor_type.name
    n = data.shape[0]
    per_block = {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144}[kind]
    blocks = data.reshape(n, -1, per_block)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)  # [N, blocks, 1]
    if kind == "Q4_K":
        dmin = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
        sc, mn = Q4_K.get_scale_min(blocks[..., 4:16].reshape(-1, 12))
        sc = sc.reshape(n, -1, 8).astype(np.float32)
        mn = mn.reshape(n, -1, 8).astype(np.float32)
        qs = blocks[..., 16:].reshape(n, -1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
        codes = (qs & 0x0F).reshape(n, -1)  # per 64: low nibbles, then high nibbles
        scale = (d * sc).reshape(n, -1)
        zero = (8.0 * d * sc - dmin * mn).reshape(n, -1)
    else:
        offset = 2 if kind == "Q4_0" else 4
        qs = blocks[..., offset:]  # [N, blocks, 16]: element i in the low nibble, i + 16 in the high one
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, -1)
        scale = d.reshape(n, -1)
        if kind == "Q4_0":
            zero = np.zeros_like(scale)
        else:
            m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32).reshape(n, -1)
            zero = m + 8.0 * scale
    return torch.from_numpy(codes.astype(np.int32)), torch.from_numpy(scale), torch.from_numpy(zero)


def _linear(pieces: list, model: GGUFModel, mode: str, bias: torch.Tensor | None) -> nn.Module | torch.Tensor:
    """One (possibly fused) projection: a quantized module, or a float weight for the model's own nn.Linear."""
    kinds = {p.tensor_type.name for p in pieces}
    n = sum(int(p.data.shape[0]) for p in pieces)
    k = int(pieces[0].shape[0])  # GGUF shapes are [K, N]
    exact = kinds <= set(INT4_EXACT) and int4_shape_ok(n, k, 32)
    if (mode == "int4" or (mode == "auto" and int4_kernel_preferred())) and exact:
        parts = [int4_blocks(p, _rows(p, model)) for p in pieces]
        codes, scale, zero = (torch.cat([part[i] for part in parts]) for i in range(3))
        return QuantizedLinear.from_int4(codes, scale, zero, 32, bias)
    floats = kinds <= set(FLOAT_TYPES)
    weight = torch.cat([_dequantize(p, model) for p in pieces])
    if mode == "none" or (mode == "auto" and floats):
        return weight
    if mode == "fp16":
        return Fp16Linear(weight, bias)
    if mode == "int4" and int4_shape_ok(n, k, 32):
        codes, scale, zero = quantize_int4(weight, 32)
        return QuantizedLinear.from_int4(codes, scale, zero, 32, bias)
    return int8_linear(*quantize_int8(weight), bias)


def auto_mode(model: GGUFModel, mode: str, dtype: str = "bfloat16") -> str:
    """`auto` as it applies to this file on this CPU served in `dtype`: "fp16" for 4-bit projections where the
    int4 kernel is slow (AVX2; AVX-512 with float32 activations: see the module's docstring), else the mode as
    given."""
    if mode != "auto" or int4_kernel_preferred(dtype):
        return mode
    four_bit = any(t.tensor_type.name in INT4_EXACT for t in model.reader.tensors if t.name.startswith("blk."))
    return "fp16" if four_bit else mode


def fbgemm_projections(model: GGUFModel, mode: str) -> bool:
    """Whether the file's projections load onto fbgemm's float32-activation GEMMs under `mode` (after auto_mode):
    fp16, int8, or `auto` on a file whose quantized projections are not 4-bit (Q8_0, Q6_K...: requantized int8)."""
    if not fbgemm_available():
        return False
    if mode in ("fp16", "int8"):
        return True
    if mode != "auto":
        return False
    kinds = {t.tensor_type.name for t in model.reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    return bool(kinds - set(FLOAT_TYPES)) and not kinds & set(INT4_EXACT)


def load_gguf_weights(model: GGUFModel, net: LlamaForCausalLM, mode: str) -> dict[str, torch.Tensor]:
    """Install quantized modules into net (still on the meta device) and return the float weights left for
    net.load_hf_weights, by our module names."""
    if mode not in QUANTIZE_MODES:
        raise GGUFError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {mode!r}")
    by_name = {t.name: t for t in model.reader.tensors}
    floats: dict[str, torch.Tensor] = {}

    def take(name: str) -> object:
        try:
            return by_name.pop(name)
        except KeyError:
            raise GGUFError(f"{model.path}: tensor {name!r} is missing") from None

    def bias_of(names: tuple[str, ...]) -> torch.Tensor | None:
        found = [by_name.pop(f"{n}.bias", None) for n in names]
        return None if found[0] is None else torch.cat([_dequantize(t, model) for t in found])

    def install(path: str, gguf_names: tuple[str, ...]) -> None:
        bias = bias_of(gguf_names)
        out = _linear([take(f"{n}.weight") for n in gguf_names], model, mode, bias)
        if isinstance(out, nn.Module):
            parent, _, child = path.rpartition(".")
            setattr(net.get_submodule(parent), child, out)
        else:
            floats[f"{path}.weight"] = out
            if bias is not None:
                floats[f"{path}.bias"] = bias

    for i in range(len(net.layers)):
        for ours, pieces in FUSED.items():
            install(f"layers.{i}.{ours}", tuple(f"blk.{i}.{p}" for p in pieces))
        for theirs, ours in LAYER_TENSORS.items():
            if ours.endswith("_proj"):
                install(f"layers.{i}.{ours}", (f"blk.{i}.{theirs}",))
            else:
                floats[f"layers.{i}.{ours}.weight"] = _dequantize(take(f"blk.{i}.{theirs}.weight"), model)
    floats["norm.weight"] = _dequantize(take("output_norm.weight"), model)
    embed = take("token_embd.weight")
    if mode in ("int8", "int4") or (mode == "auto" and embed.tensor_type.name not in FLOAT_TYPES):
        net.embed_tokens = QuantizedEmbedding.from_float(_dequantize(embed, model))
        if net.lm_head is None:
            net.lm_head = net.embed_tokens.as_linear()
    else:
        floats["embed_tokens.weight"] = _dequantize(embed, model)
    if "output.weight" in by_name:
        head = _linear([take("output.weight")], model, mode, None)
        if isinstance(head, nn.Module):
            net.lm_head = head
        else:
            floats["lm_head.weight"] = head
    leftover = sorted(n for n in by_name if not n.startswith("rope_freqs"))
    if leftover:
        raise GGUFError(f"{model.path}: unexpected tensors {leftover[:5]}")
    return floats
