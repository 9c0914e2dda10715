"""Decode attention over the paged cache: SDPA and the batched-matmul path against a float64 reference computed
straight from each sequence's slots, and the runner's choice between them."""

from __future__ import annotations

import pytest
import torch

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.models.paged_attention import BMM_MIN_BATCH, AttentionMetadata, _decode_attention, kv_cache_shape
from tests.engine.test_compiled_decode import greedy

HEADS, KV_HEADS, DIM, BLOCK = 6, 2, 16, 4


def paged_batch(dtype: torch.dtype, batch: int, seed: int = 0):
    """A cache with `batch` sequences of different lengths on shuffled blocks, their queries, and the block
    table, mask and per-sequence slots the runner would build."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 23, (batch,), generator=gen)
    blocks = (lengths + BLOCK - 1) // BLOCK
    width = int(blocks.max())
    pool = torch.randperm(int(blocks.sum()) + 5, generator=gen)
    cache = torch.randn(kv_cache_shape(len(pool) * BLOCK, KV_HEADS, DIM), generator=gen).to(dtype)
    table = torch.zeros(batch, width, dtype=torch.long)
    taken = 0
    for b in range(batch):
        n = int(blocks[b])
        table[b, :n] = pool[taken : taken + n]
        taken += n
    positions = torch.arange(width * BLOCK)
    mask = torch.where(positions[None, :] >= lengths[:, None], float("-inf"), 0.0)
    q = torch.randn(batch, HEADS, DIM, generator=gen).to(dtype)
    slots = [(table[b, positions[: lengths[b]] // BLOCK] * BLOCK + positions[: lengths[b]] % BLOCK)
             for b in range(batch)]
    return cache, q, table, mask, slots


def reference(cache, q, slots, scale: float) -> torch.Tensor:
    """Each sequence alone in float64: softmax(q k^T * scale) v over its own slots, KV heads shared in groups."""
    group = HEADS // KV_HEADS
    out = torch.empty(q.shape, dtype=torch.float64)
    for b, s in enumerate(slots):
        k = cache[0][:, s].double().repeat_interleave(group, 0)  # [H, L, D]
        v = cache[1][:, s].double().repeat_interleave(group, 0)
        w = torch.softmax((q[b].double()[:, None, :] @ k.transpose(1, 2)).squeeze(1) * scale, -1)  # [H, L]
        out[b] = (w[:, None, :] @ v).squeeze(1)
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("bmm", [False, True])
def test_decode_attention_matches_each_sequence_alone(dtype, tol, bmm):
    cache, q, table, mask, slots = paged_batch(dtype, 9)
    scale = DIM**-0.5
    meta = AttentionMetadata(torch.zeros(9, dtype=torch.long), 9, table, mask, decode_bmm=bmm,
                             decode_block_size=BLOCK)
    got = _decode_attention(q, cache, meta, scale)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got.double(), reference(cache, q, slots, scale), atol=tol, rtol=tol)


def test_the_slot_table_gives_what_the_block_table_does():
    """The compiled graphs' per-slot table (padding slots masked) and the eager path's whole blocks."""
    cache, q, table, mask, _ = paged_batch(torch.float32, 5, seed=3)
    positions = torch.arange(table.shape[1] * BLOCK)
    slot_table = table[:, positions // BLOCK] * BLOCK + positions % BLOCK
    by_block = AttentionMetadata(torch.zeros(5, dtype=torch.long), 5, table, mask, decode_block_size=BLOCK)
    by_slot = AttentionMetadata(torch.zeros(5, dtype=torch.long), 5, slot_table, mask[:, None, None, :])
    torch.testing.assert_close(_decode_attention(q, cache, by_slot, 0.25), _decode_attention(q, cache, by_block, 0.25))


def test_the_runner_takes_the_matmuls_from_bmm_min_batch_decodes(monkeypatch):
    """An eager CPU step of BMM_MIN_BATCH or more decodes takes the matmul path, fewer SDPA; the tokens are the
    same either way (float32: the two paths agree to rounding)."""
    engine = LLMEngine.from_config(EngineConfig(dtype="float32", threads=1, warmup=False))
    runner = engine.runner
    seen: list[tuple[int, bool]] = []
    prepare = runner.prepare

    def spy(chunks):
        batch = prepare(chunks)
        if batch.meta.num_decode_tokens:
            seen.append((batch.meta.num_decode_tokens, batch.meta.decode_bmm))
        return batch

    monkeypatch.setattr(runner, "prepare", spy)
    prompts = [[5 + i, 17, 29 + 2 * i, 3] for i in range(BMM_MIN_BATCH + 2)]

    together = greedy(engine, prompts, 6)
    assert seen and all(bmm for n, bmm in seen if n >= BMM_MIN_BATCH) and any(n >= BMM_MIN_BATCH for n, _ in seen)
    seen.clear()
    alone = [greedy(engine, [p], 6)[0] for p in prompts[:3]]
    assert seen and not any(bmm for _, bmm in seen)
    assert together[:3] == alone
