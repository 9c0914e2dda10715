"""Load a model for our runner: a local Hugging Face directory (config.json + safetensors + tokenizer), a GGUF
file (gguf_loader.py), or a name `seedance models pull` fetched (registry.py).

No hub access: a path is a path. The built-in tiny model ships inside the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from time import time_ns

import torch
from safetensors.torch import load_file

from seedance.models import int8_linear
from seedance.models import onednn_linear as onednn
from seedance.models.fp16_linear import Fp16Linear
from seedance.models.hf_config import plain_llama_config
from seedance.models.int8_linear import Int8Linear
from seedance.models.llama import LlamaForCausalLM, empty_weights, rope_tables
from seedance.models.llava import VisionEncoder, is_llava, load_vision, split_weights
from seedance.models.precision import resolve_dtype
from seedance.models.quantized_linear import fp16_head, is_quantized, quantize_model
from seedance.models.registry import (
    BUILTIN_NAMES,
    BUILTIN_SERVED_NAME,
    DTYPE_NAMES,
    REGISTRY,
    cached_path,
    check_load_options,
    check_model_arg,
)
from seedance.models.tokenizer import TextTokenizer

BUILTIN_MODEL_DIR = Path(__file__).resolve().parent / "tiny"
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
QUANTIZE = {"auto": None, "none": None, "int8": 8, "int4": 4, "fp16": 16}  # auto: GGUF keeps its own, HF stays float

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
    name: str = BUILTIN_SERVED_NAME  # the model's own name (served_name)
    vision: VisionEncoder | None = None  # a LLaVA-family model's image encoder (models/llava.py); None: text only
    dtype: str = "float32"  # what the weights and activations run in ("auto" resolved: models/precision.py)


class ModelLoadError(ValueError):
    """A model that cannot load (bad path, dtype, format, architecture); the message is one line for the user."""


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """The built-in directory, a pulled name's file (registry.py), or the path as given; checked to exist."""
    if model in BUILTIN_NAMES:
        return BUILTIN_MODEL_DIR
    try:
        check_model_arg(model)
    except FileNotFoundError as err:
        raise ModelLoadError(str(err)) from None
    return cached_path(str(model)) if str(model) in REGISTRY else Path(model).expanduser()


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    path = resolve_model_path(model)
    if path.is_file():
        raise ModelLoadError(f"{path} is a file, not a model directory")
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
    quantize: str = "auto",
    onednn_linear: str = "off",
) -> LoadedModel:
    """Load and return the model; any failure is a ModelLoadError with a one-line reason. dtype "auto" is resolved
    here (precision.resolve_dtype), once the kernels the projections take are known: float32 on fbgemm's.
    onednn_linear: whether bfloat16 projections move to oneDNN's reordered weights (models/onednn_linear.py;
    the engine's default is "auto", a bare load's "off": the model as its weights are)."""
    try:
        check_load_options(dtype, quantize, onednn_linear)
    except ValueError as err:
        raise ModelLoadError(str(err)) from None
    path = resolve_model_path(model)
    try:
        if path.is_file():
            return _load_gguf(path, device, dtype, max_model_len, quantize, onednn_linear)
        return _load_hf_dir(path, device, dtype, max_model_len, quantize, onednn_linear)
    except ModelLoadError:
        raise
    except Exception as err:  # a corrupt file, an unsupported architecture, a missing tensor...
        message = str(err).replace("\n", " ")
        raise ModelLoadError(message if str(path) in message else f"{path}: {message}") from err


def _context_limit(config, max_model_len: int | None) -> int:
    limit = int(getattr(config, "max_position_embeddings", 2048))
    sliding = getattr(config, "sliding_window", None)
    if sliding and getattr(config, "use_sliding_window", True):
        limit = min(limit, int(sliding))  # within the window, sliding attention equals full attention
    return min(max_model_len or limit, limit)


def _finish(net: LlamaForCausalLM, config, max_len: int) -> LlamaForCausalLM:
    """Materialize what is still on the meta device (quantized modules are real already) and set RoPE."""
    for module in net.modules():
        if not is_quantized(module):
            _materialize(module)
    net.rope_cos, net.rope_sin = rope_tables(config, max_len)  # buffers are not in the checkpoint
    return net


def _materialize(module: torch.nn.Module) -> None:
    """Module.to_empty without its cost: on meta tensors it goes through torch's Python reference of empty_like,
    which imports sympy and torch.fx's symbolic shapes (~0.75 s of every cold start); torch.empty does not."""
    for table in (module._parameters, module._buffers):
        for name, tensor in table.items():
            if tensor is not None and tensor.is_meta:
                real = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
                table[name] = torch.nn.Parameter(real, tensor.requires_grad) if name in module._parameters else real


