"""What every HTTP handler that needs the model checks first: the engine is up and not draining, and the
request's optional `model` names the served one."""

from __future__ import annotations

from aiohttp import web

from seedance.engine.async_engine import AsyncEngine
from seedance.server.http.http_errors import HttpError
from seedance.server.http.state import STATE


def ready_engine(request: web.Request) -> AsyncEngine:
    """The engine, or 503 (loading: with Retry-After; draining)."""
    state = request.app[STATE]
    if state.engine is None:
        raise HttpError(503, "not_ready", "model is loading", headers={"Retry-After": "1"})
    if state.draining:
        raise HttpError(503, "shutting_down", "server is shutting down")
    return state.engine


def check_model(request: web.Request, body: dict) -> None:
    """404 model_not_found when `model` is given and is not the served model's id."""
    model = body.get("model")
    served = request.app[STATE].config.model_name
    if model is not None and model != served:
        raise HttpError(404, "model_not_found", f"model {model!r} is not served here; see /v1/models", "model")
