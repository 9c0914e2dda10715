"""JSON log lines parse and carry the request and session ids from context."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from seedance.observability.logs import configure_logging, reset_request_context, set_request_context


@pytest.fixture
def json_logs():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    yield stream
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_ids(json_logs):
    log = logging.getLogger("seedance.test")
    log.info("before")
    ctx = set_request_context("req-9", "chat")
    log.warning("during %s", "x")
    reset_request_context(ctx)
    log.info("after", extra={"request_id": "explicit"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    got = lines(json_logs)
    assert [g["message"] for g in got] == ["before", "during x", "after", "failed"]
    assert all({"timestamp", "level", "logger", "message"} <= set(g) for g in got)
    assert "request_id" not in got[0]
    assert got[1]["request_id"] == "req-9" and got[1]["session_id"] == "chat" and got[1]["level"] == "WARNING"
    assert got[2]["request_id"] == "explicit" and "session_id" not in got[2]
    assert "ValueError: boom" in got[3]["exception"] and got[3]["logger"] == "seedance.test"


async def test_ids_are_per_task(json_logs):
    log = logging.getLogger("seedance.test")

    async def handle(request_id: str) -> None:
        set_request_context(request_id)
        await asyncio.sleep(0.01)
        log.info("done")

    await asyncio.gather(handle("a"), handle("b"))
    assert sorted(g["request_id"] for g in lines(json_logs) if g["logger"] == "seedance.test") == ["a", "b"]


def test_text_format_is_the_default(json_logs):
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    logging.getLogger("seedance.test").info("plain")
    assert stream.getvalue().rstrip().endswith("INFO seedance.test: plain")
