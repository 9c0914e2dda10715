"""Model identity: what a session snapshot is bound to, so it is never restored onto another model.

A KV cache is a function of the token ids *and* of the model that computed it (architecture, weights, dtype),
so a snapshot's `kv_cache_hash` covers the model identity too. The identity is cheap to compute for any model
size and equal on every replica that serves the same files: it reads no file's modification time, only
contents (config.json, tokenizer.json, each safetensors file's size, header and evenly spaced samples of
its data; for a GGUF file, its size, metadata head and samples the same way). How the weights are computed
(dtype, kept-quantized int8/int4) is part of the identity too: it changes the KV values.
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3

SAMPLES_PER_FILE = 16
SAMPLE_BYTES = 64 * 1024
GGUF_HEAD_BYTES = 8 * 1024 * 1024  # metadata (vocabulary included) and the tensor table of any usual GGUF


def _sample_file(h: blake3.blake3, path: Path, head_bytes: int) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}\n{size}\n".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(min(head_bytes, size)))
        for i in range(SAMPLES_PER_FILE):
            fh.seek(size * i // SAMPLES_PER_FILE)
            h.update(fh.read(SAMPLE_BYTES))


def weights_fingerprint(model_path: Path) -> str:
    """BLAKE3 (hex, 32 chars) of the model directory's config, tokenizer and weights (sampled), or of a
    GGUF file (its metadata head: architecture, tokenizer, tensor table; and samples of the data)."""
    h = blake3.blake3()
    if model_path.is_file():
        _sample_file(h, model_path, GGUF_HEAD_BYTES)
        return h.hexdigest()[:32]
    model_dir = model_path
    for name in ("config.json", "tokenizer.json"):
        path = model_dir / name
        if path.is_file():
            h.update(name.encode() + b"\n" + path.read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as fh:  # the header: tensor names, dtypes, shapes and offsets
            header_len = int.from_bytes(fh.read(8), "little")
        _sample_file(h, path, 8 + header_len)
    return h.hexdigest()[:32]


def model_identity(model_path: str | os.PathLike | None, dtype: str, synthetic: bool = False,
                   quantize: str = "none") -> str:
    """"<weights fingerprint>/<dtype>[/<quantize>]", or "synthetic/<dtype>" for the synthetic benchmark backend."""
    if synthetic or model_path is None:
        return f"synthetic/{dtype}"
    ident = f"{weights_fingerprint(Path(model_path))}/{dtype}"
    return ident if quantize == "none" else f"{ident}/{quantize}"
