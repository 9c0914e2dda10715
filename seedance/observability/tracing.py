"""OpenTelemetry tracing (off by default): one trace per request with child spans for queue, prefill,
decode and send, and a cold-start trace (imports, listener, weights, tokenizer, KV pool, warm-up, first
connection, first token; docs/observability.md).

Sampling is tail-based and cheap: a request only records a handful of timestamps while it runs; at its end
the sampler decides, and only a kept request becomes spans (with their real start and end times). Kept:
every error, every request slower than `trace_slow_ms`, and a `trace_sample_rate` fraction of the rest.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # opentelemetry is imported where a span is made: tracing is off by default (~60 ms of start-up)
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)


def make_provider(kind: str, file: str = "seedance-traces.jsonl", otlp_endpoint: str | None = None,
                  service_name: str = "seedance") -> TracerProvider | None:
    """A TracerProvider of its own (not the global one) for `tracing` = console | file | otlp; None for off."""
    if kind == "off":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    from seedance.observability.span_file import JsonLinesSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if kind == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif kind == "file":
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(file)))
    elif kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as err:
            raise ValueError("tracing = otlp needs the opentelemetry-exporter-otlp-proto-http package") from err
        exporter = OTLPSpanExporter(endpoint=otlp_endpoint) if otlp_endpoint else OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        raise ValueError(f"unknown tracing exporter {kind!r}")
    return provider


@dataclass
class TailSampler:
    """Keep every error, every request slower than slow_s, and a `rate` fraction of the rest."""

    slow_s: float = 2.0
    rate: float = 0.01
    rng: random.Random = field(default_factory=random.Random)

    def keep(self, error: bool, duration_s: float) -> tuple[bool, str]:
        if error:
            return True, "error"
        if duration_s >= self.slow_s:
            return True, "slow"
        if self.rate > 0 and self.rng.random() < self.rate:
            return True, "random"
        return False, ""


@dataclass
class RequestTimes:
    """What a request records while it runs (wall-clock nanoseconds); everything a trace is built from."""

    request_id: str
    transport: str
    session: str | None = None
    submitted: int = 0
    first_step: int | None = None  # start of the engine step that produced the first token (end of queueing)
    first_token: int | None = None
    last_token: int | None = None
    finished: int | None = None  # the finish event reached the transport
    sent: int | None = None  # the end of the stream was written
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None


class RequestTracer:
    def __init__(self, provider: TracerProvider, sampler: TailSampler) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("seedance")
        self.sampler = sampler
        self.kept = 0
        self.dropped = 0

    def finish(self, t: RequestTimes) -> bool:
        """Decide, and export the request's spans if kept. Returns whether it was kept."""
        end = t.sent or t.finished or t.last_token or t.submitted
        error = t.error is not None or t.finish_reason in ("error", "refused")
        keep, why = self.sampler.keep(error, (end - t.submitted) / 1e9)
        if not keep:
            self.dropped += 1
            return False
        self.kept += 1
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        attrs = {"seedance.request_id": t.request_id, "seedance.transport": t.transport,
                 "seedance.prompt_tokens": t.prompt_tokens, "seedance.completion_tokens": t.completion_tokens,
                 "seedance.cached_tokens": t.cached_tokens, "seedance.finish_reason": t.finish_reason or "",
                 "seedance.sampled_because": why}
        if t.session:
            attrs["seedance.session"] = t.session
        root = self.tracer.start_span("seedance.request", kind=SpanKind.SERVER, start_time=t.submitted,
                                      attributes=attrs)
        if error:
            root.set_status(Status(StatusCode.ERROR, t.error or t.finish_reason or "error"))
        ctx = set_span_in_context(root)
        queue_end = t.first_step or t.first_token or t.finished
        phases = [("queue", t.submitted, queue_end),
                  ("prefill", queue_end if t.first_token else None, t.first_token),
                  ("decode", t.first_token, t.last_token if t.last_token and t.last_token > (t.first_token or 0)
                   else None),
                  ("send", t.finished, t.sent)]
        for name, start, stop in phases:
            if start is not None and stop is not None and stop >= start:
                self.tracer.start_span(name, context=ctx, start_time=start).end(end_time=stop)
        root.end(end_time=max(end, t.submitted))
        return True

    def shutdown(self) -> None:
        self.provider.shutdown()


