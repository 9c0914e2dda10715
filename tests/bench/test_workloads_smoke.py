"""Smoke test of `seedance bench workloads`: two real servers with the built-in model, a handful of requests per
workload; sane, complete output (not speed)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re

from typer.testing import CliRunner

from seedance.bench.pareto import pareto_front
from seedance.bench.workloads_bench import (
    CONFIGS,
    DEFAULT_CONFIGS,
    Workload,
    pareto_point,
    parse_configs,
    parse_workloads,
    run_workloads_bench,
)
from seedance.cli import app, bench_workloads
from seedance.engine.config import EngineConfig

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_workloads_bench_smoke(tmp_path):
    output = tmp_path / "workloads.json"
    plots = tmp_path / "plots"
    workloads = [  # short prompts and few tokens: the matrix, not the load, is under test
        Workload("short", rate=8.0, requests=4, prompt_tokens=20, max_tokens=8),
        Workload("summary", rate=4.0, requests=3, prompt_tokens=200, max_tokens=8),
        Workload("dialogue", rate=4.0, requests=2, prompt_tokens=16, max_tokens=8, turns=3),
    ]
    report = run_workloads_bench(workloads, ["default", "kv-160"], deadline_s=60.0, output=str(output),
                                 plots_dir=str(plots) if HAVE_MATPLOTLIB else None, retries=0, settle_s=0)
    assert json.loads(output.read_text())["pareto"] == report["pareto"]
    cells = {(r["workload"], r["config"]): r for r in report["results"]}
    assert set(cells) == {(w, c) for w in ("short", "summary", "dialogue") for c in ("default", "kv-160")}
    for (workload, _config), r in cells.items():
        turns = 3 if workload == "dialogue" else 1
        assert 0.0 <= r["completion_pct"] <= 100.0
        # Light load and a generous deadline: everything completes, every turn of every conversation.
        assert r["completion_pct"] == 100.0, r
        assert r["requests_sent"] == r["requests_completed"] == r["units"] * turns
        assert r["requests_refused"] == r["requests_timeout"] == r["requests_error"] == 0
        assert r["tokens_received"] == r["requests_sent"] * 8  # ignore_eos: exactly max_tokens each
        lat, ttft = r["latency_ms"], r["ttft_ms"]
        assert 0 < ttft["p50"] <= lat["p50"] <= lat["p90"] <= lat["p99"], r
        assert r["server"]["rss_mib_max"] > 100  # torch + the model + the KV pool
        assert r["stats_samples"] > 0  # /stats is polled; a request this short can fall between two polls
        if workload == "summary":  # ~200-token passages from different places: no shared prefix
            assert r["prompt_tokens_mean"] >= 200
            assert r["prefix_cache_hit_rate"] < 0.5
        if workload == "dialogue":  # later turns reuse the session's pinned KV, which stays in use between turns
            assert r["peak_kv_blocks"] > 0
            assert r["kv_reuse_by_turn"][0] is not None and r["kv_reuse_by_turn"][0] < 0.5
            assert r["kv_reuse_mean"] > 0.5, r
            assert len(r["turn_latency_p50_ms"]) == 3
    # The KV pool is the memory the configurations trade: the default's kv_cache_tokens (32,768 tokens: 2,048
    # blocks, 192 MiB for the built-in model in float32, half in bfloat16) vs 160 blocks (15 / 7.5 MiB).
    configs = report["configs"]
    default = EngineConfig()
    assert configs["default"]["num_kv_blocks"] == default.kv_cache_tokens // default.block_size
    assert configs["kv-160"]["num_kv_blocks"] == 160
    pool_ratio = configs["default"]["kv_pool_mib"] / configs["kv-160"]["kv_pool_mib"]  # the bytes follow the blocks
    assert abs(pool_ratio - configs["default"]["num_kv_blocks"] / 160) < 0.5, pool_ratio
    # The KV pool's pages are touched lazily, so the same short workload touches about the same memory under both
    # pools: the small pool must never cost more (a few MiB of RSS noise allowed), not visibly less.
    small, default_rss = (cells[("short", c)]["server"]["rss_mib_max"] for c in ("kv-160", "default"))
    assert small <= default_rss + 8, (small, default_rss)
    # Pareto: non-empty per workload, exactly the front of the recorded points.
    for workload in ("short", "summary", "dialogue"):
        rows = [r for r in report["results"] if r["workload"] == workload]
        expected = {rows[i]["config"] for i in pareto_front([pareto_point(r) for r in rows])}
        assert set(report["pareto"][workload]) == expected and expected
        assert {r["config"] for r in rows if r["pareto"]} == expected
    if HAVE_MATPLOTLIB:  # the `bench` / `test` extras install it
        names = sorted(p.name for p in plots.iterdir())
        assert names == ["workloads-pareto-2d.png", "workloads-pareto-3d.png"]
        assert all((plots / n).stat().st_size > 10_000 for n in names)


def test_workload_and_config_options():
    wl = parse_workloads("summary,short", 5, "short=2.5,summary=0.5")
    assert [(w.name, w.requests, w.rate) for w in wl] == [("summary", 5, 0.5), ("short", 5, 2.5)]
    assert [w.rate for w in parse_workloads("short,dialogue", None, "3")] == [3.0, 3.0]
    assert parse_configs("lean, default,lean") == ["lean", "default"]
    for bad in (lambda: parse_workloads("short,poetry", None, None), lambda: parse_configs("default,huge")):
        try:
            bad()
        except ValueError as err:
            assert "choose from" in str(err)
        else:
            raise AssertionError("accepted an unknown name")


def test_cli_lists_every_configuration():
    result = CliRunner().invoke(app, ["bench", "workloads", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", result.output)
    for name in CONFIGS:
        assert name in text, name
    default = inspect.signature(bench_workloads).parameters["configs"].default
    assert default == ",".join(DEFAULT_CONFIGS)
    bad = CliRunner().invoke(app, ["bench", "workloads", "--configs", "nope"])
    assert bad.exit_code == 2


def test_the_rss_fallback_counts_the_servers_children():
    """A cell too short for one sample takes its start and end RSS: the whole tree's (the engine is a child)."""
    import os
    import subprocess
    import sys

    import psutil

    from seedance.bench.workloads_bench import tree_rss_mib

    own = psutil.Process(os.getpid()).memory_info().rss / 2**20
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(200 << 20); b[::4096] = "
                              "b'x' * len(b[::4096]); print(1, flush=True); time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # its 200 MiB are resident
        assert tree_rss_mib(os.getpid()) > own + 150
    finally:
        child.kill()
        child.wait()
