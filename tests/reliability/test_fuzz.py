"""The bounded CI version of `seedance bench fuzz`: a seeded sample of fuzzed WebSocket JSON, binary frames,
Realtime events and HTTP bodies against a real server, with the canary stream running. Every defect the harness
counts must be 0."""

from __future__ import annotations

import asyncio

from seedance.bench.fuzz import launch_fuzz_server, run_fuzz


def test_a_seeded_fuzz_sample_finds_no_defect(tmp_path):
    server = launch_fuzz_server(str(tmp_path))
    try:
        report = asyncio.run(run_fuzz(server.ws, server.http, ws_messages=1000, binary_frames=150, http_bodies=1000,
                                      realtime_events=600, seed=12, quiet_runs=3, hang_timeout_s=20, server=server))
    finally:
        server.stop()
    assert report.defects == {"exits": 0, "5xx": 0, "non_json_errors": 0, "hangs": 0, "undocumented": 0,
                              "canary_mismatch": 0}, (report.ws_json["examples"], report.http["examples"],
                                                      report.realtime["examples"])
    assert report.ws_json["sent"] == 1000 and report.ws_binary["sent"] == 150 and report.http["sent"] == 1000
    assert report.realtime["sent"] == 600
    # the Realtime fuzz reached the event decoder and the conversation's rules, not only the JSON parser
    assert {"invalid_json", "invalid_event", "unsupported", "item_not_found"} <= set(report.realtime["replies"])
    assert report.loaded["requests"] >= 1 and report.http["replies"].get("400", 0) > 0  # it reached the parsers
    # the canary ran in its own process, quiet, under fuzz and quiet again beside the fuzz client's CPU share
    assert report.quiet["requests"] == 3 and report.quiet_beside_fuzz_cpu["requests"] == 3
    assert 0 < report.fuzz_client_cores <= 2
    assert "Traceback" not in server.log()
