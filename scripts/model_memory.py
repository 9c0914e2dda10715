"""Idle resident memory of `seedance serve` per model and format (docs/model.md, "Formats"): start one server at
a time, wait for ready and a short settle, read its RSS and KV pool size, stop it. Prints a Markdown table.

    python scripts/model_memory.py            # needs `seedance models pull smollm2` for the SmolLM2 rows
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from seedance.bench.server_process import launch

CASES = [  # label, settings
    ("built-in, float32", {}),
    ("SmolLM2 Q4_1 GGUF, kept quantized (auto), float32 activations", {"model": "smollm2"}),
    ("SmolLM2 Q4_1 GGUF, kept quantized (auto), bfloat16 activations", {"model": "smollm2", "dtype": "bfloat16"}),
    ("SmolLM2 Q4_1 GGUF, requantized int8", {"model": "smollm2", "quantize": "int8"}),
    ("SmolLM2 Q4_1 GGUF, dequantized float32 (none)", {"model": "smollm2", "quantize": "none"}),
    ("SmolLM2 Q4_1 GGUF, dequantized bfloat16 (none)", {"model": "smollm2", "quantize": "none", "dtype": "bfloat16"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after ready before reading RSS")
    parser.add_argument("--kv-cache-bytes", type=int, default=None, help="pass a fixed pool instead of the default")
    args = parser.parse_args()
    print("| model, format | `--quantize` | KV pool (default) | idle RSS |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, settings in CASES:
            settings = {**settings, "session_store": f"sqlite://{Path(tmp) / 'sessions.db'}"}
            if args.kv_cache_bytes:
                settings["kv_cache_bytes"] = args.kv_cache_bytes
            try:
                srv = launch(settings, Path(tmp) / "server.log", ready_timeout_s=600, poll_s=0.2)
            except RuntimeError as err:
                print(f"| {label} | failed: {str(err).splitlines()[-1]} | | |")
                continue
            try:
                time.sleep(args.settle)
                stats = srv.stats()
                rss = psutil.Process(srv.pid).memory_info().rss
                pool = stats["num_kv_blocks"] * stats["kv_bytes_per_block"]
                path = settings.get("quantize", "auto")
                print(f"| {label} | {path} | {pool / 2**20:.0f} MiB | {rss / 2**20:.0f} MiB |", flush=True)
            finally:
                srv.stop()


if __name__ == "__main__":
    main()
