"""One interface for session stores. A save has returned only once the snapshot is durable, so a
snapshot the server acknowledged survives a kill -9."""

from __future__ import annotations

from typing import Protocol

from seedance.sessions.snapshot import Snapshot


class SessionStore(Protocol):
    async def save(self, snapshot: Snapshot) -> None: ...

    async def load(self, session_id: str) -> Snapshot | None: ...

    async def delete(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


def open_store(url: str, ttl_s: float | None = None) -> SessionStore:
    """`sqlite:///path/sessions.db` (default), `redis://host:port/db`, or `memory://` (tests only)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from seedance.sessions.redis_store import RedisStore

        return RedisStore(url, ttl_s)
    if url.startswith("sqlite://"):
        from seedance.paths import state_dir
        from seedance.sessions.sqlite_store import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite://") or state_dir() / "sessions.db")
    if url == "memory://":
        return MemoryStore()
    raise ValueError(f"unknown session store {url!r}: use sqlite:///path.db or redis://host:port/db")


class MemoryStore:
    """Process-local, not durable: for tests of the session logic only."""

    def __init__(self) -> None:
        self.data: dict[str, Snapshot] = {}

    async def save(self, snapshot: Snapshot) -> None:
        self.data[snapshot.session_id] = snapshot

    async def load(self, session_id: str) -> Snapshot | None:
        return self.data.get(session_id)

    async def delete(self, session_id: str) -> None:
        self.data.pop(session_id, None)

    async def close(self) -> None:
        pass
