"""The scheduler is plain data in, plain decisions out: tested without any model."""

import pytest

from seedance.engine.block_manager import BlockManager
from seedance.engine.scheduler import Scheduler
from seedance.engine.sequence import SequenceStatus
from tests.engine.helpers import complete_step, make_seq


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, budget=64, aging=10.0):
    bm = BlockManager(num_blocks, block_size)
    return Scheduler(bm, max_num_seqs, budget, aging)


def admitted_order(sch, now=0.0, steps=10):
    order = []
    for _ in range(steps):
        out = sch.schedule(now)
        for c in out.chunks:
            if c.seq.request_id not in order:
                order.append(c.seq.request_id)
        complete_step(out)
        for seq in list(sch.running):  # finish immediately so the next one is admitted
            sch.finish(seq, "stop")
    return order


def test_priority_first_then_fifo_within_priority():
    sch = make_scheduler(max_num_seqs=1)
    for rid, prio in [("low", 5), ("hi-1", 0), ("mid", 2), ("hi-2", 0)]:
        sch.add(make_seq(rid, 4, priority=prio))
    assert admitted_order(sch) == ["hi-1", "hi-2", "mid", "low"]


def test_aging_lets_an_old_low_priority_request_overtake():
    sch = make_scheduler(max_num_seqs=1, aging=1.0)
    sch.add(make_seq("old-low", 4, priority=3, arrival_time=0.0))
    sch.add(make_seq("new-high", 4, priority=0, arrival_time=9.5))
    # At t=10 the old request has waited 10 intervals: effective priority 3-10 = -7 beats 0-0.
    assert admitted_order(sch, now=10.0) == ["old-low", "new-high"]
    sch2 = make_scheduler(max_num_seqs=1, aging=1.0)
    sch2.add(make_seq("old-low", 4, priority=3, arrival_time=0.0))
    sch2.add(make_seq("new-high", 4, priority=0, arrival_time=0.5))
    assert admitted_order(sch2, now=1.0) == ["new-high", "old-low"]  # not yet aged enough


def test_long_prompt_is_chunked_and_does_not_stall_decodes():
    sch = make_scheduler(budget=16)
    short = make_seq("short", 3)
    sch.add(short)
    complete_step(sch.schedule(0.0))  # short prefilled, now decoding
    sch.add(make_seq("long", 50, first_token=100))
    budgets = []
    for _ in range(4):
        out = sch.schedule(0.0)
        by_id = {c.seq.request_id: c for c in out.chunks}
        assert by_id["short"].num_tokens == 1  # the running stream gets its token every step
        budgets.append(by_id["long"].num_tokens)
        assert out.num_tokens <= 16
        complete_step(out)
    assert budgets == [15, 15, 15, 5]


def test_finished_sequence_frees_its_blocks_at_once():
    sch = make_scheduler()
    seq = make_seq("a", 20)
    sch.add(seq)
    complete_step(sch.schedule(0.0))
    assert sch.bm.num_free_blocks < 64
    sch.finish(seq, "cancelled")
    assert sch.bm.num_free_blocks == 64 and seq.status is SequenceStatus.FINISHED
    assert not sch.running


def test_cancel_while_waiting_removes_it():
    sch = make_scheduler(max_num_seqs=1)
    a, b = make_seq("a", 4), make_seq("b", 4)
    sch.add(a)
    sch.add(b)
    sch.schedule(0.0)
    sch.finish(b, "cancelled")
    assert len(sch.waiting) == 0


def test_preemption_by_recompute_when_blocks_run_out():
    sch = make_scheduler(num_blocks=6, block_size=4, budget=64)
    a = make_seq("a", 8, priority=0)  # 2 blocks
    b = make_seq("b", 8, priority=1, first_token=50)  # 2 blocks
    sch.add(a)
    sch.add(b)
    complete_step(sch.schedule(0.0), block_manager=sch.bm)  # both prefilled, one token each
    # Both need a 3rd block within a few steps; 6 blocks hold only one of them: b (lower priority) goes.
    for _ in range(5):
        complete_step(sch.schedule(0.0), block_manager=sch.bm)
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0 and b.block_table == []
    assert sch.num_preemptions >= 1
    assert b.num_output_tokens >= 1  # its output is kept and recomputed, not lost
    sch.finish(a, "stop")
    out = sch.schedule(0.0)
    chunk = next(c for c in out.chunks if c.seq is b)
    # Re-admitted: its freed blocks stayed in the prefix cache, so only the tail is recomputed.
    assert chunk.start > 0 and chunk.start + chunk.num_tokens == len(b)


