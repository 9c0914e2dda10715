"""Full collections wait while connections arrive in a burst (gc_policy.py), and come back after it, or after
MAX_DEFER_S of a burst that does not end."""

from __future__ import annotations

import gc

import pytest

from seedance.server.http import gc_policy
from seedance.server.http.gc_policy import GcPolicy


@pytest.fixture
def thresholds():
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)


async def test_a_burst_defers_full_collections_and_its_end_restores_them(thresholds):
    count = [0]
    policy = GcPolicy(lambda: count[0], burst_accepts_per_s=50)
    count[0] += 500  # 500 connections in the last second
    policy._tick()
    assert gc.get_threshold()[2] > 10**6 and gc.get_threshold()[:2] == thresholds[:2]
    count[0] += 10  # the burst is over
    policy._tick()
    assert gc.get_threshold() == thresholds and policy.deferred_total_s >= 0
    policy.stop()


async def test_a_burst_that_does_not_end_gets_its_collection_after_max_defer(thresholds, monkeypatch):
    count = [0]
    policy = GcPolicy(lambda: count[0], burst_accepts_per_s=50)
    now = [0.0]
    monkeypatch.setattr(policy.loop, "time", lambda: now[0])
    count[0] += 500
    policy._tick()
    assert gc.get_threshold()[2] > 10**6
    now[0] += gc_policy.MAX_DEFER_S + 1
    count[0] += 500
    policy._tick()
    assert gc.get_threshold() == thresholds
    for _ in range(3):  # the burst goes on: no deferring again until the owed full collection has run
        now[0] += 1
        count[0] += 500
        policy._tick()
        assert gc.get_threshold() == thresholds
    gc.collect()  # a full collection (here forced; in the server CPython's own threshold starts it)
    now[0] += 1
    count[0] += 500
    policy._tick()
    assert gc.get_threshold()[2] > 10**6  # deferring again, for at most another MAX_DEFER_S
    count[0] += 10  # the burst ends
    now[0] += 1
    policy._tick()
    assert gc.get_threshold() == thresholds
    policy.stop()


async def test_stop_restores_and_zero_turns_it_off(thresholds):
    count = [0]
    policy = GcPolicy(lambda: count[0], burst_accepts_per_s=50)
    count[0] += 500
    policy._tick()
    policy.stop()
    assert gc.get_threshold() == thresholds and policy._handle is None
    off = GcPolicy(lambda: count[0], burst_accepts_per_s=0)
    off.start()
    assert off._handle is None
