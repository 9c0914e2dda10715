"""The tail sampler's decisions, the spans a kept request becomes, and the cold-start trace."""

from __future__ import annotations

import itertools
import json
import random

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from seedance.observability.tracing import (
    COLD_START_MARKS,
    COLD_START_PHASES,
    ColdStart,
    RequestTimes,
    RequestTracer,
    TailSampler,
    cold_start_spans,
    make_provider,
)

MS = 1_000_000


def tracer(rate: float = 0.0, slow_s: float = 1.0) -> tuple[RequestTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return RequestTracer(provider, TailSampler(slow_s, rate, random.Random(1))), exporter


def times(duration_ms: int, reason: str = "length", error: str | None = None) -> RequestTimes:
    t0 = 1_700_000_000_000 * MS
    return RequestTimes("req-1", "ws", "chat", submitted=t0, first_step=t0 + 2 * MS, first_token=t0 + 5 * MS,
                        last_token=t0 + (duration_ms - 2) * MS, finished=t0 + (duration_ms - 1) * MS,
                        sent=t0 + duration_ms * MS, prompt_tokens=7, completion_tokens=9, finish_reason=reason,
                        error=error)


def test_sampler_keeps_errors_and_slow_requests_and_a_fraction():
    s = TailSampler(slow_s=1.0, rate=0.0)
    assert s.keep(True, 0.01) == (True, "error")
    assert s.keep(False, 1.5) == (True, "slow")
    assert s.keep(False, 0.5) == (False, "")
    s = TailSampler(slow_s=1.0, rate=0.1, rng=random.Random(7))
    kept = sum(s.keep(False, 0.01)[0] for _ in range(10_000))
    assert 800 < kept < 1200


def test_fast_successful_requests_are_dropped_at_rate_zero():
    t, exporter = tracer(rate=0.0)
    assert t.finish(times(50)) is False
    assert exporter.get_finished_spans() == () and t.dropped == 1


def test_a_kept_request_becomes_a_root_span_with_phase_children():
    t, exporter = tracer(slow_s=0.01)
    assert t.finish(times(50)) is True
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["seedance.request"]
    assert root.attributes["seedance.request_id"] == "req-1"
    assert root.attributes["seedance.transport"] == "ws"
    assert root.attributes["seedance.session"] == "chat"
    assert root.attributes["seedance.completion_tokens"] == 9
    assert root.attributes["seedance.finish_reason"] == "length"
    assert root.attributes["seedance.sampled_because"] == "slow"
    for name in ("queue", "prefill", "decode", "send"):
        assert spans[name].parent.span_id == root.context.span_id
        assert spans[name].context.trace_id == root.context.trace_id
    assert spans["queue"].end_time - spans["queue"].start_time == 2 * MS
    assert spans["prefill"].end_time - spans["prefill"].start_time == 3 * MS
    assert root.end_time - root.start_time == 50 * MS


def test_errors_are_always_kept_and_marked():
    t, exporter = tracer(rate=0.0, slow_s=100)
    assert t.finish(times(5, reason="error")) is True
    assert t.finish(RequestTimes("r2", "ws", submitted=1, finished=1, finish_reason="refused", error="overloaded"))
    roots = [s for s in exporter.get_finished_spans() if s.name == "seedance.request"]
    assert [s.status.status_code for s in roots] == [StatusCode.ERROR, StatusCode.ERROR]


def test_file_exporter_writes_json_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    provider = make_provider("file", str(path))
    RequestTracer(provider, TailSampler(0.0, 0.0)).finish(times(20))
    cold = ColdStart(provider)
    for i, name in enumerate(COLD_START_MARKS[:-1]):
        cold.mark(name, (1_700_000_000_000 + i) * MS)
    cold.mark("first_token", (1_700_000_000_000 + 20) * MS)
    cold.mark("first_token", (1_700_000_000_000 + 30) * MS)  # exported once
    provider.shutdown()
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    names = [s["name"] for s in spans]
    assert names.count("seedance.request") == 1 and names.count("seedance.cold_start") == 1
    assert {p[0] for p in COLD_START_PHASES} <= set(names)
    assert make_provider("off") is None


T0 = 1_700_000_000_000 * MS
# One plausible cold start (ms since process start): the listener is up while the model loads.
COLD = {"process_start": 0, "app_built": 900, "engine_load_start": 905, "listener_ready": 910, "config_loaded": 2500,
        "weights_loaded": 2700, "model_loaded": 2750, "kv_allocated": 2790, "warmup_done": 2830, "engine_ready": 2840,
        "first_connection": 3000, "first_token": 3050}


def cold_start(marks: dict[str, int]) -> tuple[ColdStart, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cold = ColdStart(provider)
    for name, ms in marks.items():
        cold.mark(name, T0 + ms * MS)
    return cold, exporter


def test_cold_start_phases_are_spans_nested_under_the_root_in_order():
    _cold, exporter = cold_start(COLD)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans.pop("seedance.cold_start")
    assert set(spans) == {p[0] for p in COLD_START_PHASES}
    assert root.start_time == T0 and root.end_time == T0 + 3050 * MS
    assert root.attributes["seedance.first_token_ms"] == 3050.0
    assert root.attributes["seedance.kv_allocated_ms"] == 2790.0
    parents = {"config": "model_load", "weights": "model_load", "tokenizer": "model_load",
               "kv_alloc": "engine_start", "warmup": "engine_start"}
    for name, span in spans.items():
        assert span.context.trace_id == root.context.trace_id
        want = spans[parents[name]] if name in parents else root
        assert span.parent.span_id == want.context.span_id, name
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, name
    ms = {name: ((s.start_time - T0) / MS, (s.end_time - T0) / MS) for name, s in spans.items()}
    assert ms["imports"] == (0, 900) and ms["listener_ready"] == (900, 910)
    assert ms["config"] == (905, 2500) and ms["weights"] == (2500, 2700) and ms["tokenizer"] == (2700, 2750)
    assert ms["model_load"] == (905, 2750) and ms["engine_start"] == (2750, 2840)
    assert ms["kv_alloc"] == (2750, 2790) and ms["warmup"] == (2790, 2830)
    assert ms["first_connection"] == (2840, 3000) and ms["first_token"] == (3000, 3050)
    # The leaf phases of the engine load follow one another without gaps or overlaps.
    chain = ["config", "weights", "tokenizer", "kv_alloc", "warmup"]
    assert all(ms[a][1] == ms[b][0] for a, b in itertools.pairwise(chain))


def test_cold_start_tolerates_missing_and_early_marks():
    marks = {k: v for k, v in COLD.items() if k != "warmup_done"}  # warm-up off
    marks["first_connection"] = 500  # a client connected while the model loaded
    _cold, exporter = cold_start(marks)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert "warmup" not in spans and "first_connection" not in spans
    # The first token's phase starts at ready, since the connection came earlier.
    assert spans["first_token"].start_time == T0 + 2840 * MS
    # Without a process start nothing is exported, and /stats has nothing to show yet.
    cold, exporter = cold_start({"app_built": 1, "first_token": 2})
    assert exporter.get_finished_spans() == () and cold.since_start_ms() == {}


def test_the_first_mark_wins_and_since_start_is_in_ms_and_in_time_order():
    cold = ColdStart(None)  # tracing off: marks are still kept for /stats
    cold.mark("process_start", T0)
    cold.mark("listener_ready", T0 + 20 * MS)
    cold.mark("app_built", T0 + 12_345_678)
    cold.mark("app_built", T0 + 99 * MS)
    cold.mark("first_token", T0 + 30 * MS)
    assert cold.since_start_ms() == {"process_start": 0.0, "app_built": 12.346, "listener_ready": 20.0,
                                     "first_token": 30.0}
    assert list(cold.since_start_ms()) == ["process_start", "app_built", "listener_ready", "first_token"]
    assert not cold.exported
    assert [s[0] for s in cold_start_spans({"process_start": 0, "app_built": 5})] == ["imports"]
