"""Structured logs: `log_format = "json"` writes one JSON object per line, with the request and session ids
the transports put in context variables while they handle a request."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("seedance_request_id", default=None)
session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("seedance_session_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        session_id = getattr(record, "session_id", None) or session_id_var.get()
        if request_id:
            body["request_id"] = request_id
        if session_id:
            body["session_id"] = session_id
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", log_format: str = "text", stream=None) -> None:
    """(Re)configure the root logger: text (the classic format) or one JSON object per line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def set_request_context(request_id: str | None, session_id: str | None = None) -> tuple:
    """Set the ids for log lines from this task; returns tokens for reset_request_context."""
    return request_id_var.set(request_id), session_id_var.set(session_id)


def reset_request_context(tokens: tuple) -> None:
    request_id_var.reset(tokens[0])
    session_id_var.reset(tokens[1])
