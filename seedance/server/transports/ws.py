"""WebSocket transport (/v1/stream): a thin adapter between the sans-I/O protocol and the engine.

Every protocol rule, flow control included, is protocol/server_connection.py's; what its commands do to
the engine and the sessions is server/transports/ws_commands.py's; this owns the socket. One reader (client
messages) and one writer (all the connection's streams) per connection, and a timer that wakes the writer
for the heartbeat. Each write sends everything that is ready as one WebSocket message: a JSON array when
several requests produced tokens in the same engine step, concatenated MTF1 frames for binary requests.

On a socket that sends without awaiting (picows), an engine step's delivery writes the connection's output
from its own callback (`step_ready`, the streams' listener, called once per connection per step): no event
set, no task switch per connection per step, which was a fifth of the gateway's time (docs/server-stack.md).
Whatever needs an await or a decision of the writer task (a heartbeat ping, a water mark crossed, a close,
messages queued by the reader) wakes the task instead, which runs the same turn; so does every step while
the task is inside a turn, so messages never overtake each other.

Nothing here ever waits for the client to read: aiohttp's writer would otherwise wait for the socket to drain
after every 64 KiB, and a client that stops reading would then hang the writer, the reader and the heartbeat
together, and with them the very policy that pauses and closes it. Instead every send returns at once, the
water marks bound what is buffered, and a client that stays above high water is closed (4001), its socket
aborted if it will not even take the close frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import NamedTuple, Protocol

from aiohttp import WSMessage, WSMsgType, web

from seedance.observability.hub import Observability
from seedance.protocol import CloseCode
from seedance.protocol import errors as codes
from seedance.protocol.server_connection import CloseConnection, Command, SendPing, ServerConnection
from seedance.server.http.auth import Principal
from seedance.server.http.config import ServerConfig
from seedance.server.http.observability_http import OBS
from seedance.server.http.proxy import ClientAddress
from seedance.server.http.security import CLIENT, SECURITY, SUBPROTOCOLS, Security, WsGuard, principal_of
from seedance.server.http.state import STATE, ServerState
from seedance.server.transports import ws_accept
from seedance.server.transports.read_turn import ReadTurn
from seedance.server.transports.writer_wake import WriterWake
from seedance.server.transports.ws_choices import WsRequest
from seedance.server.transports.ws_commands import WsCommands
from seedance.server.transports.ws_liveness import CLOSE_TIMEOUT_S, BoundedClose, HeartbeatTimer, run_to_end

log = logging.getLogger(__name__)

_NONE_ENDED: list = []  # _take_ready's "no request ended" (the common case): never appended to
_NEVER_DRAIN = 1 << 62  # aiohttp writer_limit: never wait for the socket to drain (the water marks bound it)


class WsSocket(Protocol):
    """The part of aiohttp's WebSocketResponse a connection uses; ws_picows.PicowsSocket is the other one."""

    @property
    def closed(self) -> bool: ...
    @property
    def close_code(self) -> int | None: ...  # 1006 (ABNORMAL_CLOSURE) when the peer never answered our close
    async def receive(self) -> WSMessage: ...
    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None: ...
    async def ping(self, message: bytes = b"") -> None: ...
    async def pong(self, message: bytes = b"") -> None: ...
    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool: ...
    def exception(self) -> BaseException | None: ...


class WsDirectSocket(WsSocket, Protocol):
    """A socket that writes a frame at once, without awaiting (ws_picows.PicowsSocket): the engine step's
    callback can then write a connection's output itself."""

    def send_now(self, message: bytes, opcode: WSMsgType) -> None: ...
    def ping_now(self, message: bytes) -> None: ...


def _text_message(texts: list[bytes]) -> bytes:
    """One write's JSON texts as one text message: an array when several."""
    return texts[0] if len(texts) == 1 else b"[" + b",".join(texts) + b"]"


def _messages(texts: list[bytes], frames: list[bytes]) -> list[tuple[bytes, WSMsgType]]:
    """One write's messages: the JSON texts as one text message (an array when several), the MTF1 frames as
    one binary message."""
    out = []
    if texts:
        out.append((_text_message(texts), WSMsgType.TEXT))
    if frames:
        out.append((b"".join(frames), WSMsgType.BINARY))
    return out


