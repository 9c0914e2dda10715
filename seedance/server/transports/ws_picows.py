"""/v1/stream on picows (ws_stack "picows"): the upgrade, the accept policy, and a socket for WsConnection.

The head router (server/http/head_router.py) hands a connection whose first request is `GET /v1/stream`
with `Upgrade: websocket` to the picows protocol `PicowsStream.protocol` builds. Its upgrade runs the same
accept policy as the aiohttp middleware (security.admit over an UpgradeView: Host, rate, Origin, JWT / API key /
ticket / subprotocol token, per-IP and per-token connections), answers a refusal with the same status, headers
and JSON body, selects the same subprotocol, and after the 101 refuses while loading / draining / full with the
same close codes (ws_accept). Everything after that is WsConnection's, as on aiohttp: `PicowsSocket` offers it
the part of aiohttp's WebSocketResponse it uses (ws.WsSocket). picows writes each frame straight to the
transport (no per-message coroutine or lock), which is where aiohttp's writer spent its time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib.metadata
import logging
import socket
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from picows import WSFrame, WSListener, WSTransport, WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener
from picows import WSMsgType as PicowsType

from seedance.engine.client_key import CURRENT_CLIENT
from seedance.server.http.client_identity import transport_key
from seedance.server.http.http_errors import HttpError
from seedance.server.http.observability_http import OBS, error_code
from seedance.server.http.security import SECURITY, SUBPROTOCOL, admit
from seedance.server.http.state import STATE
from seedance.server.http.upgrade_view import UpgradeView
from seedance.server.transports import ws_accept
from seedance.server.transports.ws import WsAdmission, serve_connection
from seedance.server.transports.ws_liveness import CLOSE_TIMEOUT_S

log = logging.getLogger(__name__)
_PICOWS_LOG = logging.getLogger("seedance.picows")  # picows logs every accept at INFO: keep it to warnings
_PICOWS_LOG.setLevel(logging.WARNING)
# Handed to picows as a LoggerAdapter, not a Logger: for a Logger it builds a child Logger per connection
# (named by its descriptor), which every connection would carry and every accept would pay for.
_PICOWS_LOGGER = logging.LoggerAdapter(_PICOWS_LOG, {})
_TYPES = {WSMsgType.TEXT: PicowsType.TEXT, WSMsgType.BINARY: PicowsType.BINARY}
_CLOSED = WSMessage(WSMsgType.CLOSED, None, None)
READ_PAUSE_MESSAGES = 64  # client messages queued for the reader before the socket stops being read
# picows' read buffer per connection to start with (its default is 16 KiB): client messages are small, and
# it doubles when one needs more; what an idle connection costs (issue #16: <= 20 KiB each)
READ_BUFFER_BYTES = 4096
PROBE_TIMEOUT_S = 2.0  # the start-up probe's handshake and one frame over a socket pair take about a millisecond


class PicowsSocket(WSListener):
    """One connection's picows side, as WsConnection reads it: frames become aiohttp-shaped messages on a
    bounded queue (fragments reassembled up to max_message_bytes), sends go straight to picows, and close()
    waits (CLOSE_TIMEOUT_S) for the peer's close frame as aiohttp's does."""

    __slots__ = ("_parts", "_parts_size", "_parts_type", "_peer_closed", "_queue", "_reading", "_waiter",
                 "close_code", "closed", "max_message_bytes", "on_open", "transport", "ws")  # no __dict__: one per
    # connection (WSListener already takes the weak references picows holds its listener by)

    def __init__(self, max_message_bytes: int, on_open: Callable[[PicowsSocket], None]) -> None:
        self.max_message_bytes = max_message_bytes
        self.on_open = on_open
        self.ws: WSTransport | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False  # our close frame is sent, or the peer is gone
        self.close_code: int | None = None
        self._queue: collections.deque[WSMessage] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._peer_closed: asyncio.Future | None = None
        self._parts: list[bytes] | None = None  # a fragmented message so far
        self._parts_type = PicowsType.TEXT
        self._parts_size = 0
        self._reading = True

    # ---- picows' callbacks --------------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ws = transport
        self.transport = transport.underlying_transport
        self._peer_closed = asyncio.get_running_loop().create_future()
        self.on_open(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == PicowsType.TEXT or kind == PicowsType.BINARY:
            if frame.fin and self._parts is None:
                self._push_data(kind, frame.get_payload_as_bytes())
            elif self._parts is None:
                self._parts, self._parts_type, self._parts_size = [], kind, 0
                self._add_part(frame)
            else:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "a new message inside a fragmented one")
        elif kind == PicowsType.CONTINUATION:
            if self._parts is None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "continuation without a message")
            elif self._add_part(frame) and frame.fin:
                data, self._parts = b"".join(self._parts), None
                self._push_data(self._parts_type, data)
        elif kind == PicowsType.PONG:
            self._push(WSMessage(WSMsgType.PONG, frame.get_payload_as_bytes(), None))
        elif kind == PicowsType.CLOSE:
            code = frame.get_close_code()
            if not self.closed:  # the peer closes first: answer with its code, as aiohttp does
                self.closed = True
                self.close_code = int(code.value if hasattr(code, "value") else code)
                transport.send_close(code)
                transport.disconnect()
            self._peer_close()
            self._push(WSMessage(WSMsgType.CLOSE, self.close_code, None))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if self.close_code is None:
            self.close_code = WSCloseCode.ABNORMAL_CLOSURE
        self._peer_close()
        self._push(_CLOSED)

    def pause_writing(self) -> None:
        pass  # the water marks of protocol/flow.py decide (WsConnection reads the buffered bytes)

    def resume_writing(self) -> None:
        pass

    # ---- what WsConnection calls --------------------------------------------------------------------
    async def receive(self) -> WSMessage:
        while not self._queue:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        msg = self._queue.popleft()
        if not self._reading and len(self._queue) < READ_PAUSE_MESSAGES // 2 and self.transport is not None:
            self._reading = True
            with contextlib.suppress(Exception):
                self.transport.resume_reading()
        return msg

    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None:
        self.send_now(message, opcode)

    async def ping(self, message: bytes = b"") -> None:
        self.ping_now(message)

    def send_now(self, message: bytes, opcode: WSMsgType) -> None:
        """send_frame without the coroutine (ws.WsDirectSocket): picows writes the frame at once."""
        if not self.closed:
            self.ws.send(_TYPES[opcode], message)

    def ping_now(self, message: bytes) -> None:
        if not self.closed:
            self.ws.send_ping(message)

    async def pong(self, message: bytes = b"") -> None:
        if not self.closed:
            self.ws.send_pong(message)

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if self.closed or self.ws is None:
            return False
        self.closed = True
        self.close_code = code
        self.ws.send_close(WSCloseCode(code) if code in WSCloseCode._value2member_map_ else code, message)
        try:
            await asyncio.wait_for(asyncio.shield(self._peer_closed), CLOSE_TIMEOUT_S)
        except TimeoutError:
            self.close_code = WSCloseCode.ABNORMAL_CLOSURE
        self.ws.disconnect()
        return True

    def exception(self) -> BaseException | None:
        return None

    # ---- internals ----------------------------------------------------------------------------------
    def _add_part(self, frame: WSFrame) -> bool:
        self._parts_size += frame.payload_size
        if self._parts_size > self.max_message_bytes:
            self._parts = None
            self._fail(WSCloseCode.MESSAGE_TOO_BIG, f"message over {self.max_message_bytes} bytes")
            return False
        self._parts.append(frame.get_payload_as_bytes())
        return True

    def _push_data(self, kind: PicowsType, data: bytes) -> None:
        if kind == PicowsType.BINARY:
            self._push(WSMessage(WSMsgType.BINARY, data, None))
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text message")
            return
        self._push(WSMessage(WSMsgType.TEXT, text, None))

    def _fail(self, code: int, reason: str) -> None:
        """A frame aiohttp would refuse: close with its code, and end the reader."""
        log.info("websocket error: %s: closing with %d", reason, code)
        if not self.closed and self.ws is not None:
            self.closed = True
            self.close_code = code
            self.ws.send_close(WSCloseCode(code), reason.encode())
            self.ws.disconnect()
        self._push(WSMessage(WSMsgType.ERROR, None, None))

    def _push(self, msg: WSMessage) -> None:
        self._queue.append(msg)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._reading and len(self._queue) >= READ_PAUSE_MESSAGES and self.transport is not None:
            self._reading = False  # the reader is behind: stop reading the socket (aiohttp's reader does too)
            with contextlib.suppress(Exception):
                self.transport.pause_reading()

    def _peer_close(self) -> None:
        if self._peer_closed is not None and not self._peer_closed.done():
            self._peer_closed.set_result(None)


@functools.cache
def _protocol_class() -> type:
    """picows' server protocol, telling the head router's guard when the connection ends. WSProtocol is picows'
    internal class (not its public API, hence the start-up probe), imported here so that a picows without it
    fails the probe rather than the import of the app."""
    from picows.picows import WSProtocol

    class GuardedWSProtocol(WSProtocol):
        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                self.on_lost()

    return GuardedWSProtocol


def _new_protocol(upgrade: Callable[[WSUpgradeRequest], WSUpgradeResponseWithListener], max_message_bytes: int,
                  on_lost: Callable[[], None]) -> asyncio.BaseProtocol:
    """One connection's picows protocol, its internal constructor called positionally (the probe checks the order)."""
    from picows.picows import WSAutoPingStrategy

    proto = _protocol_class()(
        None, None, False, upgrade, _PICOWS_LOGGER,
        True,  # disconnect_on_exception
        None,  # no handshake timeout of picows' own: the router has the whole head (header_timeout_s)
        False, 20.0, 20.0, WSAutoPingStrategy.PING_WHEN_IDLE,  # our heartbeat, not picows' auto-ping
        True,  # auto-pong: answer client pings (aiohttp's handler does the same)
        max_message_bytes,  # a bigger frame: close 1009, as aiohttp
        None, READ_BUFFER_BYTES)
    proto.on_lost = on_lost
    return proto


