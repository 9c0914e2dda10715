"""The `tracing = file` exporter: one span per line as OpenTelemetry's JSON, appended to a file. Its own module so
that opentelemetry is imported only when tracing is on (observability/tracing.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class JsonLinesSpanExporter(SpanExporter):
    """One span per line as OpenTelemetry's JSON (ReadableSpan.to_json), appended to a file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in shutdown)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(json.loads(s.to_json(indent=None)), separators=(",", ":")) + "\n"
                        for s in spans)
        with self._lock:
            self._fh.write(lines)
            self._fh.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._fh.close()
