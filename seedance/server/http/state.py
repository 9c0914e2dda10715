"""The server's shared state, one per app, reached through the typed app key STATE from every transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from seedance.server.http.config import ServerConfig

if TYPE_CHECKING:
    from collections.abc import Mapping

    from seedance.engine.core_spawn import SpawnedCore
    from seedance.engine.engine_front import EngineFront
    from seedance.sessions.manager import SessionManager


# What the app (stats, expiry, drain) needs of the transports' registries: structural types, so the state
# every transport imports does not import the transports back (scripts/check_imports.py).
class JobRegistry(Protocol):
    """The polling transport's job store (server/transports/polling.py JobStore)."""

    @property
    def jobs(self) -> Mapping[str, object]: ...

    def expire(self, now: float) -> int: ...

    async def close(self) -> None: ...


class OpenWebSocket(Protocol):
    """One open WebSocket connection (server/transports/ws.py WsConnection)."""

    @property
    def requests(self) -> Mapping[str, object]: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one of `--workers N` sits (server/workers.py): its index of count, and the engine core's socket."""

    index: int
    count: int
    core_path: str

    @property
    def prefix(self) -> str:
        return f"w{self.index}/"


@dataclass
class ServerState:
    config: ServerConfig
    engine: EngineFront | None = None  # AsyncEngine (thread mode) or ProcessEngine
    jobs: JobRegistry | None = None
    sessions: SessionManager | None = None
    websockets: set[OpenWebSocket] = field(default_factory=set)
    draining: bool = False
    started_at: int = field(default_factory=lambda: int(time.time()))
    load_error: str | None = None
    on_load_failure: Callable[[], None] | None = None  # serve() stops the server: a failed load exits non-zero
    tasks: list[asyncio.Task] = field(default_factory=list)
    worker: Placement | None = None  # one of `--workers N` (server/workers.py); None: a single process
    # --engine process: the core `seedance serve` started before importing the app (loading meanwhile)
    spawned_core: SpawnedCore | None = None


STATE = web.AppKey("state", ServerState)
