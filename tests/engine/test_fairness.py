"""Per-client fairness in the scheduler: a client's share of the running batch (work-conserving: beyond it only
while no one else waits, and the first to give way), and the prefill share of a step that carries decodes
(scheduler.py, client_share.py). Plain data, no model."""

import pytest

from seedance.engine.block_manager import BlockManager
from seedance.engine.scheduler import Scheduler
from tests.engine.helpers import complete_step, make_seq


def scheduler(per_client=None, prefill=None, max_num_seqs=8, budget=64, num_blocks=128):
    return Scheduler(BlockManager(num_blocks, 4), max_num_seqs, budget, 10.0,
                     max_running_per_client=per_client, decode_step_prefill_tokens=prefill)


def seq(rid, n, client=None, **kw):
    s = make_seq(rid, n, **kw)
    s.client = client
    return s


def running_ids(sch):
    return sorted(s.request_id for s in sch.running)


def test_a_lone_client_runs_beyond_its_share_when_the_batch_has_room():
    sch = scheduler(per_client=16, max_num_seqs=32, budget=128)
    for i in range(20):
        sch.add(seq(f"a{i}", 4, client="lone"))
    complete_step(sch.schedule(0.0))
    assert len(sch.running) == 20 and not sch.waiting  # not 16 running and 4 waiting beside an idle batch


def test_another_clients_request_is_admitted_ahead_of_the_first_ones_extras():
    sch = scheduler(per_client=2, max_num_seqs=4)
    for i in range(5):
        sch.add(seq(f"a{i}", 4, client="noisy"))
    sch.add(seq("canary", 4, client="quiet"))  # arrives last, in the same step
    complete_step(sch.schedule(0.0))
    assert running_ids(sch) == ["a0", "a1", "a2", "canary"]  # the noisy client's share, the canary, one extra
    sch.finish(next(s for s in sch.running if s.request_id == "a0"), "stop")
    complete_step(sch.schedule(0.0))
    assert running_ids(sch) == ["a1", "a2", "a3", "canary"]  # no one else waits: the next extra takes the place


def test_an_extra_gives_its_place_to_a_later_client_and_resumes_with_its_kv():
    sch = scheduler(per_client=2, max_num_seqs=4)
    for i in range(6):
        sch.add(seq(f"a{i}", 4, client="noisy"))
    complete_step(sch.schedule(0.0))
    assert running_ids(sch) == ["a0", "a1", "a2", "a3"]
    a3 = next(s for s in sch.running if s.request_id == "a3")
    blocks, computed = list(a3.block_table), a3.num_computed_tokens
    sch.add(seq("canary", 4, client="quiet", arrival_time=1.0))
    complete_step(sch.schedule(1.0))
    assert running_ids(sch) == ["a0", "a1", "a2", "canary"]  # the least urgent extra gave way
    assert a3 in sch.waiting and a3.block_table == blocks and sch.num_preemptions == 0  # held back, KV kept
    sch.finish(next(s for s in sch.running if s.request_id == "canary"), "stop")
    out = sch.schedule(1.0)
    chunk = next(c for c in out.chunks if c.seq is a3)
    assert (chunk.start, chunk.num_tokens) == (computed, 1)  # back in the batch, decoding where it left off
    assert running_ids(sch) == ["a0", "a1", "a2", "a3"]


def test_a_held_back_extra_is_not_starved_by_later_clients():
    sch = scheduler(per_client=1, max_num_seqs=2)
    sch.add(seq("a0", 4, client="a"))
    sch.add(seq("a1", 4, client="a"))
    complete_step(sch.schedule(0.0))
    sch.add(seq("b0", 4, client="b", arrival_time=1.0))
    complete_step(sch.schedule(1.0))
    assert running_ids(sch) == ["a0", "b0"]  # a1 held back
    sch.finish(next(s for s in sch.running if s.request_id == "a0"), "stop")
    sch.add(seq("c0", 4, client="c", arrival_time=2.0))
    complete_step(sch.schedule(2.0))
    assert running_ids(sch) == ["a1", "b0"]  # within its client's share again, and first in line (FIFO)


