"""CORS for the HTTP endpoints, so that a web app on another origin can `fetch()` the SSE, polling and
ticket endpoints.

The origins allowed are exactly those the Origin check of the security layer lets in (`allowed_origins`,
the server's own origins, everything only with `insecure_any_origin`): this module asks `Security` rather
than keeping a list of its own. Two parts:

- `middleware` answers preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`). It runs
  before the security middleware because browsers never send credentials on a preflight: an allowed origin
  asking for a method the route has and for headers in `ALLOWED_HEADERS` gets 204; anything else gets the
  JSON error body and no CORS headers, so the browser fails the request without sending it.
- `_on_response_prepare` adds `Access-Control-Allow-Origin` to every other response for an allowed
  `Origin`, just before its headers go out: SSE streams (prepared inside their handlers), and refusals
  (401/403/429 from the security middleware), whose JSON a page can then read.

Credentials in the CORS sense (cookies, TLS client certificates) are not used: bearer tokens travel in
`Authorization`, so `Access-Control-Allow-Credentials` is never sent. WebSocket upgrades are not CORS (the
security layer checks their Origin) and are left alone. docs/security.md describes this for operators.
"""

from __future__ import annotations

import re

from aiohttp import web

from seedance.server.http.http_errors import HttpError
from seedance.server.http.security import SECURITY, Refusal, is_websocket_upgrade

# Request headers a cross-origin page may send (compared lowercased). Besides our own (the bearer token, JSON
# bodies, SSE resumption), the OpenAI SDKs' headers, so `new OpenAI({baseURL, dangerouslyAllowBrowser: true})`
# works unchanged: openai-node sends X-Stainless-Lang/-Package-Version/-OS/-Arch/-Runtime/-Runtime-Version/
# -Retry-Count/-Timeout, the Python SDK a few more X-Stainless-* (helpers, read timeout), hence the prefix.
ALLOWED_HEADERS = frozenset({"authorization", "content-type", "last-event-id", "accept", "openai-organization",
                             "openai-project", "openai-beta"})
ALLOWED_HEADER_PREFIXES = ("x-stainless-",)
# Response headers a page's script may read besides the CORS-safelisted ones (Content-Type, Cache-Control, ...):
# the 429/503 back-off, the 401/403 challenge, and where a new polling job lives.
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate, Location"
PREFLIGHT_VARY = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")
MAX_AGE = web.AppKey("cors_max_age_s", int)
_METHOD = re.compile(r"[A-Za-z]+")


def header_allowed(name: str) -> bool:
    name = name.strip().lower()
    return name in ALLOWED_HEADERS or name.startswith(ALLOWED_HEADER_PREFIXES)


def is_preflight(request: web.Request) -> bool:
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


async def _route_methods(request: web.Request, method: str) -> tuple[bool, set[str]]:
    """Whether the path's routes take `method`, and all the methods they take (404 when no route has the path)."""
    methods: set[str] = set()
    own = request.match_info.http_exception
    if isinstance(own, web.HTTPMethodNotAllowed):
        methods |= own.allowed_methods
    elif isinstance(own, web.HTTPNotFound):
        raise HttpError(404, "not_found", "Not Found")
    if not _METHOD.fullmatch(method):
        return False, methods
    asked = await request.app.router.resolve(request.clone(method=method))
    if asked.http_exception is None:
        return True, methods | {method}
    if isinstance(asked.http_exception, web.HTTPMethodNotAllowed):
        methods |= asked.http_exception.allowed_methods
    return False, methods


async def preflight(request: web.Request) -> web.Response:
    """Answer a CORS preflight: 204 with the grants, or a refusal (logged like the security layer's)."""
    sec = request.app[SECURITY]
    origin = request.headers["Origin"]
    method = request.headers["Access-Control-Request-Method"].strip()
    asked_headers = [h.strip().lower() for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
                     if h.strip()]
    try:
        if not sec.origin_allowed(request, origin):
            raise Refusal(403, "origin_not_allowed", f"Origin {origin} is not in allowed_origins (CORS preflight)")
        supported, methods = await _route_methods(request, method)
        if not supported:
            allow = ", ".join(sorted(methods))
            raise Refusal(405, "method_not_allowed", f"{request.path} does not take {method} (it takes {allow})",
                          {"Allow": allow})
        refused = [h for h in asked_headers if not header_allowed(h)]
        if refused:
            raise Refusal(403, "header_not_allowed", f"request headers not allowed cross-origin: {', '.join(refused)}")
    except Refusal as err:
        raise sec.refuse(request, sec.client_address(request), err) from None
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ", ".join(sorted(methods)),
        "Access-Control-Max-Age": str(request.app[MAX_AGE]),
        "Vary": ", ".join(PREFLIGHT_VARY),
    }
    if asked_headers:
        headers["Access-Control-Allow-Headers"] = ", ".join(dict.fromkeys(asked_headers))
    return web.Response(status=204, headers=headers)


@web.middleware
async def middleware(request: web.Request, handler) -> web.StreamResponse:
    """Preflights are answered here, before authentication; everything else goes on unchanged."""
    if is_preflight(request):
        return await preflight(request)
    return await handler(request)


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Grant an allowed Origin the response, whatever produced it (a handler, a stream, an error, a refusal)."""
    origin = request.headers.get("Origin")
    if origin is None or is_preflight(request) or is_websocket_upgrade(request):
        return
    if not request.app[SECURITY].origin_allowed(request, origin):
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    vary = [v.strip() for v in response.headers.get("Vary", "").split(",") if v.strip()]
    if "origin" not in (v.lower() for v in vary):
        response.headers["Vary"] = ", ".join([*vary, "Origin"])


def install(app: web.Application, max_age_s: int) -> None:
    """Register the response hook; `middleware` goes in the app's list before the security middleware."""
    app[MAX_AGE] = max_age_s
    app.on_response_prepare.append(_on_response_prepare)