_PROBE_HEAD = (b"GET /v1/stream HTTP/1.1\r\nHost: probe\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
_PROBE_FRAME = b"\x81\x85\x00\x00\x00\x00probe"  # a masked (all-zero mask) text frame, "probe"


class _Switch(asyncio.Protocol):
    """The head router's hand-over in small: the accepted transport goes to the picows protocol at once."""

    def __init__(self, proto: asyncio.BaseProtocol) -> None:
        self.proto = proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self.proto)
        self.proto.connection_made(transport)


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of non-blocking TCP sockets on 127.0.0.1 (the accepted end first)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname(), timeout=PROBE_TIMEOUT_S)
        ours, _ = server.accept()
    for sock in (ours, theirs):
        sock.setblocking(False)
    return ours, theirs


async def probe_picows(max_message_bytes: int, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Whether the installed picows works as this module builds it: a protocol made by _new_protocol on one end
    of a loopback TCP pair answers an upgrade with 101 and hands a text frame to its listener. None when it does,
    else why not (picows' internals moved: a changed constructor, a renamed class)."""
    loop = asyncio.get_running_loop()
    received = loop.create_future()

    class Listener(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == PicowsType.TEXT and not received.done():
                received.set_result(frame.get_payload_as_bytes())

    listener = Listener()  # held here: picows keeps only a weak reference to its listener

    def upgrade(request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(), listener)

    ours, theirs = _loopback_pair()  # TCP, as picows expects (it sets TCP_NODELAY; a Unix socket pair refuses)
    transport = None
    try:
        async with asyncio.timeout(timeout_s):
            proto = _new_protocol(upgrade, max_message_bytes, lambda: None)
            transport, _ = await loop.connect_accepted_socket(lambda: _Switch(proto), ours)
            await loop.sock_sendall(theirs, _PROBE_HEAD)
            response = b""
            while b"\r\n\r\n" not in response:
                data = await loop.sock_recv(theirs, 4096)
                if not data:
                    return "the connection closed during the handshake"
                response += data
            if not response.startswith(b"HTTP/1.1 101"):
                status = response.split(b"\r\n", 1)[0]
                return f"the handshake was answered {status!r}"
            await loop.sock_sendall(theirs, _PROBE_FRAME)
            if (payload := await received) != b"probe":
                return f"the listener got {payload!r} for b'probe'"
        return None
    except TimeoutError:
        return f"no answer in {timeout_s:g} s"
    except Exception as err:  # whatever a changed picows raises: the reason is logged, the server falls back
        return f"{type(err).__name__}: {err}"
    finally:
        if transport is not None:
            transport.abort()
        else:
            ours.close()
        theirs.close()


class PicowsStream:
    """/v1/stream's picows side for one app: builds the per-connection protocol the head router switches to."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.state = app[STATE]
        self.sec = app[SECURITY]
        self.obs = app.get(OBS)
        self.tasks: set[asyncio.Task] = set()

    async def close(self) -> None:
        """After the drain (which closed every WebSocket with 1001): end what is left."""
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @classmethod
    async def start(cls, app: web.Application) -> PicowsStream | None:
        """The picows side, once the start-up probe says the installed picows works as built here; else None
        with a warning, and /v1/stream is served by aiohttp (ws_stack "aiohttp", the route always there)."""
        why = await probe_picows(app[STATE].config.max_message_bytes)
        if why is None:
            return cls(app)
        try:
            version = importlib.metadata.version("picows")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        log.warning("picows %s does not work as seedance builds it (%s): /v1/stream falls back to "
                    "ws_stack=aiohttp", version, why)
        return None

    def protocol(self, transport: asyncio.Transport, on_lost: Callable[[], None]) -> asyncio.BaseProtocol:
        """A fresh picows protocol for a connection whose head the router already holds."""
        return _new_protocol(lambda request: self._upgrade(request, transport), self.state.config.max_message_bytes,
                             on_lost)

    def _upgrade(self, request: WSUpgradeRequest, transport: asyncio.Transport) -> WSUpgradeResponseWithListener:
        view = UpgradeView.of(request.method, request.path, request.headers, transport)
        obs = self.obs
        if obs is not None and "first_connection" not in obs.cold_start.marks:
            obs.mark("first_connection")
        try:
            client, principal, slot = admit(self.sec, view, [])
        except HttpError as err:
            if obs is not None and err.status in (401, 403):
                obs.metrics.auth_refusals.labels(error_code(err)).inc()
            headers = [(k, v) for k, v in err.headers.items() if k.lower() != "content-length"]
            response = WSUpgradeResponse.create_error_response(err.status, err.text.encode(), headers)
            return WSUpgradeResponseWithListener(response, None)
        admission = WsAdmission(self.sec, principal, client)
        listener = PicowsSocket(self.state.config.max_message_bytes,
                                lambda sock: self._start(sock, admission, slot))
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        extra = {"Sec-WebSocket-Protocol": SUBPROTOCOL} if SUBPROTOCOL in offered else None
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra), listener)

    def _start(self, sock: PicowsSocket, admission: WsAdmission, slot) -> None:
        task = asyncio.get_running_loop().create_task(self._run(sock, admission, slot), name="ws-picows")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, sock: PicowsSocket, admission: WsAdmission, slot) -> None:
        gauge = self.obs.metrics.active_connections.labels("ws") if self.obs is not None else None
        if gauge is not None:
            gauge.inc()
        # the connection's client key for the engine's per-client fairness (aiohttp's middleware sets it there)
        CURRENT_CLIENT.set(transport_key(sock.transport))
        try:
            if (refused := ws_accept.accept(sock.transport, self.state)) is not None:
                await sock.close(code=refused[0], message=refused[1].encode())
                return
            await serve_connection(sock, sock.transport, self.state, admission, self.obs)
        except Exception:
            log.exception("websocket connection failed")
            await sock.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
        finally:
            slot.release()
            if gauge is not None:
                gauge.dec()
