"""The tail sampler's decisions and the spans a kept request becomes."""

from __future__ import annotations

import json
import random

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from seedance.observability.tracing import (
    ColdStart,
    RequestTimes,
    RequestTracer,
    TailSampler,
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
    for i, name in enumerate(("process_start", "app_built", "listener_ready", "engine_load_start", "model_loaded",
                              "engine_ready")):
        cold.mark(name, (1_700_000_000_000 + i) * MS)
    cold.mark("first_token", (1_700_000_000_000 + 9) * MS)
    cold.mark("first_token", (1_700_000_000_000 + 20) * MS)  # exported once
    provider.shutdown()
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    names = [s["name"] for s in spans]
    assert names.count("seedance.request") == 1 and names.count("seedance.cold_start") == 1
    assert {"imports", "listener_ready", "model_load", "engine_start", "first_token"} <= set(names)
    assert make_provider("off") is None
