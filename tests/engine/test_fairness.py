"""Per-client fairness in the scheduler: a client's share of the running batch, and the prefill share of a step
that carries decodes (scheduler.py). Plain data, no model."""

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


def test_a_client_at_its_cap_waits_and_later_clients_are_admitted_past_it():
    sch = scheduler(per_client=2)
    for i in range(5):
        sch.add(seq(f"a{i}", 4, client="noisy"))
    sch.add(seq("canary", 4, client="quiet"))
    complete_step(sch.schedule(0.0))
    assert running_ids(sch) == ["a0", "a1", "canary"]  # not a0..a4 ahead of the canary
    sch.finish(sch.running[0], "stop")  # one of the noisy client's ends: its next one takes the place
    complete_step(sch.schedule(0.0))
    assert sum(s.client == "noisy" for s in sch.running) == 2
    assert "a2" in running_ids(sch)


def test_without_the_cap_a_flood_fills_the_batch_first():
    sch = scheduler(per_client=None, max_num_seqs=4)
    for i in range(5):
        sch.add(seq(f"a{i}", 4, client="noisy"))
    sch.add(seq("canary", 4, client="quiet"))
    complete_step(sch.schedule(0.0))
    assert "canary" not in running_ids(sch)


def test_the_cap_is_per_client_and_requests_without_a_client_are_not_capped():
    sch = scheduler(per_client=1)
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
