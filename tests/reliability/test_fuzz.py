"""The bounded CI version of `seedance bench fuzz`: a seeded sample of fuzzed WebSocket JSON, binary frames,
Realtime events and HTTP bodies against a real server, with the canary stream running. Every defect the harness
counts must be 0."""

from __future__ import annotations

import asyncio
import os

import pytest

from seedance.bench.fuzz import launch_fuzz_server, run_fuzz


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = launch_fuzz_server(str(tmp_path_factory.mktemp("fuzz")))
    yield server
    server.stop()


NO_DEFECT = {"exits": 0, "5xx": 0, "non_json_errors": 0, "hangs": 0, "undocumented": 0, "canary_mismatch": 0}


def test_a_seeded_fuzz_sample_finds_no_defect(server):
    report = asyncio.run(run_fuzz(server.ws, server.http, ws_messages=1000, binary_frames=150, http_bodies=1000,
                                  realtime_events=600, seed=12, quiet_runs=3, hang_timeout_s=20, server=server))
    assert report.defects == NO_DEFECT, (report.ws_json["examples"], report.http["examples"],
                                         report.realtime["examples"])
    assert report.ws_json["sent"] == 1000 and report.ws_binary["sent"] == 150 and report.http["sent"] == 1000
    assert report.realtime["sent"] == 600
    # the Realtime fuzz reached the event decoder and the conversation's rules, not only the JSON parser
    assert {"invalid_json", "invalid_event", "unsupported", "item_not_found"} <= set(report.realtime["replies"])
    assert report.loaded["requests"] >= 1 and report.http["replies"].get("400", 0) > 0  # it reached the parsers
    # the canary ran in its own process, quiet, under fuzz, and after it quiet again as many requests as under
    # fuzz (the reference for its max: a max grows with the samples), alone and beside the fuzz client's CPU share
    assert report.quiet["requests"] == 3
    assert report.quiet_matched["requests"] == report.loaded["requests"]
    assert report.quiet_beside_fuzz_cpu["requests"] == report.loaded["requests"]
    assert report.max_ratio["matched"] == pytest.approx(report.loaded["max_ms"] / report.quiet_matched["max_ms"],
                                                        abs=0.01)
    # each request's first message and its later ones, apart
    assert report.loaded["first_max_ms"] is not None and report.loaded["later_max_ms"] is not None
    assert max(report.loaded["first_max_ms"], report.loaded["later_max_ms"]) == pytest.approx(
        report.loaded["max_ms"])
    assert 0 < report.fuzz_client_cores <= 2
    assert report.attacker["policy"] == report.attacker["canary_policy"] == "other"
    assert "Traceback" not in server.log()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_an_idle_attacker_runs_at_sched_idle_and_the_canary_at_normal_priority(server):
    """attacker="idle": the fuzzers' thread at SCHED_IDLE, the canary process (spawned meanwhile) still normal, and
    the same defects counted."""
    report = asyncio.run(run_fuzz(server.ws, server.http, ws_messages=200, binary_frames=20, http_bodies=200,
                                  realtime_events=100, seed=13, quiet_runs=2, quiet_match=False, attacker="idle",
                                  hang_timeout_s=20, server=server))
    assert report.defects == NO_DEFECT
    assert report.attacker["policy"] == "idle" and report.attacker["canary_policy"] == "other"
    assert report.ws_json["sent"] == 200 and report.http["sent"] == 200
    assert report.quiet_matched == {} and report.quiet_beside_fuzz_cpu["requests"] == 2
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread kept its policy
