"""Connection guard: limits that must hold before aiohttp has parsed a request (slowloris, fd exhaustion).

aiohttp only sees a connection's client once its request headers are in, so the per-IP limit of security.py
cannot count a client that opens thousands of sockets and never finishes a header; nor does aiohttp time out
an unfinished header. This guard sits between the listening socket and aiohttp's protocol, at accept time:

- a connection is *pending* from accept, and again from the end of each request (keep-alive), until the next
  request's headers are parsed; one pending longer than `header_timeout_s` is closed;
- at most `max_pending_per_ip` pending connections per client address; a further one is closed at once
  (except from a trusted proxy, whose idle upstream keep-alive connections are all pending from one address:
  the proxy bounds its own clients' headers);
- at most `max_open` open connections in all (RLIMIT_NOFILE less `fd_reserve`, unless configured), so the
  process keeps file descriptors for its own files and for other clients. Past it, a connection is refused
  unless its address holds fewer than `FAIR_SHARE` connections, up to the hard limit (RLIMIT_NOFILE less
  `HARD_RESERVE`), so a newcomer (a health check) still gets in while one address holds the rest.

Each refusal is counted and logged (at most once a second per reason, with the count since the last line).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from seedance.server.http.batch_accept import ACCEPT_BATCH, BatchAcceptServer, listening_sockets
from seedance.server.http.keepalive import apply_keepalive

log = logging.getLogger("seedance.security")
FAIR_SHARE = 4  # connections an address may open past max_open
HARD_RESERVE = 32  # descriptors never handed to client connections


def descriptor_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass(slots=True)
class _Conn:
    ip: str
    pending: bool = True
    timer: asyncio.TimerHandle | None = None


@dataclass
class ConnectionGuard:
    header_timeout_s: float = 10.0
    max_pending_per_ip: int = 64  # 0: no limit
    max_open: int = 0  # 0: RLIMIT_NOFILE - fd_reserve
    fd_reserve: int = 256
    exempt: Callable[[str], bool] = lambda ip: False  # addresses the per-IP pending limit skips (proxies)
    conns: dict[asyncio.BaseTransport, _Conn] = field(default_factory=dict)
    pending_per_ip: Counter = field(default_factory=Counter)
    open_per_ip: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)  # by reason: pending_per_ip, max_open, header_timeout
    _logged: dict[str, tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        limit = descriptor_limit()
        self.hard_cap = max(1, limit - HARD_RESERVE)
        self.soft_cap = min(self.max_open or max(1, limit - self.fd_reserve), self.hard_cap)

    # ---- the protocol's calls ---------------------------------------------------------------------
    def admit(self, transport: asyncio.BaseTransport, ip: str) -> bool:
        if self.max_pending_per_ip and self.pending_per_ip[ip] >= self.max_pending_per_ip and not self.exempt(ip):
            return self._refuse("pending_per_ip", ip, f"{self.max_pending_per_ip} connections from {ip} have not "
                                "sent their request headers yet (max_pending_connections_per_ip)")
        total = len(self.conns)
        if total >= self.hard_cap or (total >= self.soft_cap and self.open_per_ip[ip] >= FAIR_SHARE
                                      and not self.exempt(ip)):
            return self._refuse("max_open", ip, f"{total} connections open, the limit is {self.soft_cap} "
                                f"(file descriptor limit {descriptor_limit()} less fd_reserve)")
        conn = self.conns[transport] = _Conn(ip)
        self.open_per_ip[ip] += 1
        self._pend(transport, conn)
        return True

    def forget(self, transport: asyncio.BaseTransport) -> bool:
        conn = self.conns.pop(transport, None)
        if conn is None:
            return False
        self._settle(conn)
        _drop(self.open_per_ip, conn.ip)
        return True

    # ---- the middleware's calls -------------------------------------------------------------------
    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self.conns.get(transport) if transport is not None else None
        if conn is not None:
            self._settle(conn)

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self.conns.get(transport) if transport is not None else None
        if conn is not None and not conn.pending and not transport.is_closing():
            self._pend(transport, conn)  # keep-alive: the next request's headers are under the same clock

    # ---- bookkeeping --------------------------------------------------------------------------------
    def _pend(self, transport: asyncio.BaseTransport, conn: _Conn) -> None:
        conn.pending = True
        self.pending_per_ip[conn.ip] += 1
        conn.timer = asyncio.get_running_loop().call_later(self.header_timeout_s, self._timed_out, transport)

    def _settle(self, conn: _Conn) -> None:
        if conn.pending:
            conn.pending = False
            _drop(self.pending_per_ip, conn.ip)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _timed_out(self, transport: asyncio.BaseTransport) -> None:
        conn = self.conns.get(transport)
        if conn is None or not conn.pending:
            return
        self._note("header_timeout", f"closed connections from {conn.ip} that sent no complete request headers "
                   f"within {self.header_timeout_s:g} s (header_timeout_s)")
        transport.abort()

    def _refuse(self, reason: str, ip: str, message: str) -> bool:
        self._note(reason, f"refused connection from {ip}: {message}")
        return False

    def _note(self, reason: str, message: str) -> None:
        self.refused[reason] += 1
        now = time.monotonic()
        last, count = self._logged.get(reason, (0.0, 0))
        if now - last >= 1.0:
            log.warning("%s (%d such since the last line)", message, count + 1)
            self._logged[reason] = (now, 0)
        else:
            self._logged[reason] = (last, count + 1)


def _drop(counts: Counter, key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


class GuardedProtocol(asyncio.Protocol):
    """Passes everything to aiohttp's protocol for the connection, unless the guard refuses it at accept."""

    __slots__ = ("guard", "inner", "transport")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else "unknown"
        if not self.guard.admit(transport, ip):
            transport.abort()  # the descriptor is freed now; aiohttp never sees the connection
            return
        self.transport = transport
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and self.guard.forget(self.transport):
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


