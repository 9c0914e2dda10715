"""OpenAI Realtime-compatible WebSocket (`GET /v1/realtime?model=...`): the adapter between the sans-I/O
protocol (protocol/realtime_connection.py) and the engine, the way ws.py is for /v1/stream.

The conversation is a Seedance session (sessions/manager.py): each response is a session turn whose prompt is the
history the model already saw (KV pinned in the engine) plus the items added since, templated off the event loop
by the engine's tokenizer thread; usage.input_token_details.cached_tokens reports the KV reused. `?session=<name>`
(a Seedance extension) names the session so a later connection continues its history; without it the session
lives as long as the connection.

One reader (client events) and one writer per connection. The writer wakes when the response's stream has
events and turns one engine step into its text delta. A barge-in (response.create while one streams) or a
response.cancel cancels the engine request between two steps; what a step delivered after the cancel is dropped
unsent, so the item, the session's history and the KV it keeps are exactly what the client saw.

Images (input_image parts, for a model that takes them) go to the engine as the chat path's image parts
(image_from_url), decoded and encoded on its vision thread; an image a session turn took in is the session's KV and
embedding rows (sessions/manager.py), so a later response does not encode it again.

Back-pressure and liveness are /v1/stream's policy (protocol/flow.py), decided by the protocol core: sends never
wait for the socket to drain (writer_limit); the writer ticks the protocol before each step with the transport's
unsent bytes, counts what it sends (after every send_low_water_bytes a probe ping, whose pong acknowledges what the
client has read, kernel buffers included), and carries out what the protocol asks: pause the response in the engine
above send_high_water_bytes of unread output, resume it at send_low_water_bytes, ping for the heartbeat, and close
(an `error` event, then 4001 above high water for slow_consumer_timeout_s, or 4000 after heartbeat_max_missed
unanswered pings) with ws_liveness.py's bounded close, which resets a socket whose peer does not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.errors import EngineError
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.sampling_params import SamplingParams
from seedance.observability.hub import Observability
from seedance.protocol import CloseCode
from seedance.protocol.flow import CloseConnection, SendPing
from seedance.protocol.realtime_connection import (
    CancelResponse,
    InputChanged,
    Limits,
    PauseResponse,
    RealtimeConnection,
    ResumeResponse,
    StartResponse,
)
from seedance.protocol.realtime_events import INTERNAL, MAX_ID_LENGTH, RATE_LIMITED, RESPONSE_FAILED
from seedance.server.http.config import ServerConfig
from seedance.server.http.http_errors import HttpError
from seedance.server.http.observability_http import OBS
from seedance.server.http.security import SUBPROTOCOLS, WsGuard
from seedance.server.http.state import STATE
from seedance.server.transports import ws_accept
from seedance.server.transports.read_turn import ReadTurn
from seedance.server.transports.requests import image_from_url
from seedance.server.transports.ws_liveness import CLOSE_TIMEOUT_S, BoundedClose, HeartbeatTimer, run_to_end
from seedance.server.transports.ws_messages import usage_of
from seedance.serving.generation import Generation
from seedance.sessions.manager import Session, SessionError, SessionManager, scoped_key

log = logging.getLogger(__name__)

_NEVER_DRAIN = 1 << 62  # aiohttp writer_limit: sends never wait for the socket; the water marks bound it


@dataclass(eq=False)
class RealtimeGeneration(Generation):
    """One response's engine request. `cut`: cancelled by the client; later events are not sent."""

    cut: bool = False


