"""What a /v1/stream connection's commands do to the engine and the sessions, apart from its socket.

protocol/server_connection.py decides (every rule is there); server/transports/ws.py owns the socket; this
carries out the decisions: submit a generate (a session turn included), adopt a resumed turn, cancel,
pause, resume, reprioritize, and hand the connection's requests back when it ends. It is the requests'
owner, so a resume on another connection takes them from it here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from seedance.engine.async_engine import AsyncEngine
from seedance.engine.errors import EngineError
from seedance.observability.hub import Observability
from seedance.observability.logs import reset_request_context, set_request_context
from seedance.protocol import Generate, ProtocolError, Resume
from seedance.protocol import errors as codes
from seedance.protocol.server_connection import (
    CancelRequest,
    Command,
    DetachRequest,
    PauseRequest,
    Reauthenticate,
    Refused,
    ResumeRequest,
    ResumeStream,
    ServerConnection,
    SetPriority,
    Submit,
    error_message,
)
from seedance.server.http.security import WsGuard
from seedance.server.transports.requests import generate_request_from
from seedance.server.transports.ws_generation import WsGeneration
from seedance.server.transports.ws_messages import snapshot_message
from seedance.serving.generation import split_replay
from seedance.sessions.manager import SessionError, SessionManager, scoped_key

log = logging.getLogger(__name__)

SendBatch = Callable[[list[bytes], list[bytes]], Awaitable[None]]  # texts, MTF1 frames -> sent


class WsCommands:
    """The engine and session side of one connection: carries out the protocol's commands that are not the
    socket's (pings and closes are ws.py's)."""

    def __init__(self, protocol: ServerConnection[WsGeneration], engine: AsyncEngine, sessions: SessionManager,
                 guard: WsGuard, wake: asyncio.Event, send_batch: SendBatch, closed: Callable[[], bool],
                 obs: Observability | None = None) -> None:
        self.protocol = protocol
        self.engine = engine
        self.sessions = sessions
        self.guard = guard
        self.wake = wake  # wakes the connection's writer
        self.send_batch = send_batch  # a resume's replay goes out before the live stream
        self.closed = closed
        self.obs = obs
        self.outbox: list[bytes] = []  # out-of-band messages (snapshot acks) for the writer's next batch

    @property
    def requests(self) -> dict[str, WsGeneration]:
        return self.protocol.requests

    async def do(self, command: Command) -> None:
        if isinstance(command, Submit):
            ctx = set_request_context(self.engine_id(command.message.id), command.message.session)  # log lines
            try:
                await self._on_generate(command.message)
            finally:
                reset_request_context(ctx)
        elif isinstance(command, Refused):
            if self.obs is not None:
                self.obs.refused("ws", self.engine_id(command.id), command.code)
        elif isinstance(command, ResumeRequest):
            await self._on_resume(command.message)
        elif isinstance(command, Reauthenticate):
            self.guard.reauth(command.token, self.protocol)
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

    def connection_lost(self) -> None:
        """The socket ended: a session turn waits for a resume, anything else is cancelled."""
        for command in self.protocol.connection_lost():
            active = self.requests[command.id]
            if active.owner is not self:
                continue  # resumed elsewhere meanwhile
            if isinstance(command, DetachRequest):
                self.sessions.detach(active, owner=self)  # the session keeps it for a resume
            else:
                self.engine.cancel(active.engine_id)  # a closed connection cancels its requests
        self.protocol.forget_all()

    async def _on_generate(self, msg: Generate) -> None:
        """Start a generate the protocol admitted (scopes, id, limits); a failure refuses it."""
        session = None
        try:
            request = generate_request_from(msg, request_id=self.engine_id(msg.id))
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
            if self.requests.get(active.id, active) is active and not self.closed():
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
        if request is not None and isinstance(request.previous_owner, WsCommands):
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
        await self.send_batch(texts, frames)
        if request is not None and not request.finished:
            request.on_snapshot = self._snapshot_acker(request)
            request.stream.listener = self.wake.set
            self.protocol.open(msg.id, request, binary=request.binary, session=True, resumed=True)

    def engine_id(self, client_id: str) -> str:
        # Client ids are per connection; the engine needs globally unique ones.
        return f"ws{id(self):x}:{client_id}"
