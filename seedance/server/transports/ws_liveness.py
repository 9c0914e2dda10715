"""What both WebSocket endpoints (/v1/stream in ws.py, /v1/realtime in realtime.py) do about a client that may
not read: close it with a bounded handshake and reset a socket that still holds unsent bytes, and wake the
connection's writer when its protocol's heartbeat (protocol/flow.py) is due. The decisions are the sans-I/O
protocol's; this is the socket side of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

from aiohttp import WSCloseCode, web

from seedance.protocol import CloseCode

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0  # how long a closing peer has to answer (and read) the close frame before it is aborted


class BoundedClose:
    """One connection's close: the close frame on a task of its own (so the connection's tasks ending meanwhile
    cannot cut the handshake short), at most CLOSE_TIMEOUT_S for the peer's answer (the WebSocketResponse's
    `timeout`), then the socket dropped if the peer has not read what was sent."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, name: str) -> None:
        self.ws = ws
        self.transport = transport
        self.name = name  # for the log line
        self._task: asyncio.Future | None = None

    async def close(self, code: int, reason: str) -> None:
        if self._task is None and not self.ws.closed:
            log.info("closing %s: %d %s", self.name, code, reason)
            if code in (CloseCode.SLOW_CONSUMER, CloseCode.HEARTBEAT_TIMEOUT):
                self._reset_on_close()  # the peer does not read: its close frame may never get through
            self._task = asyncio.ensure_future(self.ws.close(code=code, message=reason.encode(), drain=False))
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    async def finish(self) -> None:
        """The connection's tasks are over: wait for a close handshake under way, then drop a socket whose peer
        still has not read what was sent (a plain close would wait for the unsent bytes forever, holding the
        file descriptor and the buffer)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        transport = self.transport
        unanswered = self._task is not None and self.ws.close_code == WSCloseCode.ABNORMAL_CLOSURE
        if transport is not None and (unanswered or transport.get_write_buffer_size() > 0):
            self._reset_on_close()
            transport.abort()

    def _reset_on_close(self) -> None:
        """Linger 0: closing the socket sends a reset, so the kernel drops what it still holds for a peer that
        does not read, instead of keeping it as an orphan socket for minutes."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class HeartbeatTimer:
    """Wakes the writer when the heartbeat is due (`due_at()`, the protocol's clock): its tick then pings, or
    closes (4000), and moves the next one on; the writer calls `arm` again. A timer, not a task: it only wakes."""

    def __init__(self, ws: web.WebSocketResponse, wake: asyncio.Event, due_at: Callable[[], float]) -> None:
        self.ws = ws
        self.wake = wake
        self.due_at = due_at
        self.loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        if self._handle is None and not self.ws.closed:
            self._handle = self.loop.call_at(self.due_at(), self._due)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> None:
        self._handle = None
        self.wake.set()