class WsConnection:
    """The socket around one connection's ServerConnection (every protocol rule, flow control included, is
    there): reads frames into it, writes what it produces, pings and closes; its engine and session
    commands go to WsCommands."""

    guard: WsGuard  # set by websocket_handler: message rate, token expiry, reauth verification
    protocol: ServerConnection[WsRequest]  # set by websocket_handler: the request table and the rules
    commands: WsCommands  # set by websocket_handler: the engine and session side

    def __init__(self, ws: WsSocket, transport: asyncio.Transport | None) -> None:
        self.ws = ws
        self.transport = transport
        direct = ws if hasattr(ws, "send_now") else None
        # the writer task exists only while it has turns or live requests (writer_wake.py: idle memory)
        self.wake = WriterWake(self._writer_turn, lambda: bool(self.protocol.requests), "ws-writer")
        self.closer = BoundedClose(ws, transport, "websocket")
        self.heartbeat = HeartbeatTimer(ws, self.wake, lambda: self.protocol.backpressure.next_heartbeat_at)
        self.loop = asyncio.get_running_loop()
        self.direct: WsDirectSocket | None = direct  # see step_ready
        self._in_turn = False  # the writer task is inside a turn (it may hold taken output across an await)
        self._ended = False
        self._closing: asyncio.Future | None = None  # the close after a failed step_ready (held: tasks are weak)

    # ---- lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        self.heartbeat.arm()
        try:
            await self._reader()
        finally:
            self._ended = True
            self.heartbeat.cancel()
            await run_to_end(self._teardown())

    async def _teardown(self) -> None:
        """The connection's end, to its end even if its handler is cancelled meanwhile (run_to_end): the writer
        stopped, every live request cancelled in the engine, the socket closed or reset."""
        await self.wake.stop()
        self.commands.connection_lost()
        await self.closer.finish()

    async def close(self, code: int, reason: str) -> None:
        """The bounded close handshake (ws_liveness.py), then the socket reset if the peer does not read."""
        await self.closer.close(code, reason)

    @property
    def requests(self) -> dict[str, WsRequest]:
        """The connection's live requests by client id: the protocol's request table."""
        return self.protocol.requests

    # ---- reading ----------------------------------------------------------------------------------
    async def _reader(self) -> None:
        turn = ReadTurn()  # a burst of buffered messages gives the loop back every READ_TURN_S (read_turn.py)
        while True:
            await turn.handled()
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and (reason := self.guard.rate_exceeded()):
                self.protocol.error(None, codes.RATE_LIMITED, reason)
                await self._pump()
                await self.close(CloseCode.POLICY_VIOLATION, reason)
                return
            if msg.type == WSMsgType.TEXT:
                self.protocol.receive_text(msg.data)
                try:
                    await self._pump()
                except Exception:  # a fault carrying out one message fails that message only
                    self.protocol.message_failed()
                    await self._pump()
            elif msg.type == WSMsgType.BINARY:
                self.protocol.receive_binary()
                await self._pump()
            elif msg.type == WSMsgType.PING:
                await self.ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                if self.protocol.receive_pong(msg.data):
                    self.wake.set()  # may resume streams paused for back-pressure
            elif msg.type == WSMsgType.ERROR:
                log.info("websocket error: %s", self.ws.exception())
                return
            else:  # CLOSE, CLOSING, CLOSED
                return

    async def _pump(self) -> None:
        """Send what the protocol queued, then carry out its commands (whose answers may queue more)."""
        protocol = self.protocol
        while True:  # both taken before any await, so the other task cannot carry out this message's part
            data, commands = protocol.data_to_send(), protocol.commands()
            if not data and not commands:
                return
            for body in data:
                await self._send(body, WSMsgType.TEXT)
            for command in commands:
                await self._do(command)

    async def _do(self, command: Command) -> None:
        if isinstance(command, SendPing):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.ping(command.payload)
        elif isinstance(command, CloseConnection):
            if command.code == CloseCode.HEARTBEAT_TIMEOUT and self.commands.obs is not None:
                self.commands.obs.metrics.heartbeat_timeouts.inc()
            await self.close(command.code, command.reason)
        else:
            await self.commands.do(command)

    # ---- writing ----------------------------------------------------------------------------------
    async def _send_batch(self, texts: list[bytes], frames: list[bytes]) -> None:
        for body, opcode in _messages(texts, frames):
            await self._send(body, opcode)

    async def _send(self, body: bytes, opcode: WSMsgType) -> None:
        """Every message goes out here (or in _send_now) and never waits for the client (writer_limit); the
        protocol counts it and may ask for a probe ping."""
        ws = self.ws
        if ws.closed:
            return
        try:  # not contextlib.suppress: this runs for every message
            await ws.send_frame(body, opcode)  # already UTF-8 JSON or MTF1: no re-encoding
            if (probe := self.protocol.wrote(len(body))) is not None:
                await ws.ping(probe)
        except (ConnectionError, RuntimeError):
            pass  # the peer went away: the reader ends it

    def _send_now(self, ws: WsDirectSocket, body: bytes, opcode: WSMsgType) -> None:
        """_send on a socket that writes at once."""
        if ws.closed:
            return
        try:
            ws.send_now(body, opcode)
            if (probe := self.protocol.wrote(len(body))) is not None:
                ws.ping_now(probe)
        except (ConnectionError, RuntimeError):
            pass  # the peer went away: the reader ends it

    def step_ready(self) -> None:
        """The engine delivered a step (or several) to this connection's streams: write their output now, from
        the delivery's callback, when the turn needs no await; else wake the writer task, which does."""
        if self._ended or self.wake.is_set():
            return  # gone, or the writer task runs soon and takes this step too
        if self.direct is not None and not self._in_turn:
            try:
                if self._write_now(self.direct):
                    return
            except Exception:  # as the writer task does: never leave the connection's streams hanging
                log.exception("websocket write failed; closing the connection")
                self._ended = True
                self._closing = asyncio.ensure_future(self.close(CloseCode.INTERNAL_ERROR, "internal error"))
                return
        self.wake.set()

    def _write_now(self, ws: WsDirectSocket) -> bool:
        """The writer task's turn, without an await. False (nothing taken or sent): the turn needs the task (a
        ping, a pause or resume, a close, a hold, messages or commands already queued)."""
        protocol = self.protocol
        transport = self.transport
        if protocol.tick(self.loop.time(), transport.get_write_buffer_size() if transport is not None else 0) \
                is not None or protocol.has_output():
            return False  # the task ticks again (the heartbeat is not due twice) and carries out what is queued
        self.heartbeat.arm()
        texts, frames, ended = self._take_ready()
        if protocol.has_output():
            for command in protocol.commands():  # what taking the events queued: pauses for credit
                self.commands.apply(command)
        if texts:  # _messages' two messages, without building their list: this runs per connection per step
            self._send_now(ws, _text_message(texts), WSMsgType.TEXT)
        if frames:
            self._send_now(ws, b"".join(frames), WSMsgType.BINARY)
        for active in ended:
            active.sent()
        return True

    def _take_ready(self) -> tuple[list[bytes], list[bytes], list[WsRequest]]:
        """Every stream's output as far as credit allows, encoded; the requests that ended leave the table."""
        protocol = self.protocol
        texts, self.commands.outbox = self.commands.outbox, []
        frames: list[bytes] = []
        ended = _NONE_ENDED
        for active in list(protocol.requests.values()):
            active.write_ready(protocol, texts, frames)
            if active.finished:
                protocol.forget(active.id)
                if ended is _NONE_ENDED:
                    ended = []
                ended.append(active)
        return texts, frames, ended

    async def _writer_turn(self) -> None:
        """One turn of the writer task (started by self.wake.set(): writer_wake.py)."""
        self._in_turn = True
        try:
            await self._write_turn()
        except asyncio.CancelledError:
            raise
        except Exception:  # never die silently: a dead writer would leave this connection's streams hanging
            log.exception("websocket writer failed; closing the connection")
            self._ended = True
            await self.wake.stop()
            await self.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._in_turn = False

    async def _write_turn(self) -> None:
        loop = self.loop
        protocol = self.protocol
        transport = self.transport
        hold = protocol.tick(loop.time(), transport.get_write_buffer_size() if transport is not None else 0)
        await self._pump()  # pauses, resumes, pings, a close
        self.heartbeat.arm()
        if hold is not None:
            if hold != math.inf:
                loop.call_later(hold, self.wake.set)  # look again soon
            return
        texts, frames, ended = self._take_ready()
        await self._pump()  # pauses for credit
        await self._send_batch(texts, frames)
        for active in ended:
            active.sent()


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """/v1/stream on aiohttp (ws_stack "aiohttp"): the middleware has admitted the upgrade."""
    state = request.app[STATE]
    config: ServerConfig = state.config
    ws = web.WebSocketResponse(autoping=False, max_msg_size=config.max_message_bytes, compress=False,
                               protocols=SUBPROTOCOLS, writer_limit=_NEVER_DRAIN, timeout=CLOSE_TIMEOUT_S)
    await ws.prepare(request)
    if (refused := ws_accept.accept(request.transport, state)) is not None:
        await ws.close(code=refused[0], message=refused[1].encode())
        return ws
    await serve_connection(ws, request.transport, state, WsAdmission(request.app[SECURITY], principal_of(request),
                                                                     request[CLIENT]), request.app.get(OBS))
    return ws