# The cold-start phases, (span, parent span or None for the root, start marks, end mark): a span starts at the
# latest of its start marks that is present and ends at its end mark; it is left out if a mark is missing or it
# would be negative. config / weights / tokenizer / kv_alloc / warmup are timed on the engine thread where they
# happen and marked with those times; config is apart from weights because its first call imports transformers,
# which costs more than the weights. The listener is up before the model has loaded, so `listener_ready` overlaps
# `model_load`; `first_token` starts at ready or at the first client connection, whichever is later.
COLD_START_PHASES: tuple[tuple[str, str | None, tuple[str, ...], str], ...] = (
    ("imports", None, ("process_start",), "app_built"),
    ("listener_ready", None, ("app_built",), "listener_ready"),
    ("model_load", None, ("engine_load_start",), "model_loaded"),
    ("config", "model_load", ("engine_load_start",), "config_loaded"),  # import transformers, read config.json
    ("weights", "model_load", ("config_loaded", "engine_load_start"), "weights_loaded"),  # safetensors -> module
    ("tokenizer", "model_load", ("weights_loaded",), "model_loaded"),
    ("engine_start", None, ("model_loaded",), "engine_ready"),
    ("kv_alloc", "engine_start", ("model_loaded",), "kv_allocated"),  # KV pool tensors + block table
    ("warmup", "engine_start", ("kv_allocated",), "warmup_done"),  # dummy prefill + decodes (EngineConfig.warmup)
    ("first_connection", None, ("engine_ready",), "first_connection"),  # first WS upgrade / generating request
    ("first_token", None, ("engine_ready", "first_connection"), "first_token"),
)
# Every mark a cold start sets (warmup_done only with EngineConfig.warmup), in the usual order.
COLD_START_MARKS = ("process_start", "app_built", "engine_load_start", "listener_ready", "config_loaded",
                    "weights_loaded", "model_loaded", "kv_allocated", "warmup_done", "engine_ready",
                    "first_connection", "first_token")


def cold_start_spans(marks: dict[str, int]) -> list[tuple[str, str | None, int, int]]:
    """(span, parent, start, end) for every phase whose marks are present, in COLD_START_PHASES order."""
    spans = []
    for name, parent, starts, end in COLD_START_PHASES:
        begin = max((marks[s] for s in starts if s in marks), default=None)
        if begin is not None and end in marks and marks[end] >= begin:
            spans.append((name, parent, begin, marks[end]))
    return spans


class ColdStart:
    """Marks (wall-clock ns) from process start to the first token, exported once as one trace; the first
    value of a mark wins."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.marks: dict[str, int] = {}
        self.exported = False

    def mark(self, name: str, when_ns: int) -> None:
        self.marks.setdefault(name, when_ns)
        if name == "first_token":
            self.export()

    def since_start_ms(self) -> dict[str, float]:
        """Each mark seen so far in ms since process start (what GET /stats shows), in time order."""
        start = self.marks.get("process_start")
        if start is None:
            return {}
        return {k: round((v - start) / 1e6, 3) for k, v in sorted(self.marks.items(), key=lambda kv: kv[1])}

    def export(self) -> None:
        if self.exported or self.provider is None or "process_start" not in self.marks:
            return
        self.exported = True
        from opentelemetry.trace import set_span_in_context

        tracer = self.provider.get_tracer("seedance")
        m = self.marks
        end = max(m.values())
        root = tracer.start_span("seedance.cold_start", start_time=m["process_start"],
                                 attributes={f"seedance.{k}_ms": v for k, v in self.since_start_ms().items()})
        contexts = {None: set_span_in_context(root)}
        for name, parent, start, stop in cold_start_spans(m):
            span = tracer.start_span(name, context=contexts.get(parent, contexts[None]), start_time=start)
            contexts[name] = set_span_in_context(span)
            span.end(end_time=stop)
        root.end(end_time=end)
