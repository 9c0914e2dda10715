"""The no-server ceiling of the transport benchmark: N closed-loop streams on an in-process engine."""

from __future__ import annotations

from seedance.bench.engine_alone import engine_alone


def test_engine_alone_runs_the_closed_loop_at_the_engines_rate():
    # Synthetic backend at 50 tokens/s per stream: 4 streams can make at most ~200 tokens/s.
    out = engine_alone(4, 8, 2.0, {"synthetic_rate": 50.0, "max_num_seqs": 64, "unknown_server_setting": 1})
    assert out["clients"] == 4
    assert 100 <= out["tokens_per_s"] <= 4 * 50 * 1.1
    assert out["requests_per_s"] > 0
