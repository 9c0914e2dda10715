"""Model identity: what a session snapshot is bound to, so it is never restored onto another model.

A KV cache is a function of the token ids *and* of the model that computed it (architecture, weights, dtype),
so a snapshot's `kv_cache_hash` covers the model identity too. The identity is cheap to compute for any model
size and equal on every replica that serves the same files: it reads no file's modification time, only
contents (config.json, tokenizer.json, each safetensors file's size, header and evenly spaced samples of
its data).
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3

SAMPLES_PER_FILE = 16
SAMPLE_BYTES = 64 * 1024


def weights_fingerprint(model_dir: Path) -> str:
    """BLAKE3 (hex, 32 chars) of the model directory's config, tokenizer and weights (sampled)."""
    h = blake3.blake3()
    for name in ("config.json", "tokenizer.json"):
        path = model_dir / name
        if path.is_file():
            h.update(name.encode() + b"\n" + path.read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        size = path.stat().st_size
        h.update(f"{path.name}\n{size}\n".encode())
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(header_len, size)))  # tensor names, dtypes, shapes and offsets
            for i in range(SAMPLES_PER_FILE):
                fh.seek(size * i // SAMPLES_PER_FILE)
                h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()[:32]


def model_identity(model_dir: str | os.PathLike | None, dtype: str, synthetic: bool = False) -> str:
    """"<weights fingerprint>/<dtype>", or "synthetic/<dtype>" for the synthetic benchmark backend."""
    if synthetic or model_dir is None:
        return f"synthetic/{dtype}"
    return f"{weights_fingerprint(Path(model_dir))}/{dtype}"
