"""The last-resort middleware: an exception no handler expected is a JSON 500 with a request id, logged."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from seedance.server.app import last_resort


async def test_an_unexpected_exception_is_a_json_500_with_a_logged_request_id(caplog):
    async def broken(request: web.Request) -> web.Response:
        raise KeyError("a bug")

    app = web.Application(middlewares=[last_resort])
    app.router.add_post("/x", broken)
    async with TestClient(TestServer(app)) as client:
        with caplog.at_level(logging.ERROR, "seedance.server"):
            reply = await client.post("/x", data=b"{}")
            body = await reply.json()
    assert reply.status == 500 and reply.content_type == "application/json"
    assert body["error"]["code"] == "internal" and body["error"]["type"] == "server_error"
    error_id = reply.headers["X-Request-Id"]
    assert error_id in body["error"]["message"]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


async def test_http_errors_pass_through_unchanged():
    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application(middlewares=[last_resort])
    app.router.add_get("/y", missing)
    async with TestClient(TestServer(app)) as client:
        reply = await client.get("/y")
    assert reply.status == 404 and "X-Request-Id" not in reply.headers