def model_weights(model: torch.nn.Module) -> int:
    """The model's weight count: parameters, buffers (the weight-only quantized layers'), and fbgemm's packed int8 /
    fp16 and oneDNN's reordered weights, which are neither (a RowSplitLinear's bf16 copy once, as its twin). The
    runner's large-step rule and onednn_linear's `auto` read it."""
    count = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    packed = (m for m in model.modules() if isinstance(m, Int8Linear | Fp16Linear)
              or (isinstance(m, onednn.PackedLinear) and m.counted))
    return count + sum(m.out_features * m.in_features for m in packed)


def _to_serving(net: LlamaForCausalLM, device: str, dtype: str, onednn_linear: str) -> LlamaForCausalLM:
    quantized = any(is_quantized(m) for m in net.modules())
    if quantized and torch.device(device).type != "cpu":
        raise ModelLoadError("quantized weights run on the CPU kernels only: use --device cpu or --quantize none")
    net = net.to(device=device, dtype=DTYPES[dtype]).eval()
    net.rope_cos, net.rope_sin = net.rope_cos.float(), net.rope_sin.float()
    if onednn.enabled(onednn_linear, DTYPES[dtype], device, weights=model_weights(net)):
        onednn.attach(net, int4_copies=onednn.int4_copies(onednn_linear))
    return net


def _load_hf_dir(path: Path, device: str, dtype: str, max_model_len: int | None, quantize: str,
                 onednn_linear: str) -> LoadedModel:
    dtype = resolve_dtype(dtype, device, fbgemm=quantize in ("int8", "fp16") and int8_linear.available())
    config = load_config(path)  # the first call imports transformers: most of the load on the built-in model
    config_loaded = time_ns()
    weights, vision = read_safetensors(path), None
    if is_llava(config):  # the vision side through transformers; the language model is ours, like any Llama
        parts = split_weights(weights)
        vision = load_vision(path, config, parts, device, DTYPES[dtype])
        config, weights = config.text_config, parts["text"]
    max_len = _context_limit(config, max_model_len)
    with empty_weights():  # no random init of weights we are about to overwrite
        net = LlamaForCausalLM(config, max_positions=max_len)
    net = _finish(net, config, max_len)
    net.load_hf_weights(weights)
    if QUANTIZE[quantize]:
        quantize_model(net, QUANTIZE[quantize])
    net = _to_serving(net, device, dtype, onednn_linear)
    weights_loaded = time_ns()  # the cold start's weights / tokenizer phases (docs/observability.md)
    tokenizer = (
        TextTokenizer.from_dir(path)
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
        else None
    )
    timings = {"config_loaded": config_loaded, "weights_loaded": weights_loaded, "tokenizer_loaded": time_ns()}
    name = BUILTIN_SERVED_NAME if path == BUILTIN_MODEL_DIR else path.resolve().name
    return LoadedModel(path, config, net, tokenizer, max_len, timings, name, vision, dtype)


def _load_gguf(path: Path, device: str, dtype: str, max_model_len: int | None, quantize: str,
               onednn_linear: str) -> LoadedModel:
    from seedance.models.gguf_loader import auto_mode, fbgemm_projections, load_gguf_weights, open_gguf
    from seedance.models.gguf_tokenizer import gguf_tokenizer

    gguf = open_gguf(path)
    if dtype == "auto":  # the kernels first (int4 only with bfloat16 activations), then the dtype they want
        dtype = resolve_dtype(dtype, device, fbgemm=fbgemm_projections(gguf, auto_mode(gguf, quantize, "bfloat16")))
    quantize = auto_mode(gguf, quantize, dtype)
    config_loaded = time_ns()
    max_len = _context_limit(gguf.config, max_model_len)
    with empty_weights():
        net = LlamaForCausalLM(gguf.config, max_positions=max_len)
    floats = load_gguf_weights(gguf, net, quantize)  # installs the quantized modules
    net = _finish(net, gguf.config, max_len)
    net.load_hf_weights(floats)
    if quantize == "fp16" and net.lm_head is None:  # a tied head: the float embedding's fp16 copy
        net.lm_head = fp16_head(net.embed_tokens)
    net = _to_serving(net, device, dtype, onednn_linear)
    weights_loaded = time_ns()
    tokenizer = gguf_tokenizer(gguf.reader, path)
    timings = {"config_loaded": config_loaded, "weights_loaded": weights_loaded, "tokenizer_loaded": time_ns()}
    return LoadedModel(path, gguf.config, net, tokenizer, max_len, timings, gguf.name, dtype=dtype)
