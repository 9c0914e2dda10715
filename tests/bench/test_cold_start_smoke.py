"""Smoke test of `seedance bench cold-start`: two real servers on the synthetic backend, every phase measured,
in order, and the JSON and the waterfall written. Sane output, not speed."""

from __future__ import annotations

import importlib.util
import json

from seedance.bench.cold_start import run_cold_start_bench
from seedance.observability.tracing import COLD_START_MARKS, COLD_START_PHASES

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_cold_start_bench_smoke(tmp_path):
    output, plot = tmp_path / "cold-start.json", tmp_path / "images" / "cold-start-waterfall.png"
    report = run_cold_start_bench(runs=2, backend="synthetic", warmup_modes=(True,), rate=200.0, max_tokens=4,
                                  output=str(output), plot=str(plot) if HAVE_MATPLOTLIB else None)
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    assert "NaN" not in output.read_text()  # strict JSON: absent figures are null
    assert report["settings"]["runs"] == 2 and len(report["runs"]) == 2
    for run in report["runs"]:
        marks = run["marks_ms"]
        assert set(marks) == set(COLD_START_MARKS), marks
        assert set(run["phases"]) == {p[0] for p in COLD_START_PHASES}, run["phases"]
        for name, parent, _starts, _end in COLD_START_PHASES:
            phase = run["phases"][name]
            assert 0 <= phase["start_ms"] <= phase["end_ms"] and phase["duration_ms"] >= 0, (name, phase)
            if parent:  # a part lies within its whole
                whole = run["phases"][parent]
                assert whole["start_ms"] <= phase["start_ms"] and phase["end_ms"] <= whole["end_ms"], name
        order = ["config", "weights", "tokenizer", "kv_alloc", "warmup", "first_connection", "first_token"]
        ends = [run["phases"][n]["end_ms"] for n in order]
        assert ends == sorted(ends)
        client = run["client"]
        assert 0 < client["listening_s"] <= client["ready_s"] <= client["connected_s"] <= client["first_token_s"]
        assert client["ttft_first_ms"] > 0 and client["ttft_second_ms"] > 0
    summary = report["summary"]["warmup_on"]
    assert summary["runs"] == 2
    assert all(p["n"] == 2 and p["duration_ms"]["mean"] >= 0 and p["duration_ms"]["std"] >= 0
               for p in summary["phases"])
    total = summary["process_start_to_first_token_ms"]["mean"]
    assert total > 0 and summary["client_ms"]["first_token_ms"]["mean"] > 0
    assert total == max(p["end_ms"]["mean"] for p in summary["phases"])  # the first token ends the cold start
    if not HAVE_MATPLOTLIB:  # the `bench` / `test` extras install it
        return
    assert report["plot"] == str(plot) and plot.stat().st_size > 5000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
