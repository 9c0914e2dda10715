"""What both WebSocket endpoints (/v1/stream in ws.py, /v1/realtime in realtime.py) do about a client that may
not read: close it with a bounded handshake and reset a socket that still holds unsent bytes, and wake the
connection's writer when its protocol's heartbeat (protocol/flow.py) is due. The decisions are the sans-I/O
protocol's; this is the socket side of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from seedance.server.transports.writer_wake import Wake

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0  # how long a closing peer has to answer (and read) the close frame before it is reset
DRAIN_POLL_S = 0.05  # how often a closing connection looks whether its peer has taken the rest

try:  # the kernel's unsent bytes of a socket (Linux SIOCOUTQ; elsewhere only the transport's buffer counts)
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):
    _SIOCOUTQ = None


class BoundedClose:
    """One connection's close: the close frame on a task of its own (so the connection's tasks ending meanwhile
    cannot cut the handshake short), then at most CLOSE_TIMEOUT_S from the close for the peer to take what was
    sent, the close frame included; a peer that has not taken it by then has its socket reset.

    aiohttp closes its transport as soon as the close frame is written when another task is reading, and a closed
    transport's unsent bytes would then be lost to an immediate reset (or left to the kernel as an orphan socket for
    minutes). So the socket is held by a duplicate descriptor from the close on: the kernel keeps delivering to a
    peer that reads, and the reset stays ours to send."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, name: str) -> None:
        self.ws = ws
        self.transport = transport
        self.name = name  # for the log line
        self._task: asyncio.Future | None = None
        self._held: socket.socket | None = None  # the duplicate descriptor, from the close to the end
        self._deadline = 0.0  # the loop's time by which the peer must have taken everything

    async def close(self, code: int, reason: str) -> None:
        if self._task is None and not self.ws.closed:
            log.info("closing %s: %d %s", self.name, code, reason)
            self._hold()
            self._task = asyncio.ensure_future(self.ws.close(code=code, message=reason.encode(), drain=False))
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    async def finish(self) -> None:
        """The connection's tasks are over: wait for a close handshake under way, give the peer the rest of
        CLOSE_TIMEOUT_S to take what is still unsent (polled every DRAIN_POLL_S), then reset the socket if it has
        not: a plain close would wait for the unsent bytes forever, holding the buffers. Runs to its end even
        when the caller is cancelled meanwhile (run_to_end): aiohttp cancels a handler whose transport it closed
        (handler_cancellation), and a cut-short finish would keep the held descriptor open for ever: the peer
        would never see the stream end, and the descriptor would leak."""
        await run_to_end(self._finish())

    async def _finish(self) -> None:
        if self._task is not None:
            await asyncio.wait([self._task])  # its outcome is its own (a failed close frame: the reset below)
        transport = self.transport
        if transport is None:
            return
        self._hold()  # (no close of ours: the peer closed, or is gone)
        held, loop = self._held, asyncio.get_running_loop()
        try:
            while _unsent(transport, held) and loop.time() < self._deadline:
                await asyncio.sleep(DRAIN_POLL_S)
            if _unsent(transport, held):
                log.info("resetting %s: the peer did not take the last %d bytes", self.name, _unsent(transport, held))
                _reset_on_close(held or transport.get_extra_info("socket"))
                transport.abort()
        finally:
            if held is not None:
                held.close()

    def _hold(self) -> None:
        if self._held is not None or self.transport is None:
            return
        self._deadline = asyncio.get_running_loop().time() + CLOSE_TIMEOUT_S
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError, ValueError):
            if (fd := sock.fileno()) >= 0:
                self._held = socket.socket(fileno=os.dup(fd))


_TO_THE_END: set[asyncio.Future] = set()  # teardowns under way: the loop holds tasks only weakly


async def run_to_end(teardown: Coroutine[Any, Any, None]) -> None:
    """Run a connection's teardown in a task of its own and wait for it: a cancellation of the waiting task
    (aiohttp's handler_cancellation, when the transport closes) reaches the waiter, never the teardown, which
    still releases what it holds (engine requests, a held descriptor) to its end."""
    task = asyncio.ensure_future(teardown)
    _TO_THE_END.add(task)
    task.add_done_callback(_TO_THE_END.discard)
    await asyncio.shield(task)


def _unsent(transport: asyncio.Transport, held: socket.socket | None) -> int:
    """Bytes the peer has not taken: the transport's own buffer, and what the kernel has not had acknowledged."""
    unsent = transport.get_write_buffer_size()
    if held is not None and _SIOCOUTQ is not None:
        with contextlib.suppress(OSError, ValueError):
            unsent += struct.unpack("i", fcntl.ioctl(held.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
    return unsent


def _reset_on_close(sock: socket.socket | None) -> None:
    """Linger 0: closing the socket sends a reset, so the kernel drops what it still holds for a peer that does
    not read, instead of keeping it as an orphan socket for minutes."""
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class HeartbeatTimer:
    """Wakes the writer when the heartbeat is due (`due_at()`, the protocol's clock): its tick then pings, or
    closes (4000), and moves the next one on; the writer calls `arm` again. A timer, not a task: it only wakes."""

    def __init__(self, ws: web.WebSocketResponse, wake: Wake, due_at: Callable[[], float]) -> None:
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