def test_an_extra_gives_way_for_memory_rather_than_take_another_clients():
    # 3-token prompts fill one 4-slot block each through their first decode; the second decode needs a block
    sch = scheduler(per_client=1, num_blocks=4)
    sch.add(seq("a0", 3, client="a"))
    sch.add(seq("a1", 3, client="a"))  # an extra, more urgent than b0
    sch.add(seq("b0", 3, client="b", priority=5))  # within its share, the least urgent in the batch
    complete_step(sch.schedule(0.0))
    complete_step(sch.schedule(0.0))
    out = sch.schedule(0.0)  # three need a block, one is free: a0 takes it, then a1 gives its own to b0
    assert [s.request_id for s in out.preempted] == ["a1"]  # without the share: b0, the lowest priority
    assert running_ids(sch) == ["a0", "b0"]


def test_a_later_clients_request_takes_an_extras_memory():
    sch = scheduler(per_client=1, num_blocks=3)
    for i in range(3):
        sch.add(seq(f"a{i}", 3, client="a"))
    complete_step(sch.schedule(0.0))
    assert running_ids(sch) == ["a0", "a1", "a2"] and sch.bm.num_free_blocks == 0
    sch.add(seq("b0", 3, client="b"))  # a free place in the batch, but no free memory
    out = sch.schedule(0.0)
    assert [s.request_id for s in out.preempted] == ["a2"]  # the least urgent extra, recomputed later
    assert running_ids(sch) == ["a0", "a1", "b0"]


def test_extras_take_only_free_memory():
    sch = scheduler(per_client=1, num_blocks=2)
    sch.add(seq("b0", 3, client="b", priority=5))
    complete_step(sch.schedule(0.0))
    sch.add(seq("a0", 3, client="a"))
    sch.add(seq("a1", 3, client="a"))  # more urgent than b0, but beyond its client's share
    out = sch.schedule(0.0)
    assert not out.preempted and running_ids(sch) == ["a0", "b0"]


def test_without_the_cap_a_flood_fills_the_batch_first():
    sch = scheduler(per_client=None, max_num_seqs=4)
    for i in range(5):
        sch.add(seq(f"a{i}", 4, client="noisy"))
    sch.add(seq("canary", 4, client="quiet"))
    complete_step(sch.schedule(0.0))
    assert "canary" not in running_ids(sch)


def test_the_share_is_per_client_and_requests_without_a_client_are_not_capped():
    sch = scheduler(per_client=1, max_num_seqs=4)
    for i in range(3):
        sch.add(seq(f"x{i}", 4))
        sch.add(seq(f"b{i}", 4, client="b"))
    complete_step(sch.schedule(0.0))
    assert running_ids(sch) == ["b0", "x0", "x1", "x2"]


def test_priority_still_orders_the_clients_under_their_caps():
    sch = scheduler(per_client=1, max_num_seqs=2)
    sch.add(seq("a-low", 4, client="a", priority=5))
    sch.add(seq("a-high", 4, client="a", priority=0))
    sch.add(seq("b-mid", 4, client="b", priority=2))
    sch.add(seq("c-low", 4, client="c", priority=9))
    complete_step(sch.schedule(0.0))
    assert running_ids(sch) == ["a-high", "b-mid"]


def test_a_step_with_decodes_carries_at_most_its_prefill_share():
    sch = scheduler(prefill=8, budget=64)
    stream = seq("stream", 3)
    sch.add(stream)
    complete_step(sch.schedule(0.0))  # prefilled alone, with the whole budget; now it decodes
    sch.add(seq("long", 50, first_token=100))
    sch.add(seq("other", 20, first_token=200))
    prefilled = 0
    for _ in range(20):
        out = sch.schedule(0.0)
        by_id = {c.seq.request_id: c.num_tokens for c in out.chunks}
        assert by_id["stream"] == 1  # the running stream gets its token every step
        prefill = sum(c.num_tokens for c in out.chunks if c.seq.num_computed_tokens < c.seq.num_prompt_tokens)
        assert 0 < prefill <= 8 or (prefill == 0 and prefilled == 70)
        prefilled += prefill
        complete_step(out)
    assert prefilled == 70  # both prompts got there, 8 tokens a step


def test_a_step_without_decodes_takes_the_whole_budget():
    sch = scheduler(prefill=8, budget=64)
    sch.add(seq("long", 50))
    out = sch.schedule(0.0)
    assert out.num_tokens == 50


def test_zero_is_not_a_bound():
    with pytest.raises(ValueError):
        scheduler(per_client=0)
    with pytest.raises(ValueError):
        scheduler(prefill=0)