def test_pause_keeps_kv_and_resume_rejoins_without_recompute():
    sch = make_scheduler()
    a, b = make_seq("a", 10), make_seq("b", 10, first_token=40)
    sch.add(a)
    sch.add(b)
    complete_step(sch.schedule(0.0))
    computed, table = a.num_computed_tokens, list(a.block_table)
    sch.pause(a)
    for _ in range(3):
        out = sch.schedule(0.0)
        assert all(c.seq is not a for c in out.chunks)  # a paused stream costs no compute
        complete_step(out)
    assert a.block_table == table and a.num_computed_tokens == computed
    sch.resume(a)
    out = sch.schedule(0.0)
    chunk = next(c for c in out.chunks if c.seq is a)
    assert chunk.start == computed and chunk.num_tokens == 1  # one decode token, no recompute


def test_paused_sequences_give_up_kv_first_under_memory_pressure():
    sch = make_scheduler(num_blocks=6, block_size=4)
    paused = make_seq("paused", 11)  # 3 blocks
    sch.add(paused)
    complete_step(sch.schedule(0.0))
    sch.pause(paused)
    big = make_seq("big", 20, first_token=100)  # needs 6 blocks (20 tokens + 1)
    sch.add(big)
    out = sch.schedule(0.0)
    assert any(c.seq is big for c in out.chunks)
    assert paused.block_table == [] and paused.status is SequenceStatus.PAUSED
    complete_step(out)
    sch.resume(paused)  # no KV left: it is recomputed when memory allows
    assert paused.status is SequenceStatus.WAITING


@pytest.mark.parametrize("running_priority, preempted", [(5, True), (0, False)])
def test_only_a_strictly_more_urgent_request_preempts_a_running_one(running_priority, preempted):
    sch = make_scheduler(num_blocks=4, block_size=4, max_num_seqs=4)
    first = make_seq("first", 12, priority=running_priority)
    sch.add(first)
    complete_step(sch.schedule(0.0))
    second = make_seq("second", 12, priority=0, first_token=300)
    sch.add(second)
    out = sch.schedule(0.0)
    if preempted:  # the urgent one takes the memory; the low one waits and is recomputed later
        assert [c.seq.request_id for c in out.chunks] == ["second"]
        assert first.status is SequenceStatus.WAITING and first.block_table == []
    else:  # equal priority: the newcomer waits instead of evicting
        assert [c.seq.request_id for c in out.chunks] == ["first"]
        assert second.status is SequenceStatus.WAITING


def test_reprioritise_a_waiting_request():
    sch = make_scheduler(max_num_seqs=1)
    a, b = make_seq("a", 4, priority=1), make_seq("b", 4, priority=1)
    sch.add(a)
    sch.add(b)
    sch.set_priority(b, 0)
    assert admitted_order(sch) == ["b", "a"]


def test_running_batch_never_exceeds_max_num_seqs():
    sch = make_scheduler(max_num_seqs=3)
    for i in range(6):
        sch.add(make_seq(f"r{i}", 4, first_token=10 * i + 1))
    out = sch.schedule(0.0)
    assert len(out.chunks) == 3 and len(sch.waiting) == 3


def test_multimodal_prefill_is_chunked_finer_than_the_budget():
    """A prompt with embedding rows prefills at most max_embed_chunk_tokens per step; text prompts and the
    multimodal one's decodes keep the whole budget."""
    import torch

    from seedance.engine.prompt_embeds import assemble_prompt, check_rows

    sch = Scheduler(BlockManager(64, 4), 8, 64, 10.0, max_embed_chunk_tokens=16)
    ids, embeds = assemble_prompt([[1, 2], check_rows(torch.zeros(40, 8), 8)])
    image = make_seq("image", 0)
    image.token_ids, image.num_prompt_tokens, image.prompt_embeds = ids, len(ids), embeds
    text = make_seq("text", 40, first_token=100)
    sch.add(image)
    sch.add(text)
    sizes = []
    for _ in range(4):
        out = sch.schedule(0.0)
        sizes.append({c.seq.request_id: c.num_tokens for c in out.chunks})
        complete_step(out, block_manager=sch.bm)
    assert sizes[0] == {"image": 16, "text": 40}  # the text prompt is not held to the cap
    assert [s["image"] for s in sizes] == [16, 16, 10, 1]  # 42 prompt tokens in capped chunks, then a decode
