"""Engine configuration: every bound the engine enforces lives here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineConfig:
    model: str | None = None  # a local HF model directory; None: the built-in tiny model
    device: str = "cpu"  # "cpu" or "cuda[:N]"
    # auto: bfloat16 on CPUs with AMX / AVX512_BF16 and on bf16 GPUs, else float32 (models/precision.py)
    dtype: str = "auto"  # auto, float32, bfloat16, float16
    block_size: int = 16  # tokens per KV block
    kv_cache_bytes: int = 256 * 1024 * 1024  # size of the paged KV pool
    num_kv_blocks: int | None = None  # overrides kv_cache_bytes when set
    max_num_seqs: int = 64  # running batch bound
    max_num_batched_tokens: int = 256  # tokens per step: decode tokens + prefill chunks
    max_waiting: int = 256  # waiting-queue bound; beyond it submit() raises EngineOverloaded
    max_model_len: int | None = None  # defaults to the model's max_position_embeddings
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    max_prompt_tokens: int | None = None  # longest prompt a request may send (policy); None: the context length
    aging_interval_s: float = 2.0  # every interval waited raises a request's priority by one level
    enable_prefix_caching: bool = True
    max_pinned_kv_fraction: float = 0.5  # share of the KV pool idle sessions may pin for their next turn
    seed: int = 0  # seeds unseeded sampling, so a whole run is reproducible
    threads: int | None = None  # torch intra-op threads; None on CPU: all cores but one (model_runner.default_threads)
    # One dummy request (a short prefill + a few decodes) through the runner at start, so the first user request
    # does not pay first-call costs (allocator growth, kernel selection, lazy imports).
    warmup: bool = True
    # Synthetic backend (transport benchmarks): tokens per second per stream, no model compute.
    synthetic_rate: float | None = None
