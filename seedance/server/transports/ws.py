"""WebSocket transport (/v1/stream): a thin adapter between the sans-I/O protocol and the engine.

Every protocol rule, flow control included, is protocol/server_connection.py's; this carries out its
commands against the engine and the sessions and owns the socket. One reader (client messages) and one
writer (all the connection's streams) per connection, and a timer that wakes the writer for the
heartbeat. The writer wakes when any of the connection's streams has events and sends everything that is
ready as one WebSocket message: a JSON array when several requests produced tokens in the same engine
step, concatenated MTF1 frames for binary requests.

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
import socket
import struct
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from seedance.engine.async_engine import AsyncEngine
from seedance.engine.errors import EngineError
from seedance.observability.hub import Observability
from seedance.observability.logs import reset_request_context, set_request_context
from seedance.protocol import CloseCode, Generate, ProtocolError, Resume
from seedance.protocol import errors as codes
from seedance.protocol.flow import FlowLimits
from seedance.protocol.server_connection import (
    CancelRequest,
    CloseConnection,
    Command,
    DetachRequest,
    PauseRequest,
    Reauthenticate,
    Refused,
    ResumeRequest,
    ResumeStream,
    SendPing,
    ServerConnection,
    SetPriority,
    Submit,
    error_message,
)
from seedance.server.http.config import ServerConfig
from seedance.server.http.keepalive import apply_keepalive
from seedance.server.http.observability_http import OBS
from seedance.server.http.security import SUBPROTOCOLS, WsGuard
from seedance.server.http.state import STATE
from seedance.server.transports.requests import generate_request_from
from seedance.server.transports.ws_generation import WsGeneration
from seedance.server.transports.ws_messages import snapshot_message
from seedance.serving.generation import split_replay
from seedance.sessions.manager import SessionError, SessionManager, scoped_key

log = logging.getLogger(__name__)

_NEVER_DRAIN = 1 << 62  # aiohttp writer_limit: never wait for the socket to drain (the water marks bound it)
CLOSE_TIMEOUT_S = 10.0  # how long a closing peer has to answer (and read) the close frame before it is aborted


class WsConnection:
    """The I/O around one connection's ServerConnection (every protocol rule, flow control included, is
    there): reads frames into it, carries out its commands against the engine and the sessions, writes what
    it produces, and owns the socket itself: the writer, the heartbeat's timer, closing."""

    guard: WsGuard  # set by websocket_handler: message rate, token expiry, reauth verification
    protocol: ServerConnection[WsGeneration]  # set by websocket_handler: the request table and the rules
    obs: Observability | None = None  # metrics / tracing (set by websocket_handler)

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, engine: AsyncEngine,
                 config: ServerConfig, draining: Callable[[], bool], sessions: SessionManager) -> None:
        self.ws = ws
        self.transport = transport
        self.engine = engine
        self.config = config
        self.draining = draining
        self.sessions = sessions
        self.wake = asyncio.Event()
        self.outbox: list[bytes] = []  # out-of-band messages (snapshot acks) for the writer's next batch
        self._closer: asyncio.Task | None = None
        self._heartbeat: asyncio.TimerHandle | None = None  # a timer, not a task: it only wakes the writer
        self.loop = asyncio.get_running_loop()

    # ---- lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        writer = asyncio.create_task(self._writer(), name="ws-writer")
        self._arm_heartbeat()
        try:
            await self._reader()
        finally:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            for command in self.protocol.connection_lost():
                active = self.requests[command.id]
                if active.owner is not self:
                    continue  # resumed elsewhere meanwhile
                if isinstance(command, DetachRequest):
                    self.sessions.detach(active, owner=self)  # the session keeps it for a resume
                else:
                    self.engine.cancel(active.engine_id)  # a closed connection cancels its requests
            self.protocol.forget_all()
            if self._closer is not None:
                with contextlib.suppress(Exception):
                    await self._closer
            self._abort_if_stuck()

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame and wait (bounded) for the peer's; on a task of its own, so the connection's
        tasks ending meanwhile cannot cut the handshake short."""
        if self._closer is None and not self.ws.closed:
            log.info("closing websocket: %d %s", code, reason)
            if code in (CloseCode.SLOW_CONSUMER, CloseCode.HEARTBEAT_TIMEOUT):
                self._reset_on_close()  # the peer does not read: its close frame may never get through
            self._closer = asyncio.ensure_future(self.ws.close(code=code, message=reason.encode(), drain=False))
        if self._closer is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._closer)

    def _abort_if_stuck(self) -> None:
        """Called once the close handshake is over (or timed out after CLOSE_TIMEOUT_S): a peer that still has
        not read what was sent will not. Drop the socket; a plain close would wait for the unsent bytes
        forever, holding the file descriptor and the buffer."""
        transport = self.transport
        unanswered = self._closer is not None and self.ws.close_code == WSCloseCode.ABNORMAL_CLOSURE
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

    @property
    def requests(self) -> dict[str, WsGeneration]:
        """The connection's live requests by client id: the protocol's request table."""
        return self.protocol.requests

    # ---- reading ----------------------------------------------------------------------------------
    async def _reader(self) -> None:
        while True:
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
        if isinstance(command, Submit):
            ctx = set_request_context(self._engine_id(command.message.id), command.message.session)  # log lines
            try:
                await self._on_generate(command.message)
            finally:
                reset_request_context(ctx)
        elif isinstance(command, SendPing):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.ping(command.payload)
        elif isinstance(command, Refused):
            if self.obs is not None:
                self.obs.refused("ws", self._engine_id(command.id), command.code)
        elif isinstance(command, ResumeRequest):
            await self._on_resume(command.message)
        elif isinstance(command, Reauthenticate):
            self.guard.reauth(command.token, self.protocol)
        elif isinstance(command, CloseConnection):
            if command.code == CloseCode.HEARTBEAT_TIMEOUT and self.obs is not None:
                self.obs.metrics.heartbeat_timeouts.inc()
            await self.close(command.code, command.reason)
        elif (active := self.requests.get(command.id)) is None:
            pass  # ended since the message was read: the client has (or will get) its done
        elif isinstance(command, CancelRequest):
            active.cancelled = True
            self.engine.cancel(active.engine_id)  # the stream ends with done{cancelled}
        elif isinstance(command, PauseRequest):
            self.engine.pause(active.engine_id)
        elif isinstance(command, ResumeStream):
            self.engine.resume(active.engine_id)
            self.wake.set()
        elif isinstance(command, SetPriority):
            self.engine.set_priority(active.engine_id, command.priority)

    async def _on_generate(self, msg: Generate) -> None:
        """Start a generate the protocol admitted (scopes, id, limits); a failure refuses it."""
        session = None
        try:
            request = generate_request_from(msg, request_id=self._engine_id(msg.id))
            if msg.session is not None:
                session = await self.sessions.get(scoped_key(self.guard.principal, msg.session))
                input_text = await self.sessions.prepare_turn(session, request)
            stream = await self.engine.submit(request)
        except (ProtocolError, SessionError) as err:
            self.protocol.refuse(msg.id, err.code, err.message)
            return
        except EngineError as err:
            self.protocol.refuse(msg.id, err.code, str(err))
            return
        except Exception:  # a fault of ours: this request fails, with its end marker, and nothing else
            log.exception("generate %s failed to start", msg.id)
            self.protocol.refuse(msg.id, codes.INTERNAL, "the server failed to start this request")
            return
        stream.listener = self.wake.set
        active = WsGeneration(msg.id, stream, self.engine, binary=msg.binary, owner=self)
        if self.obs is not None:
            active.obs = self.obs.request("ws", stream.request_id, msg.session, self.engine)
        if session is not None:
            active.session_id, active.session_name, active.input_text = session.id, msg.session, input_text
            active.prompt_token_ids, active.log = list(request.prompt_token_ids), []
            active.on_snapshot = self._snapshot_acker(active)
            self.sessions.begin_turn(session, active)
        self.protocol.open(msg.id, active, credit=msg.credit, binary=msg.binary, session=session is not None)

    def _snapshot_acker(self, active: WsGeneration):
        def ack(snapshot, durable: bool) -> None:
            if self.requests.get(active.id, active) is active and not self.ws.closed:
                self.outbox.append(snapshot_message(active.id, active.session_name, snapshot) if durable else
                                   error_message(active.id, codes.SNAPSHOT_FAILED,
                                                 f"turn {snapshot.turn} of session {active.session_name!r} is not "
                                                 "durable: the session store is unavailable (a snapshot follows "
                                                 "once it is back)"))
                self.wake.set()

        return ack

    async def _on_resume(self, msg: Resume) -> None:
        """Replay everything after last_seq, then continue live (or just the replay if the turn ended)."""
        try:
            session = await self.sessions.get(scoped_key(self.guard.principal, msg.session))
        except SessionError as err:
            self.protocol.error(msg.id, err.code, err.message)
            return
        request = self.sessions.adopt(session, msg.id, owner=self)
        if request is not None and isinstance(request.previous_owner, WsConnection):
            request.previous_owner.protocol.forget(request.id)  # its old connection must not produce it
        if request is None:
            logged = session.replay.get(msg.id)
            if logged is None:
                self.protocol.error(msg.id, codes.UNKNOWN_ID,
                                    f"session {msg.session!r} has no request {msg.id!r} to resume")
                return
            texts, frames = split_replay(logged, msg.last_seq)
        else:
            texts, frames = request.replay_after(msg.last_seq)
        await self._send_batch(texts, frames)
        if request is not None and not request.finished:
            request.on_snapshot = self._snapshot_acker(request)
            request.stream.listener = self.wake.set
            self.protocol.open(msg.id, request, binary=request.binary, session=True, resumed=True)

    def _engine_id(self, client_id: str) -> str:
        # Client ids are per connection; the engine needs globally unique ones.
        return f"ws{id(self):x}:{client_id}"

    # ---- writing ----------------------------------------------------------------------------------
    async def _send_batch(self, texts: list[bytes], frames: list[bytes]) -> None:
        if texts:
            await self._send(texts[0] if len(texts) == 1 else b"[" + b",".join(texts) + b"]", WSMsgType.TEXT)
        if frames:
            await self._send(b"".join(frames), WSMsgType.BINARY)

    async def _send(self, body: bytes, opcode: WSMsgType) -> None:
        """Every message goes out here and never waits for the client (writer_limit); the protocol counts
        it and may ask for a probe ping."""
        ws = self.ws
        if ws.closed:
            return
        try:  # not contextlib.suppress: this runs for every message
            await ws.send_frame(body, opcode)  # already UTF-8 JSON or MTF1: no re-encoding
            if (probe := self.protocol.wrote(len(body))) is not None:
                await ws.ping(probe)
        except (ConnectionError, RuntimeError):
            pass  # the peer went away: the reader ends it

    async def _writer(self) -> None:
        try:
            await self._write_loop()
        except asyncio.CancelledError:
            raise
        except Exception:  # never die silently: a dead writer would leave this connection's streams hanging
            log.exception("websocket writer failed; closing the connection")
            await self.close(CloseCode.INTERNAL_ERROR, "internal error")

    async def _write_loop(self) -> None:
        loop = self.loop
        protocol = self.protocol
        wake = self.wake
        transport = self.transport
        while True:
            await wake.wait()
            wake.clear()
            hold = protocol.tick(loop.time(), transport.get_write_buffer_size() if transport is not None else 0)
            await self._pump()  # pauses, resumes, pings, a close
            if self._heartbeat is None:
                self._arm_heartbeat()
            if hold is not None:
                if hold != math.inf:
                    loop.call_later(hold, wake.set)  # look again soon
                continue
            texts, self.outbox = self.outbox, []
            frames: list[bytes] = []
            ended = []
            for active in list(self.requests.values()):
                stream = active.stream
                if protocol.may_take(active.id, not stream.queue.empty()):
                    events = stream.drain()
                    protocol.receive_events(active.id, events)
                    active.encode(events, texts, frames)
                if active.finished:
                    protocol.forget(active.id)
                    ended.append(active)
            await self._pump()  # pauses for credit
            await self._send_batch(texts, frames)
            for active in ended:
                if active.obs is not None:
                    active.obs.sent()

    # ---- heartbeat --------------------------------------------------------------------------------
    def _arm_heartbeat(self) -> None:
        """Wake the writer when the protocol's heartbeat is due: its tick pings, or closes (4000), and moves
        the next one on; the writer then arms this again."""
        if not self.ws.closed:
            self._heartbeat = self.loop.call_at(self.protocol.backpressure.next_heartbeat_at, self._heartbeat_due)

    def _heartbeat_due(self) -> None:
        self._heartbeat = None
        self.wake.set()


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config: ServerConfig = state.config
    ws = web.WebSocketResponse(autoping=False, max_msg_size=config.max_message_bytes, compress=False,
                               protocols=SUBPROTOCOLS, writer_limit=_NEVER_DRAIN, timeout=CLOSE_TIMEOUT_S)
    await ws.prepare(request)
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport else None
    apply_keepalive(sock, config.keepalive)
    if sock is not None and config.socket_send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.socket_send_buffer_bytes)
    if state.engine is None:
        await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=b"model is loading")
        return ws
    if state.draining:
        await ws.close(code=CloseCode.GOING_AWAY, message=b"server is shutting down")
        return ws
    if len(state.websockets) >= config.max_connections:
        await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=b"too many connections")
        return ws
    conn = WsConnection(ws, transport, state.engine, config, lambda: state.draining, state.sessions)
    conn.guard = guard = WsGuard(request, conn)
    conn.protocol = ServerConnection(max_message_bytes=config.max_message_bytes,
                                     max_requests=config.max_requests_per_connection,
                                     scopes=guard.principal.scopes, token_auth=guard.sec.verifier is not None,
                                     draining=conn.draining, log_context=guard.log_context,
                                     flow=FlowLimits(config.send_high_water_bytes, config.send_low_water_bytes,
                                                     config.slow_consumer_timeout_s, config.heartbeat_interval_s,
                                                     config.heartbeat_max_missed),
                                     now=asyncio.get_running_loop().time())
    conn.obs = request.app.get(OBS)
    state.websockets.add(conn)
    try:
        await conn.run()
    finally:
        conn.guard.stop()
        state.websockets.discard(conn)
        if not ws.closed:
            await ws.close()
    return ws
