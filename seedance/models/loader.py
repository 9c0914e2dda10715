"""Load a local Hugging Face model directory (config.json + safetensors + tokenizer) for our runner.

No hub access: a path is a path. The built-in tiny model ships inside the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from time import time_ns

import torch
from safetensors.torch import load_file

from seedance.models.hf_config import plain_llama_config
from seedance.models.llama import LlamaForCausalLM, rope_tables
from seedance.models.tokenizer import TextTokenizer

BUILTIN_MODEL_DIR = Path(__file__).resolve().parent / "tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@dataclass(slots=True)
class LoadedModel:
    path: Path
    config: object  # transformers PretrainedConfig
    model: LlamaForCausalLM
    tokenizer: TextTokenizer | None
    max_model_len: int
    timings: dict[str, int] = field(default_factory=dict)  # time_ns() at config / weights / tokenizer loaded


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    path = BUILTIN_MODEL_DIR if model in (None, "", "builtin", "tiny") else Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a model directory (no config.json); "
            "pass a local Hugging Face model directory or omit --model for the built-in one"
        )
    return path


def load_config(path: Path):
    plain = plain_llama_config(path)  # no transformers import where it is not needed
    if plain is not None:
        return plain
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    return weights


def load_model(
    model: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    max_model_len: int | None = None,
) -> LoadedModel:
    path = resolve_model_dir(model)
    config = load_config(path)  # the first call imports transformers: most of the load on the built-in model
    config_loaded = time_ns()
    limit = int(getattr(config, "max_position_embeddings", 2048))
    sliding = getattr(config, "sliding_window", None)
    if sliding and getattr(config, "use_sliding_window", True):
        limit = min(limit, int(sliding))  # within the window, sliding attention equals full attention
    max_len = min(max_model_len or limit, limit)
    torch_dtype = DTYPES[dtype]
    with torch.device("meta"):  # no random init of weights we are about to overwrite
        net = LlamaForCausalLM(config, max_positions=max_len)
    net = net.to_empty(device="cpu")
    net.rope_cos, net.rope_sin = rope_tables(config, max_len)  # buffers are not in the checkpoint
    net.load_hf_weights(read_safetensors(path))
    net = net.to(device=device, dtype=torch_dtype).eval()
    net.rope_cos, net.rope_sin = net.rope_cos.float(), net.rope_sin.float()
    weights_loaded = time_ns()  # the cold start's weights / tokenizer phases (docs/observability.md)
    tokenizer = (
        TextTokenizer.from_dir(path)
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
        else None
    )
    timings = {"config_loaded": config_loaded, "weights_loaded": weights_loaded, "tokenizer_loaded": time_ns()}
    return LoadedModel(path, config, net, tokenizer, max_len, timings)

