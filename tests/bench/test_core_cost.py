"""The engine-core microbench (seedance/bench/core_cost.py) runs the real core loop closed-loop and accounts for
every token: N streams, one token each per step, requests replaced as they finish, the phases summing to the
core's CPU."""

from __future__ import annotations

from seedance.bench.core_cost import PHASES, run


def test_core_cost_counts_one_token_per_stream_per_step():
    out = run(40, 30, max_tokens=8)
    # every stream decodes once per step; a replaced request's first token comes with its prefill step
    assert 40 * 30 * 0.8 <= out["tokens"] <= 40 * 30
    phases = out["phase_us_per_token"]
    assert set(phases) == set(PHASES) and all(v >= 0 for v in phases.values())
    assert phases["admit"] > 0 and phases["post"] > 0  # 8-token requests: admissions in every few steps
    assert 0.7 * out["core_us_per_token"] <= sum(phases.values()) <= 1.05 * out["core_us_per_token"]
    assert out["frame_bytes_per_token"] > 10 and out["gateway_decode_us_per_token"] > 0
