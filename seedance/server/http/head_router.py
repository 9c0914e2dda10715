"""One port, two stacks: the listening socket's protocol reads a connection's first request head and hands the
connection to picows (a well-formed `GET /v1/stream` WebSocket upgrade, when ws_stack is "picows") or to
aiohttp's own request handler (everything else), feeding it the bytes already read.

It is the connection guard's protocol too (conn_guard.GuardedProtocol: per-IP unfinished connections, the fd
reserve, header_timeout_s from accept), and it sits above the TLS transport, so TLS and mutual TLS work on both
stacks; with --workers the SO_REUSEPORT sockets get one router each. The router never answers a request
itself: anything it is not sure picows takes the same way aiohttp would (an odd head, a body, a head over
MAX_HEAD_BYTES or not finished yet when the connection ends) goes to aiohttp, whose parser and error bodies then
decide. The decision is `route_head`, a pure function of the bytes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Callable

from seedance.server.http.conn_guard import ConnectionGuard, GuardedProtocol

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # picows' own bound on an upgrade head; a longer head goes to aiohttp (its limits)
MAX_HEADERS = 128  # picows' own bound on header lines
_PATH = b"GET /v1/stream"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # a field value: no control characters
_CONNECTION = re.compile(rb"(?i)(?<=\r\n)connection:[^\r\n]*")
_PLAIN_CONNECTION = b"\r\nConnection: Upgrade\r\n"

# (transport, on_lost) -> the picows protocol for a connection the router hands over
Upgrade = Callable[[asyncio.Transport, Callable[[], None]], asyncio.BaseProtocol]


def route_head(head: bytes | bytearray) -> bool | None:
    """True: a complete, well-formed `GET /v1/stream` WebSocket upgrade (picows takes it); False: aiohttp takes
    the connection; None: too little has arrived to say."""
    n = min(len(head), len(_PATH))
    if head[:n] != _PATH[:n]:
        return False
    if len(head) <= len(_PATH):
        return None
    if head[len(_PATH)] not in b" ?":
        return False  # /v1/streams, /v1/stream/x: not ours
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return None if len(head) < MAX_HEAD_BYTES else False
    if end >= MAX_HEAD_BYTES:
        return False
    lines = bytes(head[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or len(lines) - 1 > MAX_HEADERS:
        return False
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            return False  # malformed, folded or odd: aiohttp's parser answers it
        key = name.lower()
        if key in headers and key in (b"upgrade", b"sec-websocket-key", b"sec-websocket-version", b"content-length",
                                      b"host"):
            return False
        headers[key] = value.strip() if key not in headers else headers[key] + b", " + value.strip()
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        return False
    if b"upgrade" not in [t.strip() for t in headers.get(b"connection", b"").lower().split(b",")]:
        return False
    if headers.get(b"sec-websocket-version") != b"13" or b"transfer-encoding" in headers:
        return False
    if headers.get(b"content-length", b"0") != b"0":
        return False
    try:
        return len(base64.b64decode(headers.get(b"sec-websocket-key", b""), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def for_picows(head: bytes) -> bytes:
    """The head as picows takes it: its handshake wants `Connection: Upgrade` alone, and browsers (Firefox)
    send `keep-alive, Upgrade`, which route_head accepts (the header has the upgrade token either way).
    A head whose one Connection header is already that (most clients') is taken as it is: 2 µs, not 9."""
    end = head.find(b"\r\n\r\n")
    if head.count(_PLAIN_CONNECTION, 0, end + 2) == 1 and head.lower().count(b"\r\nconnection:", 0, end + 2) == 1:
        return head
    return _CONNECTION.sub(b"Connection: Upgrade", head[:end]) + head[end:]


class HeadRouter(GuardedProtocol):
    """The guard's protocol that also picks the stack (route_head); aiohttp's handler is made only when it
    gets the connection."""

    __slots__ = ("decided", "head", "make_inner", "upgrade")

    def __init__(self, guard: ConnectionGuard, make_inner: Callable[[], asyncio.Protocol], upgrade: Upgrade) -> None:
        super().__init__(guard, None)  # type: ignore[arg-type]  # inner: made when aiohttp gets the connection
        self.make_inner = make_inner
        self.upgrade = upgrade
        self.head = bytearray()
        self.decided = False

    @classmethod
    def factory(cls, upgrade: Upgrade) -> Callable[[ConnectionGuard, Callable[[], asyncio.Protocol]], HeadRouter]:
        """What GuardedSite takes as `protocol`: a router per connection, handing upgrades to `upgrade`."""
        return lambda guard, make_inner: cls(guard, make_inner, upgrade)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else "unknown"
        if not self.guard.admit(transport, ip):
            transport.abort()
            return
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.decided:
            self.inner.data_received(data)
            return
        self.head += data
        verdict = route_head(self.head)
        if verdict is None:
            return
        if verdict:
            self._to_picows()
        else:
            self._to_aiohttp()

    def eof_received(self) -> bool | None:
        if not self.decided:
            self._to_aiohttp()
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and self.guard.forget(self.transport) and self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # ---- the hand-overs -----------------------------------------------------------------------------
    def _to_aiohttp(self) -> None:
        self.decided = True
        self.inner = inner = self.make_inner()
        head, self.head = bytes(self.head), bytearray()
        inner.connection_made(self.transport)
        if head:
            inner.data_received(head)

    def _to_picows(self) -> None:
        """Switch the transport to picows' protocol and replay the head into it; from here the guard hears
        of the connection's end from picows' protocol (on_lost)."""
        self.decided = True
        transport, guard = self.transport, self.guard
        head, self.head = for_picows(bytes(self.head)), bytearray()
        guard.request_started(transport)  # the head is in: no longer pending (header_timeout_s)
        proto = self.upgrade(transport, lambda: guard.forget(transport))
        transport.set_protocol(proto)
        proto.connection_made(transport)
        view = memoryview(head)
        while view:
            buf = proto.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]
            if transport.is_closing():
                break
