"""The engine's counters as plain data, in a module of their own so the gateway of `--engine process` (which
only reads them off the core's frames) has them without importing the engine core, the model code and torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineStats:
    num_waiting: int
    num_running: int
    num_paused: int
    num_free_blocks: int
    num_kv_blocks: int
    prefix_cache_query_tokens: int
    prefix_cache_hit_tokens: int
    num_preemptions: int
    num_pinned_blocks: int
    steps: int
    generated_tokens: int
    kv_bytes_per_block: int = 0  # what one block of the pool costs (0: the synthetic backend keeps no KV)
