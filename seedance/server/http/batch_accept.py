"""Listening sockets that accept every waiting connection in one turn of the event loop, up to `accept_batch`.

libuv (so uvloop's `create_server`) accepts one connection per loop iteration since libuv 1.45 (libuv PR #3696:
"unix: don't accept() connections in a loop"), leaving the rest to the next poll. When the loop streams to
thousands of clients, an iteration lasts tens to hundreds of milliseconds, so one process accepted 10-100
connections per second while the kernel's accept queue held the rest for tens of seconds (issue #16: 946 of
2,000 clients never connected; docs/server-stack.md, `scripts/accept_watch.py`). Here the listening socket is
ours: on each readable event `_on_readable` accepts until the queue is empty or `accept_batch` connections are
in, and hands each to the loop with `connect_accepted_socket` (the same transports, TLS included; the protocol
factory is the connection guard's, as before).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable, Iterable

log = logging.getLogger("seedance.server")

ACCEPT_BATCH = 1024  # default connections accepted per readable event (ServerConfig.accept_batch)
EMFILE_PAUSE_S = 0.1  # out of descriptors: stop accepting this long, rather than spin on a readable socket
_RETRY = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}  # this one connection failed: go on
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def listening_sockets(host: str | Iterable[str] | None, port: int, backlog: int, reuse_address: bool = True,
                      reuse_port: bool = False) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for host (None or "": every interface) and port, as
    `loop.create_server` makes them (one per address getaddrinfo gives; IPv6 ones IPv6-only)."""
    hosts: list[str | None] = [None] if host in (None, "") else [host] if isinstance(host, str) else list(host)
    infos = []
    for h in hosts:
        for info in socket.getaddrinfo(h, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if info not in infos:
                infos.append(info)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise OSError(err.errno, f"error while attempting to bind on address {address!r}: "
                              f"{err.strerror.lower() if err.strerror else err}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class BatchAcceptServer:
    """What aiohttp's site holds as its server (`sockets`, `close`, `wait_closed`): the listening sockets, each
    read by `_on_readable`. A connection's transport and protocol come from `connect_accepted_socket`, stepped
    by `_step` until the transport has started (and, with TLS, the handshake is done)."""

    def __init__(self, sockets: list[socket.socket], factory: Callable[[], asyncio.BaseProtocol],
                 ssl_context: ssl.SSLContext | None = None, ssl_handshake_timeout: float | None = None,
                 batch: int = ACCEPT_BATCH) -> None:
        self._sockets = sockets
        self.factory = factory
        self.ssl_context = ssl_context
        self.ssl_handshake_timeout = ssl_handshake_timeout if ssl_context is not None else None
        self.batch = max(1, batch)
        self.loop = asyncio.get_running_loop()
        self.accepted = 0  # connections handed to the loop, for the tests and the curious
        self._starting: set = set()  # connect_accepted_socket coroutines waiting for their transport's start
        self._serving = True
        self._closed = asyncio.Event()
        for sock in sockets:
            self.loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(self.batch):
            try:
                conn, _address = sock.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in _RETRY:
                    continue
                if err.errno in _OUT_OF_FDS:
                    log.warning("cannot accept connections (%s): pausing accepts for %.1f s", err, EMFILE_PAUSE_S)
                    self._pause(sock)
                    return
                log.error("accept failed on %s: %s", sock.getsockname(), err)
                return
            conn.setblocking(False)
            self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        """The transport and protocol for conn, made now: `connect_accepted_socket` builds them before its one
        await (the transport's start, or with TLS the handshake), so the coroutine is stepped here rather than
        by a task, which would make them a loop turn later (tens of ms to seconds while streaming)."""
        self.accepted += 1
        coro = self.loop.connect_accepted_socket(self.factory, conn, ssl=self.ssl_context,
                                                 ssl_handshake_timeout=self.ssl_handshake_timeout)
        self._step(coro)

    def _step(self, coro, _future: asyncio.Future | None = None) -> None:
        """One step of coro, as a task would take it: to its next await of a future, resumed when that is done."""
        self._starting.discard(coro)
        try:
            future = coro.send(None)
        except StopIteration:
            return
        except (Exception, asyncio.CancelledError) as err:  # a failed TLS handshake, a peer gone: that one only
            log.debug("connection not started: %s", err)
            return
        self._starting.add(coro)  # held until it ends
        if future is None:  # a bare yield (asyncio.sleep(0)): the next turn
            self.loop.call_soon(self._step, coro)
        else:
            future.add_done_callback(lambda done: self._step(coro, done))

    def _pause(self, sock: socket.socket) -> None:
        self.loop.remove_reader(sock.fileno())

        def resume() -> None:
            if self._serving:
                self.loop.add_reader(sock.fileno(), self._on_readable, sock)

        self.loop.call_later(EMFILE_PAUSE_S, resume)

    # ---- asyncio.Server's part that aiohttp and the app use ---------------------------------------------
    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._sockets) if self._serving else []

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def close(self) -> None:
        """Stop listening; connections already accepted go on (aiohttp's shutdown ends them)."""
        if not self._serving:
            return
        self._serving = False
        for sock in self._sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
