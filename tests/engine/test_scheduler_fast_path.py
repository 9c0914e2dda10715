"""The scheduler's decode fast path (no block checks for a decode inside its last block) decides exactly what the
general path decides: the same chunks and preemptions, step after step, under memory pressure, priorities,
per-client shares, pauses, cancels and prefix-cache hits."""

from __future__ import annotations

import random

import pytest

from seedance.engine.block_manager import BlockManager
from seedance.engine.scheduler import Scheduler
from tests.engine.helpers import complete_step, make_seq


def _trace(seed: int, fast: bool) -> list:
    rng = random.Random(seed)
    bm = BlockManager(rng.choice([12, 24, 64]), rng.choice([4, 16]))
    sch = Scheduler(bm, rng.choice([4, 8, 16]), 64, 2.0, max_running_per_client=rng.choice([None, 2, 3]))
    sch.decode_fast_path = fast
    seqs, trace = [], []
    for step in range(120):
        if rng.random() < 0.3:
            seq = make_seq(f"r{len(seqs)}", rng.randrange(1, 40), priority=rng.randrange(3),
                           first_token=rng.choice([1, 100]), max_tokens=rng.randrange(1, 30))
            seq.client = f"c{rng.randrange(3)}"
            sch.add(seq)
            seqs.append(seq)
        live = [s for s in seqs if not s.is_finished]
        if live and rng.random() < 0.05:
            sch.pause(rng.choice(live))
        if sch.paused and rng.random() < 0.3:
            sch.resume(rng.choice(sch.paused))
        if live and rng.random() < 0.03:
            sch.finish(rng.choice(live), "cancelled")
        out = sch.schedule(float(step) * 0.1)
        trace.append(([(c.seq.request_id, c.start, c.num_tokens) for c in out.chunks],
                      [s.request_id for s in out.preempted]))
        complete_step(out, next_token=rng.randrange(1000), block_manager=bm)
        for seq in list(sch.running):
            if seq.num_output_tokens >= seq.params.max_tokens:
                sch.finish(seq, "length")
    return trace


@pytest.mark.parametrize("seed", range(30))
def test_decode_fast_path_decides_as_the_general_path(seed):
    fast, general = _trace(seed, True), _trace(seed, False)
    assert fast == general
    assert any(chunks for chunks, _ in fast)
