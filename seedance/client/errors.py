"""Exceptions the client SDK raises from a stream's iterator (or passes to a callback)."""

from __future__ import annotations


class SeedanceError(Exception):
    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class ConnectionLost(SeedanceError):
    def __init__(self, message: str) -> None:
        super().__init__("connection_lost", message)
