"""Smoke test of `seedance bench transports`: sane output on the synthetic backend, not speed."""

from __future__ import annotations

import importlib.util
import json

import pytest
from rich.console import Console

from seedance.bench.transports_bench import run_transports_bench

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_transports_bench_smoke(tmp_path):
    output = tmp_path / "transports.json"
    plots = tmp_path / "plots"
    console = Console(width=400, record=True)
    report = run_transports_bench(
        concurrency=[20], transports=["polling", "sse", "websocket"], duration=3.0, max_tokens=16, processes=1,
        backend="synthetic", rate=50.0, url=None, p99_bound_ms=5000.0, memory_connections=20, wrk_clients=None,
        output=str(output), plots_dir=str(plots) if HAVE_MATPLOTLIB else None, baseline="picows", console=console,
    )
    assert json.loads(output.read_text())["settings"]["concurrency"] == [20]
    assert {r["transport"] for r in report["results"]} == {"polling", "sse", "websocket"}
    for row in report["results"]:
        assert row["completed"] > 0, row
        assert row["errors"] == 0 and row["timeouts"] == 0, row
        # A server whose writer lags puts several tokens in one chunk, so chunks can be fewer than tokens.
        assert row["chunks"] >= row["completed"] > 0
        for key in ("ttft_ms", "inter_chunk_ms"):
            lat = row[key]
            assert lat["count"] > 0
            assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"], lat
        assert row["server"]["rss_mib_max"] > 0
        assert row["never_connected"] == 0 and row["failures"] == 0, row
        assert row["connections"]["connected"] == 20 and row["connections"]["time_to_all_connected_s"] > 0
        srv = row["server"]
        assert srv["cpu_us_per_chunk"] > 0 and srv["chunks_per_cpu_s"] > 0
        # Every transport counts its tokens; a chunk carries one or more (a step's, when the writer lags), but
        # SSE's last event (finish_reason, no text) is a chunk without a token.
        assert srv["tokens_per_chunk"] == row["tokens_per_chunk"]
        floor = 16 / 18 if row["transport"] == "sse" else 1.0
        assert row["tokens_per_chunk"] >= floor, row
        assert srv["cpu_us_per_token"] == pytest.approx(srv["cpu_us_per_chunk"] / row["tokens_per_chunk"])
        # The default --engine process: the engine core's CPU is its own role, apart from the gateway's.
        assert srv["gateway_cpu_s"] > 0 and srv["engine_cpu_s"] > 0
        assert srv["gateway_cpu_s"] + srv["engine_cpu_s"] + srv["other_cpu_s"] == pytest.approx(srv["cpu_s"])
        assert 0 <= srv["gateway_system_share"] < 1  # never all in the kernel
        if row["transport"] == "websocket":  # tokens are counted, however they were grouped into chunks
            assert row["tokens_per_s"] * row["elapsed_s"] >= (row["completed"] - 20) * 16
            assert row["tokens_per_s"] >= row["chunks_per_s"] > 0
    # Sockets: some of the gateway's CPU is the kernel's. Summed over the three windows: the kernel counts CPU
    # time in 10 ms ticks, and one 3 s window at 20 clients may hold under a tick of system time (read as 0.0).
    system_s = sum(r["server"]["gateway_system_share"] * r["server"]["gateway_cpu_s"] for r in report["results"])
    assert system_s > 0
    (base,) = report["baseline"]  # the bare picows server, same WebSocket load
    assert base["server_kind"] == "picows-baseline" and base["transport"] == "websocket"
    assert base["completed"] > 0 and base["failures"] == 0 and base["chunks"] >= base["completed"]
    assert base["server"]["cpu_us_per_chunk"] > 0
    assert base["tokens_per_chunk"] == 1.0  # the baseline sends one token per chunk
    assert base["server"]["gateway_cpu_s"] == base["server"]["cpu_s"]
    (ratio,) = report["ratios"]
    assert ratio["clients"] == 20 and ratio["ws_cpu_per_chunk_over_baseline"] > 0
    assert ratio["ws_gateway_cpu_per_token_over_baseline"] > 0
    assert ratio["ws_chunks_per_cpu_s_over_sse"] > 0 and ratio["ws_chunks_per_cpu_s_over_polling"] > 0
    assert set(report["knee"]) == {"polling", "sse", "websocket"}
    cold = report["cold_start"]
    assert 0 < cold["process_start_to_listening_s"] <= cold["process_start_to_ready_s"]
    assert cold["process_start_to_ready_s"] <= cold["process_start_to_first_token_s"]
    mem = report["memory"]
    assert mem["websockets_open"] == 20 and mem["kv_blocks_in_use"] > 0
    assert mem["rss_idle_mib"] > 0
    text = console.export_text()
    for column in ("gw / eng µs/chunk", "tokens/chunk", "CPU µs/token", "gw / eng µs/token", "gw sys %"):
        assert column in text
    if not HAVE_MATPLOTLIB:  # the `bench` / `test` extras install it
        return
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["transports-latency-cdf.png", "transports-memory.png", "transports-throughput.png"]
    assert all((plots / n).stat().st_size > 1000 for n in names)