class WsAdmission(NamedTuple):
    """Who the accept policy let in, as WsGuard takes it."""

    sec: Security
    principal: Principal
    client: ClientAddress


async def serve_connection(ws: WsSocket, transport: asyncio.Transport | None, state: ServerState,
                           admission: WsAdmission, obs: Observability | None) -> None:
    """Run one accepted /v1/stream connection to its end, on either stack."""
    config = state.config
    conn = WsConnection(ws, transport)
    conn.guard = guard = WsGuard(*admission, conn)
    conn.protocol = ServerConnection(max_message_bytes=config.max_message_bytes,
                                     max_requests=config.max_requests_per_connection,
                                     scopes=guard.principal.scopes, token_auth=guard.sec.bearer_auth,
                                     draining=lambda: state.draining, log_context=guard.log_context,
                                     flow=config.flow_limits(),
                                     now=asyncio.get_running_loop().time())
    conn.commands = WsCommands(conn.protocol, state.engine, state.sessions, guard, conn.wake, conn._send_batch,
                               lambda: ws.closed, obs=obs, step_ready=conn.step_ready)
    state.websockets.add(conn)
    try:
        await conn.run()
    finally:
        conn.guard.stop()
        state.websockets.discard(conn)
        if not ws.closed:
            await ws.close()
