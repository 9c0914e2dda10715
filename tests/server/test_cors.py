"""CORS (seedance/server/http/cors.py) through the real app (build_app) on aiohttp's test server.

Most tests run without loading the model (a loading server still answers: 503 `not_ready` with Retry-After,
which is one more error response that must carry CORS headers); the SSE test loads the built-in model.
tests/e2e/test_cors_browser.py checks the same in a real browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from seedance.server.app import build_app
from seedance.server.http import cors
from seedance.server.http.config import ServerConfig
from tests.pki import AUDIENCE, ISSUER, SECRET, hs256

APP = "https://app.example"
EVIL = "https://evil.example"
CHAT = {"model": "seedance-tiny", "messages": [{"role": "user", "content": "In the beginning"}], "max_tokens": 8,
        "stream": True}


@contextlib.asynccontextmanager
async def serving(tmp_path, *, engine: bool = False, routes: list[web.RouteDef] | None = None,
                  **settings: object) -> AsyncIterator[TestClient]:
    cfg = ServerConfig.load(env={}, session_store=f"sqlite://{tmp_path / 'sessions.db'}", **settings)
    app = build_app(cfg)
    if routes:
        app.add_routes(routes)
    if not engine:
        app.on_startup.clear()  # no model: the headers do not depend on it
    async with TestClient(TestServer(app)) as client:
        if engine:
            async with asyncio.timeout(120):
                while (await client.get("/readyz")).status != 200:
                    await asyncio.sleep(0.1)
        yield client


def preflight(method: str = "POST", headers: str | None = "content-type", origin: str = APP) -> dict[str, str]:
    out = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        out["Access-Control-Request-Headers"] = headers
    return out


def cors_headers(response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


async def error_code(response) -> str:
    assert response.content_type == "application/json"
    return json.loads(await response.text())["error"]["code"]


def assert_granted(response, origin: str = APP) -> None:
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert set(response.headers["Access-Control-Expose-Headers"].split(", ")) == {
        "Retry-After", "WWW-Authenticate", "Location"}
    assert "Origin" in [v.strip() for v in response.headers["Vary"].split(",")]
    assert "Access-Control-Allow-Credentials" not in response.headers  # bearer tokens, never cookies


# ---------------------------------------------------------------------------------------------- preflight


async def test_a_preflight_from_an_allowed_origin_is_granted(tmp_path):
    async with serving(tmp_path, allowed_origins=APP, cors_max_age_s=123) as client:
        asked = "content-type, authorization, last-event-id, x-stainless-lang, x-stainless-retry-count, openai-project"
        r = await client.options("/v1/chat/completions", headers=preflight("POST", asked))
        assert r.status == 204
        assert await r.read() == b""
        assert cors_headers(r) == {
            "access-control-allow-origin": APP,
            "access-control-allow-methods": "POST",
            "access-control-allow-headers": "content-type, authorization, last-event-id, x-stainless-lang, "
                                            "x-stainless-retry-count, openai-project",
            "access-control-max-age": "123",
        }
        assert r.headers["Vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

        r = await client.options("/v1/jobs/job-123", headers=preflight("DELETE", None))
        assert r.status == 204
        assert set(r.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "HEAD", "DELETE"}
        assert "Access-Control-Allow-Headers" not in r.headers  # none asked for


@pytest.mark.parametrize(("path", "method"), [
    ("/v1/completions", "POST"), ("/v1/jobs", "POST"), ("/v1/jobs/job-1", "GET"), ("/v1/models", "GET"),
    ("/v1/tickets", "POST"), ("/v1/whoami", "GET"),
])
async def test_every_http_endpoint_takes_a_preflight(tmp_path, path, method):
    async with serving(tmp_path, allowed_origins=APP) as client:
        r = await client.options(path, headers=preflight(method, "authorization"))
        assert r.status == 204, await r.text()
        assert method in r.headers["Access-Control-Allow-Methods"].split(", ")


@pytest.mark.parametrize("origin", [EVIL, "https://sub.app.example", "http://app.example", "https://app.example:8443",
                                    "null", "not a url"])
async def test_a_preflight_from_another_origin_is_refused_without_cors_headers(tmp_path, origin, caplog):
    async with serving(tmp_path, allowed_origins=APP) as client:
        r = await client.options("/v1/chat/completions", headers=preflight(origin=origin))
        assert r.status == 403
        assert await error_code(r) == "origin_not_allowed"
        assert cors_headers(r) == {}
    assert "refused OPTIONS /v1/chat/completions from 127.0.0.1: 403 origin_not_allowed" in caplog.text


async def test_a_preflight_for_a_method_the_route_lacks_is_405(tmp_path):
    async with serving(tmp_path, allowed_origins=APP) as client:
        r = await client.options("/v1/chat/completions", headers=preflight("PUT"))
        assert r.status == 405
        assert await error_code(r) == "method_not_allowed"
        assert r.headers["Allow"] == "POST"
        assert cors_headers(r) == {}
        r = await client.options("/v1/models", headers=preflight("DELETE"))
        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
        r = await client.options("/v1/models", headers=preflight("GET\tX"))  # not a method token
        assert r.status == 405


async def test_a_preflight_asking_for_a_header_outside_the_set_is_refused(tmp_path):
    async with serving(tmp_path, allowed_origins=APP) as client:
        r = await client.options("/v1/chat/completions", headers=preflight("POST", "content-type, x-api-key, cookie"))
        assert r.status == 403
        body = json.loads(await r.text())["error"]
        assert body["code"] == "header_not_allowed"
        assert body["message"].endswith("x-api-key, cookie")
        assert cors_headers(r) == {}


async def test_a_preflight_to_an_unknown_path_is_404(tmp_path):
    async with serving(tmp_path, allowed_origins=APP) as client:
        r = await client.options("/v1/nope", headers=preflight())
        assert r.status == 404
        assert await error_code(r) == "not_found"
        assert cors_headers(r) == {}


async def test_preflights_need_no_credentials_and_no_rate_budget(tmp_path):
    """Browsers never send credentials on a preflight, so it is answered before authentication, and before
    the request rate (a refused request would otherwise fail as an opaque network error)."""
    async with serving(tmp_path, allowed_origins=APP, jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER,
                       http_requests_per_s=0.001, http_request_burst=1) as client:
        for _ in range(3):
            r = await client.options("/v1/chat/completions", headers=preflight("POST", "authorization, content-type"))
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == APP


async def test_an_options_request_that_is_not_a_preflight_is_left_alone(tmp_path):
    async with serving(tmp_path, allowed_origins=APP) as client:
        r = await client.options("/v1/chat/completions")  # no Origin
        assert r.status == 405 and await error_code(r) == "method_not_allowed"
        assert cors_headers(r) == {}
        r = await client.options("/v1/chat/completions", headers={"Access-Control-Request-Method": "POST"})
        assert r.status == 405 and cors_headers(r) == {}


# ---------------------------------------------------------------------------------------------- actual responses


async def test_responses_and_errors_for_an_allowed_origin_carry_cors_headers(tmp_path):
    async with serving(tmp_path, allowed_origins=APP) as client:
        r = await client.get("/v1/models", headers={"Origin": APP})
        assert r.status == 200
        assert_granted(r)
        r = await client.post("/v1/jobs", json={"prompt": "x"}, headers={"Origin": APP})  # the model is not loaded
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert_granted(r)
        r = await client.get("/v1/nope", headers={"Origin": APP})
        assert r.status == 404
        assert_granted(r)


async def test_the_origin_decision_is_the_security_layers(tmp_path):
    """Same list, same normalisation: exactly the origins the Origin check lets a POST through get CORS."""
    async with serving(tmp_path, allowed_origins=f"{APP}, http://[::1]:9000") as client:
        own = f"http://127.0.0.1:{client.port}"
        allowed = [APP, "HTTPS://APP.EXAMPLE:443", "http://[::1]:9000", own, f"http://localhost:{client.port}"]
        refused = [EVIL, "null", "http://app.example", f"https://127.0.0.1:{client.port}", "http://127.0.0.1:1",
                   "file://", "https://app.example/path"]
        for origin in allowed + refused:
            r = await client.post("/v1/jobs", json={"prompt": "x"}, headers={"Origin": origin})
            passed = r.status != 403
            assert passed == (origin in allowed), (origin, r.status, await r.text())
            assert r.headers.get("Access-Control-Allow-Origin") == (origin if passed else None), origin


async def test_any_origin_echoes_the_origin(tmp_path):
    async with serving(tmp_path, allowed_origins="*", insecure_any_origin=True) as client:
        for origin in (EVIL, "https://other.example:8443"):
            r = await client.options("/v1/completions", headers=preflight(origin=origin))
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == origin  # never "*"
            r = await client.get("/v1/models", headers={"Origin": origin})
            assert_granted(r, origin)


async def test_a_401_refusal_is_readable_cross_origin(tmp_path):
    async with serving(tmp_path, allowed_origins=APP, jwt_secret=SECRET, jwt_audience=AUDIENCE,
                       jwt_issuer=ISSUER) as client:
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP})
        assert r.status == 401 and await error_code(r) == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith('Bearer realm="seedance"')
        assert_granted(r)
        r = await client.post("/v1/chat/completions", json=CHAT,
                              headers={"Origin": APP, "Authorization": f"Bearer {hs256()}"})
        assert r.status == 503  # past the security layer: the model is not loaded here
        assert_granted(r)
        r = await client.post("/v1/chat/completions", json=CHAT,
                              headers={"Origin": EVIL, "Authorization": f"Bearer {hs256()}"})
        assert r.status == 403 and await error_code(r) == "origin_not_allowed"
        assert cors_headers(r) == {}


async def test_a_429_refusal_is_readable_cross_origin(tmp_path):
    async with serving(tmp_path, allowed_origins=APP, http_requests_per_s=0.001, http_request_burst=1) as client:
        assert (await client.get("/v1/models", headers={"Origin": APP})).status == 200
        r = await client.get("/v1/models", headers={"Origin": APP})
        assert r.status == 429 and await error_code(r) == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert_granted(r)


async def test_requests_without_origin_are_untouched(tmp_path):
    async with serving(tmp_path, allowed_origins=APP) as client:
        for r in (await client.get("/v1/models"), await client.post("/v1/jobs", json={"prompt": "x"}),
                  await client.get("/healthz")):
            assert cors_headers(r) == {}
            assert "Vary" not in r.headers


async def test_vary_is_extended_not_replaced(tmp_path):
    async def negotiated(request: web.Request) -> web.Response:
        return web.json_response({}, headers={"Vary": "Accept-Encoding"})

    async with serving(tmp_path, allowed_origins=APP, routes=[web.get("/negotiated", negotiated)]) as client:
        r = await client.get("/negotiated", headers={"Origin": APP})
        assert r.headers["Vary"] == "Accept-Encoding, Origin"
        assert (await client.get("/negotiated")).headers["Vary"] == "Accept-Encoding"


async def test_the_websocket_upgrade_is_not_cors(tmp_path):
    async with serving(tmp_path, allowed_origins=APP) as client:
        ws = await client.ws_connect("/v1/stream", headers={"Origin": APP})
        assert cors_headers(ws._response) == {}
        await ws.close()


async def test_an_sse_stream_carries_cors_headers(tmp_path):
    async with serving(tmp_path, engine=True, allowed_origins=APP) as client:
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP})
        assert r.status == 200 and r.content_type == "text/event-stream"
        assert_granted(r)
        body = (await r.read()).decode()
        assert body.rstrip().endswith("data: [DONE]")
        assert "Access-Control-Allow-Origin" not in (await client.post("/v1/chat/completions", json=CHAT)).headers


# ---------------------------------------------------------------------------------------------- the setting


def test_max_age_setting():
    assert ServerConfig().cors_max_age_s == 600
    assert ServerConfig.load(env={"SEEDANCE_CORS_MAX_AGE_S": "60"}).cors_max_age_s == 60
    with pytest.raises(ValueError, match="cors_max_age_s must be >= 0"):
        ServerConfig.load(env={}, cors_max_age_s=-1)


@pytest.mark.parametrize(("name", "allowed"), [
    ("Authorization", True), ("content-type", True), ("Last-Event-ID", True), ("X-Stainless-Timeout", True),
    ("OpenAI-Organization", True), ("cookie", False), ("x-api-key", False), ("x-stainless", False),
])
def test_allowed_request_headers(name, allowed):
    assert cors.header_allowed(name) is allowed
