"""A refused HTTP request leaves no reference cycle behind (http_errors.as_response): raised on to aiohttp, the
HTTPException stayed in a cycle with every frame of its traceback, the request and its headers, garbage only the
cyclic collector frees; tens of thousands of refusals (`seedance bench fuzz`) made the gateway's collections stall
its event loop. The real app (build_app) on aiohttp's test server; the refusals' answers are unchanged."""

from __future__ import annotations

import gc

from aiohttp.test_utils import TestClient, TestServer

from seedance.server.app import build_app
from seedance.server.http.config import ServerConfig


def cyclic_garbage() -> list[str]:
    """The type names of what the cyclic collector finds now (kept only to be counted)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_refused_requests_leave_no_cyclic_garbage(tmp_path):
    cfg = ServerConfig.load(env={}, session_store=f"sqlite://{tmp_path / 'sessions.db'}")
    app = build_app(cfg)
    app.on_startup.clear()  # no model: these are refused before it
    async with TestClient(TestServer(app)) as client:
        refusals = [("POST", "/v1/completions", b"{not json"), ("POST", "/tokenize", b"[1, 2]"),
                    ("GET", "/no/such/route", b""), ("DELETE", "/v1/models", b"")]
        for method, path, body in refusals:  # once first: what a first request builds for good is not garbage
            await (await client.request(method, path, data=body)).read()
        cyclic_garbage()
        enabled = gc.isenabled()
        gc.disable()
        try:
            statuses = []
            for _ in range(25):
                for method, path, body in refusals:
                    reply = await client.request(method, path, data=body)
                    statuses.append((reply.status, reply.content_type, (await reply.json())["error"]["code"]))
            garbage = cyclic_garbage()
        finally:
            if enabled:
                gc.enable()
    # without a model the generation routes answer not_ready: refusals all the same
    assert set(statuses) == {(503, "application/json", "not_ready"), (404, "application/json", "not_found"),
                             (405, "application/json", "method_not_allowed")}
    # before: ~30 objects a refusal in cycles, with a dozen frames each; what is left is aiohttp's own 404/405
    # route, 5 objects in a cycle of its own (the route's handler is its bound method)
    kept = {"frame", "traceback", "HttpError", "Request", "StreamWriter", "RawRequestMessage"} & set(garbage)
    assert not kept, sorted(set(garbage))
