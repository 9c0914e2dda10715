"""The HTTP side of observability: the app key the transports find the hub under, the /metrics route and
a middleware counting connections per transport, HTTP refusals and auth refusals (and marking the cold
start's first client connection). Outermost, it also answers every HTTP error as a plain response
(http_errors.as_response)."""

from __future__ import annotations

import json
import uuid

from aiohttp import web

from seedance.observability.hub import Observability, process_start_ns
from seedance.server.http.http_errors import as_response
from seedance.server.http.state import STATE

# Route (canonical path) -> transport label, for connection gauges and refusals counted by the middleware.
ROUTE_TRANSPORTS = {"/v1/stream": "ws", "/v1/realtime": "realtime", "/v1/completions": "sse",
                    "/v1/chat/completions": "sse", "/v1/jobs": "polling", "/v1/jobs/{job_id}": "polling"}
# POST creates a request; the id prefix its refusal's trace gets (the ids the handlers give accepted ones)
GENERATE_ROUTES = {"/v1/completions": "cmpl", "/v1/chat/completions": "chatcmpl", "/v1/jobs": "job"}


OBS = web.AppKey("observability", Observability)


async def metrics_handler(request: web.Request) -> web.Response:
    obs = request.app[OBS]
    return web.Response(body=obs.metrics.render(), headers={"Content-Type": obs.metrics.content_type})


@web.middleware
async def middleware(request: web.Request, handler):
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    transport = ROUTE_TRANSPORTS.get(route)
    obs = request.app[OBS]
    metrics = obs.metrics
    if transport and "first_connection" not in obs.cold_start.marks:  # probes (/readyz, /stats) are not clients
        obs.mark("first_connection")
    gauge = metrics.active_connections.labels(transport) if transport else None
    if gauge is not None:
        gauge.inc()
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status in (401, 403):
            metrics.auth_refusals.labels(error_code(exc)).inc()
        if exc.status >= 400 and request.method == "POST" and route in GENERATE_ROUTES:
            # counted and traced like a refused WebSocket generate; the id is in the reply to match the trace
            request_id = exc.headers.get("X-Request-Id") or f"{GENERATE_ROUTES[route]}-refused-{uuid.uuid4().hex}"
            exc.headers["X-Request-Id"] = request_id
            obs.refused(transport, request_id, error_code(exc))
        return as_response(exc)  # returned, not raised on: no reference cycle (http_errors.as_response)
    finally:
        if gauge is not None:
            gauge.dec()


def error_code(exc: web.HTTPException) -> str:
    try:
        return str(json.loads(exc.text)["error"]["code"])
    except (TypeError, ValueError, KeyError):
        return "unknown"


def install(app: web.Application, config) -> Observability:
    """Create the app's observability, add /metrics (if enabled) and the counting middleware (outermost)."""
    obs = Observability(config, state=lambda: app.get(STATE))
    app[OBS] = obs
    started = process_start_ns()
    if started is not None:
        obs.mark("process_start", started)
    obs.mark("app_built")
    app.middlewares.insert(0, middleware)
    if config.metrics_enabled:
        app.router.add_get("/metrics", metrics_handler)

    async def close(app: web.Application) -> None:
        obs.close()

    app.on_cleanup.append(close)
    return obs


def mark(app: web.Application, name: str, when_ns: int | None = None) -> None:
    """A cold-start mark, now or at when_ns (a time_ns() taken where the phase happened, e.g. the engine thread)."""
    obs = app.get(OBS)
    if obs is not None:
        obs.mark(name, when_ns)


def cold_start_ms(app: web.Application) -> dict[str, float]:
    """The cold-start marks seen so far, ms since process start (GET /stats `cold_start_ms`)."""
    obs = app.get(OBS)
    return obs.cold_start.since_start_ms() if obs is not None else {}

