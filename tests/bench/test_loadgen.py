"""The load generator's connection accounting: a client that never got connected is a failure, not absent."""

from __future__ import annotations

import socket
import time

from seedance.bench.loadgen import WorkerSpec, run_worker
from seedance.bench.transports_bench import connection_summary


def test_clients_whose_handshake_never_completes_are_counted_as_never_connected():
    # A listener that never accepts: the kernel completes TCP handshakes into its backlog, so every client's
    # WebSocket upgrade waits for an answer that never comes (what an overloaded server's accept queue does).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        spec = WorkerSpec("websocket", f"http://127.0.0.1:{port}", clients=5, max_tokens=4, duration_s=1.0,
                          start_at=time.time() + 0.2, request_timeout_s=1.5, ramp_s=0.5)
        result = run_worker(spec)
    assert result["never_connected"] == 5
    assert result["connected_at_s"] == [] and result["chunks"] == 0
    assert result["connect_timeouts"] >= 5


def test_connection_summary():
    summary = connection_summary(4, [0.1, 0.5, 1.2, 1.9], [0.01, 0.02, 0.03, 0.04], ramp=2.0)
    assert summary["connected"] == 4 and summary["time_to_all_connected_s"] == 1.9
    assert summary["handshakes_per_s_peak"] == 2 and summary["arrivals_per_s"] == 2.0
    assert summary["handshake_ms"]["p50"] == 25.0
    assert summary["connected_by_s"] == [2, 4]  # by the end of second 1, of second 2
    missing = connection_summary(5, [0.1, 0.5], [0.01, 0.02], ramp=0.0)
    assert missing["connected"] == 2 and missing["time_to_all_connected_s"] is None


def test_a_load_process_runs_its_level_with_the_collector_off_and_turns_it_back_on(monkeypatch):
    """Its full collections walked every client's objects (2-3.5 s pauses at 10,000 clients): none during a level."""
    import gc

    from seedance.bench import loadgen

    seen = []

    async def fake_run(spec):
        seen.append(gc.isenabled())
        return loadgen.WorkerResult()

    monkeypatch.setattr(loadgen, "_run", fake_run)
    assert gc.isenabled()
    loadgen.run_worker(loadgen.WorkerSpec("websocket", "http://127.0.0.1:1", 1, 1, 0.1, 0.0))
    assert seen == [False] and gc.isenabled()
