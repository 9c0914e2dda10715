"""Per-process observability: the metrics registry, the request tracer and the cold-start marks, plus the
per-request recorder the transports call (a few cheap calls per chunk). No HTTP here: the /metrics route and
the counting middleware are server/http/observability_http.py, so any transport (or a test) can record."""

from __future__ import annotations

import logging
import os
import time
from time import perf_counter, time_ns

from seedance.observability.metrics import Metrics
from seedance.observability.tracing import ColdStart, RequestTimes, RequestTracer, TailSampler, make_provider

log = logging.getLogger(__name__)
request_log = logging.getLogger("seedance.requests")  # one line per finished request (an access log)


class Observability:
    def __init__(self, config, state=None) -> None:
        self.metrics = Metrics(state)
        self.provider = make_provider(config.tracing, config.tracing_file, config.tracing_otlp_endpoint)
        self.tracer = (RequestTracer(self.provider, TailSampler(config.trace_slow_ms / 1000,
                                                               config.trace_sample_rate))
                       if self.provider is not None else None)
        self.cold_start = ColdStart(self.provider)
        m = self.metrics
        self._ttft = {t: m.ttft.labels(t) for t in ("ws", "sse", "polling")}

    def request(self, transport: str, request_id: str, session: str | None = None, engine=None) -> RequestObs:
        return RequestObs(self, transport, request_id, session, engine)

    def refused(self, transport: str, request_id: str, code: str) -> None:
        self.metrics.requests.labels(transport, "refused").inc()
        if self.tracer is not None:
            now = time_ns()
            self.tracer.finish(RequestTimes(request_id, transport, submitted=now, finished=now,
                                            finish_reason="refused", error=code))

    def mark(self, name: str, when_ns: int | None = None) -> None:
        self.cold_start.mark(name, time_ns() if when_ns is None else when_ns)

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


class RequestObs:
    """One request's recorder: TTFT / inter-token histograms and the outcome counter as it goes, and the
    timestamps a trace is built from if the tail sampler keeps it."""

    __slots__ = ("done", "engine", "first", "hub", "last", "t0", "times", "transport", "wall0")

    def __init__(self, hub: Observability, transport: str, request_id: str, session: str | None, engine) -> None:
        self.hub = hub
        self.transport = transport
        self.engine = engine
        self.t0 = perf_counter()
        self.wall0 = time_ns()
        self.first: float | None = None
        self.last = 0.0
        self.times = RequestTimes(request_id, transport, session, submitted=self.wall0)
        self.done = False

    def _wall(self, t: float) -> int:
        return self.wall0 + int((t - self.t0) * 1e9)

    def tokens(self, n: int) -> None:
        """n tokens reached the transport as one chunk."""
        now = perf_counter()
        if self.first is None:
            self.first = now
            self.hub._ttft[self.transport].observe(now - self.t0)
            step = getattr(self.engine, "last_step_started", None)
            t = self.times
            t.first_token = self._wall(now)
            if step is not None and self.t0 <= step <= now:
                t.first_step = self._wall(step)
            if not self.hub.cold_start.exported:
                self.hub.cold_start.mark("first_token", t.first_token)
        elif n:
            self.hub.metrics.itl.observe(self.transport, (now - self.last) / n)
        self.last = now
        self.hub.metrics.completion_tokens.inc(self.transport, n)

    def finish(self, final, completion_tokens: int, session_turn: bool = False) -> None:
        """The request's final event reached the transport."""
        if self.done:
            return
        self.done = True
        reason = str(final.finish_reason) if final.finish_reason is not None else "unknown"
        self.hub.metrics.requests.labels(self.transport, reason).inc()
        if session_turn and final.num_prompt_tokens:
            self.hub.metrics.kv_reuse.observe(final.num_cached_tokens / final.num_prompt_tokens)
        t = self.times
        t.finished = time_ns()
        t.last_token = self._wall(self.last) if self.first is not None else None
        t.prompt_tokens, t.cached_tokens = final.num_prompt_tokens, final.num_cached_tokens
        t.completion_tokens, t.finish_reason = completion_tokens, reason
        if request_log.isEnabledFor(logging.INFO):
            ttft = f"{(self.first - self.t0) * 1000:.1f}" if self.first is not None else "-"
            request_log.info("%s %s finished: %s, prompt %d (cached %d), completion %d, ttft %s ms", self.transport,
                             t.request_id, reason, t.prompt_tokens, t.cached_tokens, completion_tokens, ttft,
                             extra={"request_id": t.request_id, "session_id": t.session})

    def sent(self) -> None:
        """The end of the stream was written (or handed to the poller): close the trace."""
        if self.times.sent is not None or not self.done:
            return
        self.times.sent = time_ns()
        if self.hub.tracer is not None:
            self.hub.tracer.finish(self.times)


def process_start_ns() -> int | None:
    """When this process started (wall-clock ns, for the cold-start imports span), to a clock tick (10 ms).

    From /proc/self/stat's start time and CLOCK_BOOTTIME: psutil's create_time adds the start time to the boot
    time /proc/stat gives in whole seconds, which put process start up to a second off."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        since_start = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        return time_ns() - since_start
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return int(psutil.Process(os.getpid()).create_time() * 1e9)
    except Exception:
        return None
