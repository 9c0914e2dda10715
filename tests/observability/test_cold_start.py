"""The cold start's engine-side phases: load times taken on the engine thread, the warm-up (which must run the
real runner and leave nothing behind), its switch, and the process start time the imports span begins at."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import torch

from seedance.engine.async_engine import AsyncEngine
from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.observability.hub import process_start_ns
from seedance.server.http.config import ServerConfig


def test_load_times_are_taken_in_phase_order():
    before = time.time_ns()
    engine = LLMEngine.from_config(EngineConfig(num_kv_blocks=64))
    t = engine.load_times
    assert list(t) == ["config_loaded", "weights_loaded", "tokenizer_loaded", "kv_allocated"]
    assert before <= t["config_loaded"] <= t["weights_loaded"] <= t["tokenizer_loaded"] <= t["kv_allocated"]
    assert t["kv_allocated"] <= time.time_ns()


def test_warmup_runs_a_prefill_and_decodes_through_the_runner_and_leaves_no_trace():
    engine = LLMEngine.from_config(EngineConfig(num_kv_blocks=64))
    steps: list[list[int]] = []
    execute = engine.runner.execute

    def counting(chunks):
        steps.append([c.num_tokens for c in chunks])
        return execute(chunks)

    engine.runner.execute = counting
    state = engine.runner.sampler.generator.get_state()
    engine.warmup(prompt_tokens=16, decode_steps=3)
    assert steps == [[16], [1], [1], [1]]  # one prefill, three decodes, on the real model
    assert "warmup_done" in engine.load_times and engine.load_times["warmup_done"] >= engine.load_times["kv_allocated"]
    stats = engine.stats()
    assert stats.steps == stats.generated_tokens == 0
    assert stats.prefix_cache_query_tokens == stats.prefix_cache_hit_tokens == 0
    assert stats.num_free_blocks == stats.num_kv_blocks and not engine.requests and not engine.has_work()
    # The unseeded sampling stream is where it was: a run's outputs do not depend on the warm-up.
    assert torch.equal(engine.runner.sampler.generator.get_state(), state)


def test_warmup_that_does_not_fit_is_skipped_not_fatal():
    engine = LLMEngine.from_config(EngineConfig(num_kv_blocks=1, block_size=4))  # 4 tokens of KV: no 16-token prompt
    engine.warmup()
    assert "warmup_done" not in engine.load_times
    assert engine.stats().num_free_blocks == 1 and not engine.requests


async def test_async_engine_warms_up_unless_switched_off():
    on = await AsyncEngine.create(EngineConfig(synthetic_rate=1000.0))
    off = await AsyncEngine.create(EngineConfig(synthetic_rate=1000.0, warmup=False))
    try:
        t = on.engine.load_times
        assert t["kv_allocated"] <= t["warmup_done"]
        assert (t["warmup_done"] - t["kv_allocated"]) / 1e9 < 2.0  # synthetic: a few 1 ms steps
        assert "warmup_done" not in off.engine.load_times and "kv_allocated" in off.engine.load_times
        assert on.stats().steps == 0 and on.stats().generated_tokens == 0
    finally:
        await on.close()
        await off.close()
    assert ServerConfig.load(env={"SEEDANCE_WARMUP": "false"}).engine.warmup is False
    assert ServerConfig.load(env={}).engine.warmup is True


def test_process_start_is_when_the_process_started_to_a_tick():
    start = process_start_ns()
    assert start is not None and start <= time.time_ns()
    assert abs(start / 1e9 - psutil.Process().create_time()) < 1.5
    # A child started now says it started now: within a clock tick or two before (start times are floored to
    # ticks), not up to a second early as psutil's create_time (a whole-second boot time plus ticks) can be.
    before = time.time_ns()
    out = subprocess.run([sys.executable, "-c", "from seedance.observability.hub import process_start_ns as p; "
                          "print(p())"], capture_output=True, text=True, check=True, timeout=60)
    child = int(out.stdout)
    assert before - 25_000_000 <= child <= before + 2_000_000_000, (child - before) / 1e6
