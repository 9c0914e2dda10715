"""Errors the engine raises to its callers; each carries a stable code the transports put on the wire."""

from __future__ import annotations


class EngineError(Exception):
    code = "engine_error"


class InvalidRequest(EngineError):
    """The request itself is wrong (bad parameters, prompt too long); retrying it unchanged fails again."""

    code = "invalid_request"


class EngineOverloaded(EngineError):
    """Admission refused because a configured bound is full; the client should back off and retry."""

    code = "overloaded"


class EngineUnavailable(EngineOverloaded):
    """The engine process is gone (process mode): nothing is admitted; /readyz says why."""


class RequestNotFound(EngineError):
    code = "not_found"
