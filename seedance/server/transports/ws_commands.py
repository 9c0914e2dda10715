"""What a /v1/stream connection's commands do to the engine and the sessions, apart from its socket.

protocol/server_connection.py decides (every rule is there); server/transports/ws.py owns the socket; this
carries out the decisions: submit a generate (a session turn included), adopt a resumed turn, cancel,
pause, resume, reprioritize, and hand the connection's requests back when it ends. It is the requests'
owner, so a resume on another connection takes them from it here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from seedance.engine.async_engine import AsyncEngine, GenerateRequest, RequestStream
from seedance.engine.errors import EngineError
from seedance.engine.sampling_params import SamplingParams
from seedance.observability.hub import Observability
from seedance.observability.logs import reset_request_context, set_request_context
from seedance.protocol import Append, Generate, ProtocolError, Resume
from seedance.protocol import errors as codes
from seedance.protocol.messages import MAX_APPEND_CHARS
from seedance.protocol.server_connection import (
    AppendInput,
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
from seedance.server.transports.choices import choice_request, watch_first_output
from seedance.server.transports.realtime import _last_word_start as last_word_start
from seedance.server.transports.requests import generate_request_from
from seedance.server.transports.writer_wake import Wake
from seedance.server.transports.ws_choices import WsChoices, WsRequest
from seedance.server.transports.ws_generation import WsGeneration
from seedance.server.transports.ws_messages import snapshot_message
from seedance.serving.generation import split_replay
from seedance.sessions.manager import Session, SessionError, SessionManager, scoped_key

log = logging.getLogger(__name__)

SendBatch = Callable[[list[bytes], list[bytes]], Awaitable[None]]  # texts, MTF1 frames -> sent


class WsCommands:
    """The engine and session side of one connection: carries out the protocol's commands that are not the
    socket's (pings and closes are ws.py's)."""

    def __init__(self, protocol: ServerConnection[WsRequest], engine: AsyncEngine, sessions: SessionManager,
                 guard: WsGuard, wake: Wake, send_batch: SendBatch, closed: Callable[[], bool],
                 obs: Observability | None = None, step_ready: Callable[[], None] | None = None) -> None:
        self.protocol = protocol
        self.engine = engine
        self.sessions = sessions
        self.guard = guard
        self.wake = wake  # wakes the connection's writer
        # the listener of the connection's streams (ws.WsConnection.step_ready: writes a step's output, or wakes)
        self.step_ready = step_ready or wake.set
        self.send_batch = send_batch  # a resume's replay goes out before the live stream
        self.closed = closed
        self.obs = obs
        self.outbox: list[bytes] = []  # out-of-band messages (snapshot acks) for the writer's next batch
        self._prefills: dict[str, asyncio.Task] = {}  # streaming input being prefilled, by session
        self._prefilled: dict[str, list[int]] = {}  # the prompt each session's last prefill left pinned
        self.prefill_count = 0
        self._choice_tasks: set[asyncio.Task] = set()  # an n > 1 generate's choices after the first, joining

    @property
    def requests(self) -> dict[str, WsRequest]:
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
        elif isinstance(command, AppendInput):
            await self._on_append(command.message)
        elif isinstance(command, Reauthenticate):
            self.guard.reauth(command.token, self.protocol)
        else:
            self.apply(command)

    def apply(self, command: Command) -> None:
        """A command on a live id (cancel, pause, resume, priority), carried out at once: none needs an await, so
        the writer's turn run from an engine step (ws.WsConnection.step_ready) carries out its pauses for credit."""
        if (active := self.requests.get(command.id)) is None:
            pass  # ended since the message was read: the client has (or will get) its done
        elif isinstance(command, CancelRequest):
            active.cancelled = True
            for engine_id in active.engine_ids:  # every choice: the id ends with done{cancelled}
                self.engine.cancel(engine_id)
        elif isinstance(command, PauseRequest):
            for engine_id in active.engine_ids:
                self.engine.pause(engine_id)
        elif isinstance(command, ResumeStream):
            for engine_id in active.engine_ids:
                self.engine.resume(engine_id)
            self.wake.set()
        elif isinstance(command, SetPriority):
            if isinstance(active, WsChoices):
                active.priority = command.priority  # for its choices still to come
            for engine_id in active.engine_ids:
                self.engine.set_priority(engine_id, command.priority)

    def connection_lost(self) -> None:
        """The socket ended: a session turn waits for a resume, anything else is cancelled."""
        for command in self.protocol.connection_lost():
            active = self.requests[command.id]
            if active.owner is not self:
                continue  # resumed elsewhere meanwhile
            if isinstance(command, DetachRequest) and isinstance(active, WsGeneration):
                self.sessions.detach(active, owner=self)  # the session keeps it for a resume
            else:
                for engine_id in active.engine_ids:  # a closed connection cancels its requests
                    self.engine.cancel(engine_id)
        self.protocol.forget_all()
        for task in self._prefills.values():
            task.cancel()  # a one-token request: the engine finishes it on its own

    async def _on_generate(self, msg: Generate) -> None:
        """Start a generate the protocol admitted (scopes, id, limits); a failure refuses it."""
        session = None
        try:
            request = generate_request_from(msg, request_id=self.engine_id(msg.id))
            if msg.session is not None:
                session = await self.sessions.get(scoped_key(self.guard.principal, msg.session))
                if (prefill := self._prefills.pop(session.id, None)) is not None:
                    await asyncio.wait([prefill])  # its KV is this turn's to reuse
                input_text = await self.sessions.prepare_turn(session, request)
            # n > 1 (no session: the protocol's rule): choice 0 now, the others once it has produced
            stream = await self.engine.submit(request if msg.n == 1 else choice_request(request, 0))
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
        active = self._generation(msg, stream, None if msg.n == 1 else 0)
        if msg.n > 1:
            group = WsChoices(msg.id, [active], owner=self, pending=msg.n - 1)
            self.protocol.open(msg.id, group, credit=msg.credit)
            task = asyncio.create_task(self._other_choices(group, request, msg, watch_first_output(stream)),
                                       name="ws-choices")
            self._choice_tasks.add(task)
            task.add_done_callback(self._choice_tasks.discard)
            self.wake.set()  # output that came before the id was open must not wait for another event
            return
        if session is not None:
            active.session_id, active.session_name, active.input_text = session.id, msg.session, input_text
            active.prompt_token_ids, active.log = list(request.prompt_token_ids), []
            active.on_snapshot = self._snapshot_acker(active)
            try:  # another turn of the session began while this one was submitted (another connection's)
                self.sessions.begin_turn(session, active)
            except SessionError as err:
                stream.cancel()
                self.protocol.refuse(msg.id, err.code, err.message)
                return
        self.protocol.open(msg.id, active, credit=msg.credit, binary=msg.binary, session=session is not None)
        if not stream.queue.empty():
            # Output that came before the id was open (the process engine's first token rides on the Step frame
            # that admits the request, before its stream had a listener) goes now: it waited for the next step's
            # delivery (every first chunk two tokens, TTFT a step longer), a one-token request for the heartbeat.
            self.step_ready()

    async def _other_choices(self, group: WsChoices, request: GenerateRequest, msg: Generate,
                             started: asyncio.Event) -> None:
        """Choices 1 to n-1, submitted once choice 0 has produced, when the prompt's full KV blocks are in the
        prefix cache for them to share (choices.py); meanwhile the connection reads on, so a cancel or any other
        message right after the generate is answered at once. A late choice takes on the id's state: cancelled,
        paused, its priority. One that cannot start fails the id (error, then done)."""
        try:
            await started.wait()
            group.choices[0].stream.listener = self.step_ready
            for i in range(1, msg.n):
                if self.requests.get(msg.id) is not group:  # its connection is gone: nobody reads it
                    return
                choice = choice_request(request, i)
                if group.priority is not None:
                    choice.priority = group.priority
                stream = await self.engine.submit(choice)
                if self.requests.get(msg.id) is not group:  # its connection is gone: nobody reads it
                    stream.cancel()
                    return
                cancelled = group.cancelled
                gen = self._generation(msg, stream, i)
                gen.cancelled = cancelled
                group.choices.append(gen)
                group.pending -= 1
                flow = self.protocol.flows.get(msg.id)
                if cancelled:
                    self.engine.cancel(stream.request_id)
                elif flow is not None and (flow.paused_for_credit or
                                           (flow.credit is None and self.protocol.backpressure.paused)):
                    self.engine.pause(stream.request_id)
        except Exception as err:  # EngineError (overloaded, ...) or a fault of ours: this id fails, nothing else
            if not isinstance(err, EngineError):
                log.exception("generate %s: a choice failed to start", msg.id)
            if self.requests.get(msg.id) is group:
                code, text = (err.code, str(err)) if isinstance(err, EngineError) else (
                    codes.INTERNAL, "the server failed to start this request's choices")
                self.protocol.error(msg.id, code, text)
                group.cancelled, group.pending = True, 0
                for engine_id in group.engine_ids:
                    self.engine.cancel(engine_id)
        finally:
            self.wake.set()

    def _generation(self, msg: Generate, stream: RequestStream, index: int | None) -> WsGeneration:
        """One engine request's output side on this connection (a choice's when index is set)."""
        stream.listener = self.step_ready
        active = WsGeneration(msg.id, stream, self.engine, binary=msg.binary, owner=self, index=index)
        if self.obs is not None:
            active.obs = self.obs.request("ws", stream.request_id, msg.session, self.engine)
        return active

    async def _on_append(self, msg: Append) -> None:
        """Streaming input: add the piece to the session's next user message and prefill what has arrived."""
        try:
            session = await self.sessions.get(scoped_key(self.guard.principal, msg.session))
        except SessionError as err:
            self.protocol.error(None, err.code, err.message)
            return
        if len(session.pending_input) + len(msg.text) > MAX_APPEND_CHARS:
            self.protocol.error(None, codes.INVALID_REQUEST, f"session {msg.session!r}: appended text over "
                                f"{MAX_APPEND_CHARS} characters; send a generate to end the message")
            return
        session.pending_input += msg.text
        task = self._prefills.get(session.id)
        if task is None or task.done():
            self._prefills[session.id] = asyncio.create_task(self._prefill(session), name="ws-prefill")

    async def _prefill(self, session: Session) -> None:
        """Prefill the session's history plus its next message so far (a one-token request that leaves its
        prompt pinned, as the Realtime endpoint's streaming input does), until it has caught up with what
        arrived. A piece's last word may still grow, so it waits for the next piece; text the finished
        message tokenizes differently is recomputed (the engine's take_pin keeps the shared prefix)."""
        loop = asyncio.get_running_loop()
        while not self.closed() and not session.busy and (tokenizer := self.engine.tokenizer) is not None:
            stable = session.pending_input[: last_word_start(session.pending_input)]
            if not stable:
                return
            head = await loop.run_in_executor(self.engine.tokenize_executor, tokenizer.chat_prefix_ids,
                                              [{"role": "user", "content": stable}])
            prompt = session.token_ids + head
            if session.busy or prompt == self._prefilled.get(session.id):
                return
            self.prefill_count += 1
            request = GenerateRequest(prompt_token_ids=prompt, params=SamplingParams(max_tokens=1, temperature=0),
                                      pin_key=session.id, request_id=self.engine_id(f"prefill{self.prefill_count}"))
            try:
                async for _ in await self.engine.submit(request):
                    pass
            except EngineError as err:  # too long so far: the turn will say so
                log.info("ws prefill skipped: %s", err)
                return
            self._prefilled[session.id] = prompt

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
            request.stream.listener = self.step_ready
            self.protocol.open(msg.id, request, binary=request.binary, session=True, resumed=True)

    def engine_id(self, client_id: str) -> str:
        # Client ids are per connection; the engine needs globally unique ones.
        return f"ws{id(self):x}:{client_id}"
