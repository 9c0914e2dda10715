"""The server's shared state, one per app, reached through the typed app key STATE from every transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from seedance.server.config import ServerConfig

if TYPE_CHECKING:
    from seedance.engine.async_engine import AsyncEngine
    from seedance.server.polling import JobStore
    from seedance.server.ws import WsConnection
    from seedance.sessions.manager import SessionManager


@dataclass
class ServerState:
    config: ServerConfig
    engine: AsyncEngine | None = None
    jobs: JobStore | None = None
    sessions: SessionManager | None = None
    websockets: set[WsConnection] = field(default_factory=set)
    draining: bool = False
    started_at: int = field(default_factory=lambda: int(time.time()))
    load_error: str | None = None
    on_load_failure: Callable[[], None] | None = None  # serve() stops the server: a failed load exits non-zero
    model_name_given: bool = False  # --model-name set: keep it rather than the model's own name
    tasks: list[asyncio.Task] = field(default_factory=list)


STATE = web.AppKey("state", ServerState)
