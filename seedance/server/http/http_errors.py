"""HTTP errors as JSON bodies in the OpenAI shape, {"error": {"message", "type", "param", "code"}}, so the
openai SDK and plain HTTP clients both get a clear reason."""

from __future__ import annotations

import json

import msgspec
from aiohttp import web

from seedance.engine.errors import EngineError, EngineOverloaded, InvalidRequest, RequestNotFound
from seedance.protocol.errors import ERROR_CODES

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable", 500: "server_error"}

# Every `code` an HTTP error body can carry (docs/protocol.md "HTTP transports", docs/security.md): the
# protocol's codes plus the HTTP-only ones. The fuzz harness counts any other as undocumented.
HTTP_ERROR_CODES = ERROR_CODES | {"not_found", "method_not_allowed", "model_not_found", "not_ready", "shutting_down",
                                  "too_many_connections", "origin_not_allowed", "host_not_allowed",
                                  "header_not_allowed"}


class HttpError(web.HTTPException):
    """Raise from a handler; aiohttp sends it as the response."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(headers=headers, content_type="application/json",
                         text=json.dumps(error_body(status, code, message, param)))


def as_response(exc: web.HTTPException) -> web.Response:
    """The error as a plain response, for the outermost middleware to return instead of raising it on to aiohttp:
    aiohttp keeps a raised HTTPException as its response in the frame that caught it, which its own traceback holds,
    a reference cycle through every middleware's and the handler's frame, the request and its headers that only
    the cyclic collector frees. Under `seedance bench fuzz` (tens of thousands of refused bodies) that garbage made
    the gateway's collections stall its event loop, full ones for 20-33 ms of CPU (docs/reliability.md). The
    tracebacks down its context chain are dropped too: aiohttp's own 404/405 is held by the request's match info,
    which the frames of its traceback hold."""
    chained: BaseException | None = exc
    while chained is not None:
        chained.__traceback__ = None
        chained = chained.__context__
    return web.Response(status=exc.status, reason=exc.reason, headers=exc.headers, body=exc.body)


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "error"), "param": param, "code": code}}


def from_engine_error(err: EngineError) -> HttpError:
    if isinstance(err, EngineOverloaded):
        return HttpError(429, err.code, str(err), headers={"Retry-After": "1"})
    if isinstance(err, RequestNotFound):
        return HttpError(404, err.code, str(err))
    if isinstance(err, InvalidRequest):
        return HttpError(400, err.code, str(err))
    return HttpError(500, err.code, str(err))


async def read_json_object(request: web.Request, max_bytes: int) -> dict:
    if request.content_length is not None and request.content_length > max_bytes:
        raise HttpError(413, "message_too_large", f"body larger than {max_bytes} bytes")
    # StreamReader.read(n) returns what has arrived so far, not the whole body: read until EOF.
    raw = bytearray()
    while chunk := await request.content.read(max_bytes + 1 - len(raw)):
        raw += chunk
        if len(raw) > max_bytes:
            raise HttpError(413, "message_too_large", f"body larger than {max_bytes} bytes")
    return parse_json_object(bytes(raw))


def parse_json_object(raw: bytes) -> dict:
    """A JSON object, or 400 invalid_json. msgspec, not the json module: it refuses invalid UTF-8, lone UTF-16
    surrogates ("\\ud800", which no tokenizer can encode) and numbers beyond a double (1e400) as malformed;
    nesting deep enough to exhaust the recursion limit is refused the same way."""
    try:
        body = msgspec.json.decode(raw)
    except (msgspec.MsgspecError, RecursionError, ValueError) as err:
        raise HttpError(400, "invalid_json", f"body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_json", "body must be a JSON object")
    return body