class RealtimeSocket:
    def __init__(self, ws: web.WebSocketResponse, engine: AsyncEngine, sessions: SessionManager,
                 config: ServerConfig, protocol: RealtimeConnection, session_key: str, keep_session: bool) -> None:
        self.ws = ws
        self.engine = engine
        self.sessions = sessions
        self.config = config
        self.protocol = protocol
        self.session_key = session_key
        self.keep_session = keep_session  # named by the client: outlives the connection
        self.guard: WsGuard | None = None
        self.transport: asyncio.Transport | None = None  # its write buffer: what the client has not read
        self.obs: Observability | None = None  # metrics / tracing (set by realtime_handler)
        self.wake = asyncio.Event()
        self.closer = BoundedClose(ws, None, "realtime websocket")  # its transport: set in run
        self.heartbeat = HeartbeatTimer(ws, self.wake, lambda: protocol.backpressure.next_heartbeat_at)
        self.current: RealtimeGeneration | None = None
        self.starting: str | None = None  # response id being tokenized and submitted
        self.cancel_on_start: set[str] = set()
        self.pause_on_start: set[str] = set()  # paused by back-pressure while it was being submitted
        self.session: Session | None = None
        self.eos_id = _end_of_turn_token(engine)
        self._send_lock = asyncio.Lock()  # the reader and the writer both flush: events keep their order
        self._prefill: asyncio.Task | None = None
        self._prefilled: list[int] = []  # the prompt the last prefill left pinned
        self.prefills = 0

    @property
    def requests(self) -> dict[str, RealtimeGeneration]:
        """The open engine request, for the server's drain (app.py), which waits for it to end."""
        return {self.current.id: self.current} if self.current is not None and not self.current.finished else {}

    async def close(self, code: int, reason: str) -> None:
        """GuardedConnection (the token expired, the client sends too fast) and the protocol's flow control: the
        bounded close handshake, then the socket reset if the peer does not read (ws_liveness.py)."""
        await self.closer.close(code, reason)

    async def run(self) -> None:
        self.closer.transport = self.transport
        writer = asyncio.create_task(self._writer(), name="realtime-writer")
        self.heartbeat.arm()
        try:
            await self._flush()  # session.created
            turn = ReadTurn()  # a burst of buffered events gives the loop back every READ_TURN_S (read_turn.py)
            async for msg in self.ws:
                await turn.handled()
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.protocol.error("invalid_event", "events are JSON text messages, not binary")
                    await self._flush()
                elif msg.type == WSMsgType.PING:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await self.ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    if self.protocol.receive_pong(msg.data):
                        self.wake.set()  # it read: a paused response may resume
                elif msg.type == WSMsgType.ERROR:
                    return
        finally:
            self.heartbeat.cancel()
            await run_to_end(self._teardown(writer))

    async def _teardown(self, writer: asyncio.Task) -> None:
        """The connection's end, to its end even if its handler is cancelled meanwhile (run_to_end, as /v1/stream's):
        the response cancelled and its turn ended, the writer and the prefill stopped, the session dropped, the
        socket closed or reset."""
        current, self.current = self.current, None
        if current is not None and not current.finished:
            # The connection is gone: cancel, and end the session's turn now with what was sent (the engine's
            # own end comes a step later), so a client reconnecting at once finds the session free.
            self._cancel_gen(current)
            self._end(current, TokenEvent(current.engine_id, current.completion_tokens, -1, "",
                                          finish_reason=FinishReason.CANCELLED,
                                          num_prompt_tokens=current.stream.num_prompt_tokens))
        tasks = [task for task in (writer, self._prefill) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
            for task in tasks:  # retrieved, so a failed one is not logged as never retrieved
                if not task.cancelled():
                    task.exception()
        if self.session is not None and not self.keep_session:
            self.sessions.drop(self.session)  # after the prefill's cancel: nothing pins it again
        await self.closer.finish()

    async def _on_text(self, data: str) -> None:
        """A fault while handling one event fails that event (an error event), never the connection."""
        if self.guard is not None and (reason := self.guard.rate_exceeded()) is not None:
            self.protocol.error(RATE_LIMITED, reason)
            await self._flush()
            await self.close(CloseCode.POLICY_VIOLATION, reason)
            return
        try:
            self.protocol.receive_text(data)
            await self._flush()
        except Exception:
            log.exception("realtime event failed")
            self.protocol.commands()
            self.protocol.error(INTERNAL, "the server failed on this event", type="server_error")
            await self._flush()

    def _unsent_bytes(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0

    async def _flush(self) -> None:
        """Send what the protocol queued, then carry out its commands (whose answers may queue more)."""
        while True:
            async with self._send_lock:
                for body in self.protocol.data_to_send():
                    if self.ws.closed:
                        break
                    with contextlib.suppress(ConnectionError, RuntimeError):  # the peer went away: the reader ends
                        await self.ws.send_frame(body, WSMsgType.TEXT)  # never waits for the client (writer_limit)
                        if (probe := self.protocol.wrote(len(body))) is not None:
                            await self.ws.ping(probe)
            commands = self.protocol.commands()
            if not commands:
                return
            for command in commands:
                if isinstance(command, StartResponse):
                    await self._start(command)
                elif isinstance(command, CancelResponse):
                    self._cancel(command.response_id)
                elif isinstance(command, (PauseResponse, ResumeResponse)):
                    self._pause(command.response_id, isinstance(command, PauseResponse))
                elif isinstance(command, SendPing):
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await self.ws.ping(command.payload)
                elif isinstance(command, CloseConnection):
                    if command.code == CloseCode.HEARTBEAT_TIMEOUT and self.obs is not None:
                        self.obs.metrics.heartbeat_timeouts.inc()
                    await self.close(command.code, command.reason)
                elif isinstance(command, InputChanged) and (self._prefill is None or self._prefill.done()):
                    self._prefill = asyncio.create_task(self._prefill_input(), name="realtime-prefill")

    def _cancel(self, response_id: str) -> None:
        current = self.current
        if current is not None and current.id == response_id and not current.finished:
            self._cancel_gen(current)
        elif self.starting == response_id:
            self.cancel_on_start.add(response_id)

    def _pause(self, response_id: str, pause: bool) -> None:
        """Back-pressure: pause (or resume) the response in the engine; one still being submitted is paused once
        it starts."""
        current = self.current
        if current is not None and current.id == response_id and not current.finished:
            (self.engine.pause if pause else self.engine.resume)(current.engine_id)
        elif self.starting == response_id:
            (self.pause_on_start.add if pause else self.pause_on_start.discard)(response_id)

    def _cancel_gen(self, gen: RealtimeGeneration) -> None:
        """Cancel between two engine steps; the KV of what was sent stays pinned for the next response."""
        if not gen.cut:
            gen.cut = True
            self.engine.cancel(gen.engine_id, keep_tokens=len(gen.prompt_token_ids) + len(gen.output_token_ids)
                               if gen.session_id is not None else None)

    async def _prefill_input(self) -> None:
        """Streaming input: while a user item is still arriving and no response runs, prefill what has arrived
        into the session's KV (a one-token request that leaves its prompt pinned), so the response to the
        finished message computes only its last piece. A piece's last word may still grow, so it waits for the
        next piece; text a finished message tokenizes differently is recomputed (take_pin keeps the rest)."""
        loop = asyncio.get_running_loop()
        while self.current is None and self.starting is None and not self.ws.closed:
            messages = self.protocol.pending_messages()
            if not messages:
                return
            if any(not isinstance(m["content"], str) for m in messages):
                return  # images are encoded once, by the response (the vision thread's work is not repeated)
            last = messages[-1]
            stable = last["content"][: _last_word_start(last["content"])]
            if not stable:
                return
            tokenizer = self.engine.tokenizer
            if tokenizer is None:
                return
            session = self.session = await self.sessions.get(self.session_key)
            if session.busy:
                return
            head = await loop.run_in_executor(self.engine.tokenize_executor, tokenizer.chat_prefix_ids,
                                              [*messages[:-1], {**last, "content": stable}])
            prompt = session.token_ids + head
            if not head or prompt == self._prefilled:
                return
            request = GenerateRequest(prompt_token_ids=prompt, params=SamplingParams(max_tokens=1, temperature=0),
                                      pin_key=session.id, request_id=f"rt{id(self):x}:prefill{self.prefills}",
                                      prompt_embeds=session.prompt_embeds)  # earlier turns' image rows
            try:
                stream = await self.engine.submit(request)
                async for _ in stream:
                    pass
            except EngineError as err:  # too long so far: the response will say so
                log.info("realtime prefill skipped: %s", err)
                return
            self.prefills += 1
            self._prefilled = prompt

    def _report_rate_limits(self) -> None:
        """rate_limits.updated: the connection's client-event bucket (ws_messages_per_s, ws_message_burst) as
        the API's `requests` limit: how many events may follow at once, and when the bucket is full again."""
        bucket = self.guard.rate if self.guard is not None else None
        if bucket is None:
            return
        level = bucket.available()
        self.protocol.rate_limits([{"name": "requests", "limit": int(bucket.burst), "remaining": int(level),
                                    "reset_seconds": round((bucket.burst - level) / bucket.rate, 3)}])

    async def _start(self, command: StartResponse) -> None:
        self._report_rate_limits()
        if self._prefill is not None and not self._prefill.done():
            with contextlib.suppress(Exception):
                await self._prefill  # its KV is this response's to reuse
        limit = self.engine.config.max_tokens_limit
        params = SamplingParams(max_tokens=min(command.max_output_tokens or limit, limit),
                                temperature=command.temperature)
        session, input_text = None, ""
        self.starting = command.response_id
        try:
            request = GenerateRequest(messages=_engine_messages(command.messages), params=params,
                                      request_id=f"rt{id(self):x}:{command.response_id}")
            if command.in_conversation:
                session = self.session = await self.sessions.get(self.session_key)
                if command.restart and not session.busy:
                    session.token_ids = []  # edited history: render the conversation again
                input_text = await self.sessions.prepare_turn(session, request)
            stream = await self.engine.submit(request)
        except (SessionError, EngineError) as err:
            code = getattr(err, "code", RESPONSE_FAILED)
            if self.obs is not None:
                self.obs.refused("realtime", f"rt{id(self):x}:{command.response_id}", code)
            self.protocol.response_failed_to_start(command.response_id, code, getattr(err, "message", str(err)))
            return
        except Exception:
            log.exception("realtime response %s failed to start", command.response_id)
            self.protocol.response_failed_to_start(command.response_id, INTERNAL,
                                                   "the server failed to start this response")
            return
        finally:
            self.starting = None
        gen = RealtimeGeneration(command.response_id, stream, self.engine, keep_on_cancel=True)
        if session is not None:
            gen.session_id, gen.session_name, gen.input_text = session.id, self.session_key, input_text
            gen.prompt_token_ids = list(request.prompt_token_ids)
            try:  # another connection's turn of the session began while this one was submitted
                self.sessions.begin_turn(session, gen)
            except SessionError as err:
                stream.cancel()
                self.protocol.response_failed_to_start(command.response_id, err.code, err.message)
                return
        gen.owner = self
        if self.obs is not None:
            gen.obs = self.obs.request("realtime", stream.request_id, self.session_key if session else None,
                                       self.engine)
        self.current = gen
        stream.listener = self.wake.set
        if command.response_id in self.pause_on_start:
            self.pause_on_start.discard(command.response_id)
            self.engine.pause(gen.engine_id)
        if command.response_id in self.cancel_on_start:
            self.cancel_on_start.discard(command.response_id)
            self._cancel(command.response_id)
        self.wake.set()

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                hold = self.protocol.tick(loop.time(), self._unsent_bytes())
                await self._flush()  # pauses, resumes, pings, a close (after its error event)
                self.heartbeat.arm()
                if hold is not None:  # above high water: the response's events wait in its stream
                    if hold != math.inf:
                        loop.call_later(hold, self.wake.set)  # look again soon
                    continue
                self._produce()
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # never die silently: the response would hang
                log.exception("realtime writer failed; closing the connection")
                await self.close(CloseCode.INTERNAL_ERROR, "internal error")
                return

    def _end(self, gen: RealtimeGeneration, final: TokenEvent) -> None:
        """The engine request ended: the session's turn takes what was sent (a cut answer ends with EOS, as a
        finished one would)."""
        if final.finish_reason is FinishReason.CANCELLED and self.eos_id is not None and gen.output_token_ids:
            gen.output_token_ids.append(self.eos_id)
        gen.end(final)
        if gen.on_finish is not None:
            gen.on_finish(gen)

    def _produce(self) -> None:
        """One engine step of the current response becomes its delta (and its end)."""
        gen = self.current
        if gen is None or gen.finished:
            return
        events = gen.stream.drain()
        if gen.cut:
            events = [e for e in events if e.finished]  # delivered after the cancel: never sent
        if not events:
            return
        step = gen.take(events)
        self.protocol.response_text(gen.id, step.text)
        final = step.final
        if final is None:
            return
        self.current = None
        self._end(gen, final)
        if gen.obs is not None:
            gen.obs.sent()  # its last events are queued for this writer's flush
        self.protocol.response_ended(gen.id, str(final.finish_reason), usage_of(final, gen.completion_tokens),
                                     "generation failed on the server" if final.finish_reason is FinishReason.ERROR
                                     else None)


def _engine_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The protocol's messages as the engine takes them: image_url parts become the chat path's image parts
    (decoded on the engine's vision thread)."""
    return [m if isinstance(m["content"], str) else {**m, "content": [
        {"type": "image", "image": image_from_url(p["url"])} if p["type"] == "image_url" else p
        for p in m["content"]]} for m in messages]


def _last_word_start(text: str) -> int:
    """Where the last word (and the whitespace before it) begins: the text before it tokenizes the same however
    the message goes on, for pre-tokenizers that split at whitespace."""
    end = len(text.rstrip())
    if end < len(text):
        return end  # the last word is complete; only the whitespace after it may join the next one
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while start > 0 and text[start - 1].isspace():
        start -= 1
    return start


def _end_of_turn_token(engine: AsyncEngine) -> int | None:
    """The token a finished answer ends with (the model's EOS), appended to an answer cut short."""
    tokenizer = engine.tokenizer
    eos = getattr(tokenizer, "special_tokens", {}).get("eos_token") if tokenizer is not None else None
    if eos is None:
        return None
    return tokenizer.backend.token_to_id(eos)


async def realtime_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config: ServerConfig = state.config
    model = request.query.get("model")
    if model is not None and model != config.model_name:
        raise HttpError(404, "model_not_found", f"model {model!r} is not served here; see /v1/models", "model")
    name = request.query.get("session")
    if name is not None and not 1 <= len(name) <= MAX_ID_LENGTH:
        raise HttpError(400, "invalid_request", f"session must be 1 to {MAX_ID_LENGTH} characters", "session")
    ws = web.WebSocketResponse(max_msg_size=config.max_message_bytes, compress=False, protocols=SUBPROTOCOLS,
                               autoping=False, timeout=CLOSE_TIMEOUT_S, writer_limit=_NEVER_DRAIN)
    await ws.prepare(request)
    if (refused := ws_accept.accept(request.transport, state)) is not None:
        await ws.close(code=refused[0], message=refused[1].encode())
        return ws
    prefix = os.urandom(6).hex()
    protocol = RealtimeConnection(config.model_name or "", id_prefix=prefix,
                                  limits=Limits(max_items=config.realtime_max_items,
                                                takes_images=state.engine.engine.takes_images),
                                  flow=config.flow_limits(), now=asyncio.get_running_loop().time())
    conn = RealtimeSocket(ws, state.engine, state.sessions, config, protocol, "", keep_session=name is not None)
    conn.guard = guard = WsGuard.of(request, conn)
    conn.transport = request.transport
    conn.obs = request.app.get(OBS)
    conn.session_key = scoped_key(guard.principal, name or f"realtime-{prefix}")
    state.websockets.add(conn)
    try:
        await conn.run()
    finally:
        guard.stop()
        state.websockets.discard(conn)
        if not ws.closed:
            await ws.close()
    return ws