# (guard, aiohttp's handler factory) -> a connection's protocol; GuardedProtocol's shape unless one is given
ProtocolFactory = Callable[[ConnectionGuard, Callable[[], asyncio.Protocol]], asyncio.Protocol]


class GuardedSite(web.TCPSite):
    """web.TCPSite whose connections pass through the guard; a TLS handshake gets header_timeout_s too.
    `protocol`: the guard's protocol per connection (head_router.HeadRouter with ws_stack "picows");
    `keepalive`: the TCP keepalive preset (keepalive.py) every accepted connection inherits."""

    def __init__(self, runner: web.AppRunner, guard: ConnectionGuard, *args,
                 protocol: ProtocolFactory | None = None, keepalive: str = "off", accept_batch: int = ACCEPT_BATCH,
                 **kwargs) -> None:
        super().__init__(runner, *args, **kwargs)
        self.guard = guard
        self.protocol = protocol or (lambda guard, handler: GuardedProtocol(guard, handler()))
        self.keepalive = keepalive
        self.accept_batch = accept_batch

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        guard = self.guard
        make = self.protocol
        # Our own accept loop (batch_accept.py): every waiting connection in one turn, not libuv's one per turn.
        sockets = listening_sockets(self._host, self._port, self._backlog, reuse_address=self._reuse_address is not
                                    False, reuse_port=bool(self._reuse_port))
        self._server = BatchAcceptServer(sockets, lambda: make(guard, server), self._ssl_context,
                                         guard.header_timeout_s, self.accept_batch)
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
        # The TCP keepalive preset on the listening sockets: Linux copies it to every accepted socket, which
        # saves each connection four setsockopt calls (and uvloop a Python socket object per call).
        for sock in self._server.sockets:
            apply_keepalive(sock, self.keepalive)


GUARD = web.AppKey("connection_guard", ConnectionGuard)


@web.middleware
async def middleware(request: web.Request, handler):
    """Headers parsed: the connection is no longer pending; when the request ends, it is again (keep-alive)."""
    guard = request.app.get(GUARD)
    if guard is None:
        return await handler(request)
    transport = request.transport
    guard.request_started(transport)
    try:
        return await handler(request)
    finally:
        guard.request_finished(transport)
