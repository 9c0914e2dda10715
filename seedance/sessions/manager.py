"""Sessions in memory: conversation state, the turn in progress, and what happens while its client is away.

A session is named by the client (`session` on a generate). Each turn's prompt is the conversation so far
(as tokens, exactly as the model saw them) plus the new input, and its request leaves its KV pinned in the
engine under the session id, so the next turn continues from it instead of recomputing.

When a connection drops, the turn in progress is detached, not cancelled: it keeps generating into its
replay log up to `detached_buffer_tokens`, then is paused in the engine (KV kept) until the client
resumes or `resume_grace_s` runs out, when it is cancelled and its KV freed. Each completed turn is
snapshotted to the store (off the event loop); a session evicted from memory, or lost in a restart, is
restored from its snapshot and verified against its kv_cache_hash.

A store failure (Redis down) fails only the request that needed the store (`store_unavailable`), or, for a
snapshot, is told to that turn's client in-band (`snapshot_failed`); the manager then reports the store as
degraded (readiness shows it) and probes it until it answers, then writes the snapshots it could not, each
acknowledged late with its `snapshot`.

Bounds: `max_sessions` in memory (LRU eviction of idle sessions: never one with a turn in progress),
`session_idle_ttl_s`, the engine's pinned-KV budget, and `snapshot_embeds_bytes` of embedding rows / image
features per snapshot (a history with more is snapshotted without them: restored, it refuses its next turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.core_protocol import embeds_to_wire
from seedance.engine.events import FinishReason
from seedance.engine.prompt_embeds import PromptEmbeds
from seedance.protocol import errors as codes
from seedance.serving.generation import Generation
from seedance.sessions.snapshot import SNAPSHOT_VERSION, Snapshot, Turn, kv_cache_hash
from seedance.sessions.store import SessionStore

log = logging.getLogger(__name__)


class SessionError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status  # for HTTP transports


class Caller(Protocol):
    """Who asks (server/http/auth.py Principal)."""

    @property
    def id(self) -> str: ...

    @property
    def authenticated(self) -> bool: ...


def scoped_key(principal: Caller, name: str) -> str:
    """Sessions belong to their caller: with authentication on, another principal's session of the same
    name is a different session, so knowing a name is not enough to read or continue it."""
    return f"{principal.id}/{name}" if principal.authenticated else name


@dataclass(eq=False)
class Session:
    id: str
    token_ids: list[int] = field(default_factory=list)
    turn: int = 0
    turns: list[Turn] = field(default_factory=list)
    last_active: float = field(default_factory=time.monotonic)
    current: Generation | None = None  # the turn in progress (attached or detached)
    replay: dict[str, list[tuple[int, bool, bytes]]] = field(default_factory=dict)  # last completed turn
    detached_task: asyncio.Task | None = None
    grace_timer: asyncio.TimerHandle | None = None
    restored: bool = False
    # Embedding rows / image features of token_ids (content ids stand for them there); snapshotted with them up
    # to the manager's snapshot_embeds_bytes.
    prompt_embeds: PromptEmbeds | None = None
    pending_embeds: PromptEmbeds | None = None  # those of the turn in progress, kept if it completes
    # Streaming input (/v1/stream `append`): the next user message so far; the next turn's input ends it.
    pending_input: str = ""

    @property
    def busy(self) -> bool:
        return self.current is not None


def _text_of(content) -> str:
    """A message's text: its string, or its text parts (an image part has none)."""
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def _prepend_input(request: GenerateRequest, text: str) -> None:
    """Streamed input starts the turn's input: its prompt, or its last message's text."""
    if request.messages:
        last = request.messages[-1]
        content = last["content"]
        content = text + content if isinstance(content, str) else [{"type": "text", "text": text}, *content]
        request.messages = [*request.messages[:-1], {**last, "content": content}]
    elif request.prompt is not None:
        request.prompt = text + request.prompt
    else:
        raise SessionError("invalid_request", "appended text ends with a prompt or messages turn, not tokens")


class SessionManager:
    def __init__(self, engine: AsyncEngine, store: SessionStore, *, max_sessions: int = 10_000,
                 idle_ttl_s: float = 3600.0, resume_grace_s: float = 60.0,
                 detached_buffer_tokens: int = 256, model_id: str = "",
                 store_probe_interval_s: float = 1.0, snapshot_embeds_bytes: int = 64 << 20) -> None:
        self.engine = engine
        self.model_id = model_id  # snapshots are bound to it (seedance.models.identity)
        self.store = store
        self.max_sessions = max_sessions
        self.idle_ttl_s = idle_ttl_s
        self.resume_grace_s = resume_grace_s
        self.detached_buffer_tokens = detached_buffer_tokens
        self.snapshot_embeds_bytes = snapshot_embeds_bytes
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.pending_saves: set[asyncio.Task] = set()
        self.snapshots_written = 0
        self.store_error: str | None = None  # why the store last failed; None while it works
        self.store_probe_interval_s = store_probe_interval_s
        self._unsaved: dict[str, tuple[Snapshot, Generation]] = {}  # newest failed snapshot per session, for the retry
        self._probe: asyncio.Task | None = None

    # ---- lookup -----------------------------------------------------------------------------------
    async def get(self, session_id: str) -> Session:
        """The live session, else restored from its snapshot, else a new one."""
        session = self.sessions.get(session_id)
        if session is None:
            session = await self._restore(session_id) or Session(session_id)
            self.sessions[session_id] = session
            self._evict_over_limit()
        self.sessions.move_to_end(session_id)
        session.last_active = time.monotonic()
        return session

    async def _restore(self, session_id: str) -> Session | None:
        try:
            snapshot = await self.store.load(session_id)
        except Exception as err:  # whatever the store's client raises: this request fails, not the connection
            self._store_failed(err)
            raise SessionError(codes.STORE_UNAVAILABLE, "the session store is unavailable; retry later",
                               503) from None
        self._store_ok()
        if snapshot is None:
            return None
        try:
            snapshot.verify(self.model_id)
            # the rows' digests are checked off the event loop (megabytes for images)
            embeds = await asyncio.to_thread(snapshot.prompt_embeds) if snapshot.embeds else snapshot.prompt_embeds()
        except ValueError as err:
            raise SessionError("invalid_request", str(err)) from None
        log.info("session %s restored from its snapshot (turn %d, %d tokens, %d embedding rows)", session_id,
                 snapshot.turn, len(snapshot.token_ids), embeds.num_rows if embeds else 0)
        return Session(session_id, list(snapshot.token_ids), snapshot.turn, list(snapshot.turns),
                       replay={k: list(v) for k, v in snapshot.replay.items()}, restored=True, prompt_embeds=embeds)

    def _evict_over_limit(self) -> None:
        for session in list(self.sessions.values()):
            if len(self.sessions) <= self.max_sessions:
                break
            if not session.busy:
                self._evict(session)

    def _evict(self, session: Session) -> None:
        """Drop from memory; its snapshot stays in the store and its KV pin is released."""
        self.sessions.pop(session.id, None)
        self.engine.unpin(session.id)

    def drop(self, session: Session) -> None:
        """A session whose client will not come back (an unnamed realtime conversation whose connection closed):
        out of memory now and its KV unpinned, rather than holding the pin until the idle TTL."""
        if not session.busy and self.sessions.get(session.id) is session:
            self._evict(session)

    def evict_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        idle = [s for s in self.sessions.values() if not s.busy and now - s.last_active > self.idle_ttl_s]
        for session in idle:
            self._evict(session)
        return len(idle)

    # ---- turns ------------------------------------------------------------------------------------
    async def prepare_turn(self, session: Session, request: GenerateRequest) -> str:
        """Make a GenerateRequest a turn of the session: its prompt becomes the conversation so far, as the
        tokens the model saw, plus the new input, and its KV stays pinned under the session for the next
        turn. Text appended to the session's next message since its last turn starts the new input.
        Returns the new input as text (for the snapshot)."""
        appended = session.pending_input
        if appended:
            _prepend_input(request, appended)
        new_ids = await self.engine.tokenize(request)  # off the event loop; the session is checked after it
        if session.busy:
            raise SessionError("invalid_request", f"session {session.id!r} has a turn in progress "
                                                  f"({session.current.id!r}): wait for its done or cancel it", 409)
        input_text = request.prompt if request.prompt is not None else "\n".join(
            _text_of(m["content"]) for m in request.messages or [])
        session.pending_input = session.pending_input[len(appended):]  # ended; an append meanwhile starts the next
        request.prompt = request.messages = request.prompt_parts = None
        request.prompt_embeds = PromptEmbeds.join(session.prompt_embeds, len(session.token_ids), request.prompt_embeds)
        session.pending_embeds = request.prompt_embeds
        request.prompt_token_ids = session.token_ids + new_ids
        request.pin_key = session.id
        return input_text

    def begin_turn(self, session: Session, request: Generation) -> None:
        """Raises the 409 prepare_turn does when another turn began while this one was being submitted."""
        if session.busy:
            raise SessionError("invalid_request", f"session {session.id!r} has a turn in progress "
                                                  f"({session.current.id!r}); wait for its done or cancel it", 409)
        session.current = request
        request.on_finish = lambda req: self._finish_turn(session, req)

    def _finish_turn(self, session: Session, request: Generation) -> None:
        """Called when the turn's last event is produced. Completed turns extend the conversation and are
        snapshotted; cancelled or failed ones leave it as it was."""
        session.current = None
        session.last_active = time.monotonic()
        self._stop_detached(session)
        final = request.final
        kept = request.keep_on_cancel and final.finish_reason is FinishReason.CANCELLED
        if final.finish_reason not in (FinishReason.STOP, FinishReason.LENGTH) and not kept:
            return
        session.token_ids = request.prompt_token_ids + request.output_token_ids
        session.prompt_embeds = session.pending_embeds
        session.turn += 1
        session.turns.append(Turn(
            request_id=request.id, input_text=request.input_text, output_text="".join(request.output_text),
            finish_reason=str(final.finish_reason), prompt_tokens=final.num_prompt_tokens,
            completion_tokens=request.completion_tokens, cached_tokens=final.num_cached_tokens))
        session.replay = {request.id: list(request.log or [])}
        snapshot = Snapshot(session_id=session.id, turn=session.turn, token_ids=list(session.token_ids),
                            last_token_id=session.token_ids[-1], model_id=self.model_id,
                            kv_cache_hash=kv_cache_hash(session.token_ids, self.model_id),
                            turns=list(session.turns), replay=session.replay, version=SNAPSHOT_VERSION)
        task = asyncio.get_running_loop().create_task(self._save(snapshot, request, session.prompt_embeds))
        self.pending_saves.add(task)
        task.add_done_callback(self.pending_saves.discard)

    def _rows_of(self, snapshot: Snapshot, embeds: PromptEmbeds) -> None:
        """The history's rows into the snapshot (a copy: bytes), unless they are over snapshot_embeds_bytes."""
        size = sum(s.rows.nbytes for s in embeds.segments)
        if size > self.snapshot_embeds_bytes:
            log.warning("session %s: %d bytes of embedding rows exceed snapshot_embeds_bytes (%d); its snapshot "
                        "holds none, so a restored copy refuses its next turn", snapshot.session_id, size,
                        self.snapshot_embeds_bytes)
            return
        snapshot.embeds = embeds_to_wire(embeds)

    async def _save(self, snapshot: Snapshot, request: Generation, embeds: PromptEmbeds | None = None) -> None:
        try:
            if embeds is not None:  # copied off the event loop
                await asyncio.to_thread(self._rows_of, snapshot, embeds)
            await self.store.save(snapshot)
        except Exception as err:
            log.warning("snapshot of session %s turn %d failed: %s", snapshot.session_id, snapshot.turn, err)
            self._store_failed(err)
            unsaved = self._unsaved.get(snapshot.session_id)
            if unsaved is None or unsaved[0].turn <= snapshot.turn:
                self._unsaved[snapshot.session_id] = (snapshot, request)
            if request.on_snapshot is not None:
                request.on_snapshot(snapshot, False)
            return
        unsaved = self._unsaved.get(snapshot.session_id)
        if unsaved is not None and unsaved[0].turn <= snapshot.turn:
            del self._unsaved[snapshot.session_id]  # this one is as new: an older retry must not overwrite it
        self._store_ok()
        self.snapshots_written += 1
        if request.on_snapshot is not None:
            request.on_snapshot(snapshot, True)

    # ---- store health -----------------------------------------------------------------------------
    def _store_failed(self, err: Exception) -> None:
        if self.store_error is None:
            log.error("session store unavailable: %s; probing it every %.1f s", err, self.store_probe_interval_s)
        self.store_error = f"{type(err).__name__}: {err}"[:200]
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_store(), name="session-store-probe")

    def _store_ok(self) -> None:
        if self.store_error is not None:
            log.info("session store is back")
            self.store_error = None
        if self._unsaved:
            unsaved, self._unsaved = self._unsaved, {}
            for snapshot, request in unsaved.values():  # written now, acknowledged late
                task = asyncio.get_running_loop().create_task(self._save(snapshot, request))
                self.pending_saves.add(task)
                task.add_done_callback(self.pending_saves.discard)

    async def _probe_store(self) -> None:
        """While the store is failing, read a key that never exists until it answers."""
        while self.store_error is not None:
            await asyncio.sleep(self.store_probe_interval_s)
            try:
                await self.store.load("\x00seedance-store-probe")
            except Exception as err:
                self.store_error = f"{type(err).__name__}: {err}"[:200]
                continue
            self._store_ok()

    # ---- away and back ----------------------------------------------------------------------------
    def detach(self, request: Generation, owner: object) -> None:
        """The client's connection is gone: keep the turn going into its replay log, bounded, then paused.
        A no-op unless `owner` still owns the request (a resume on another connection may have taken it
        before the old connection noticed it was dead)."""
        session = self.sessions.get(request.session_id)
        if session is None or session.current is not request or request.finished or request.owner is not owner:
            return
        request.owner = self
        request.on_snapshot = None
        loop = asyncio.get_running_loop()
        session.detached_task = loop.create_task(self._consume_detached(request))
        session.grace_timer = loop.call_later(self.resume_grace_s, self._grace_expired, session, request)

    async def _consume_detached(self, request: Generation) -> None:
        wake = asyncio.Event()
        request.stream.listener = wake.set
        wake.set()
        start = request.completion_tokens
        paused = False
        while not request.finished:
            await wake.wait()
            wake.clear()
            request.produce([], [])  # logged for replay, sent to nobody
            if not paused and not request.finished and request.completion_tokens - start >= self.detached_buffer_tokens:
                paused = True
                self.engine.pause(request.engine_id)  # buffer full: stop computing, keep the KV

    def _grace_expired(self, session: Session, request: Generation) -> None:
        if session.current is request and not request.finished:
            log.info("session %s: client did not come back within %.0f s; cancelling %s", session.id,
                     self.resume_grace_s, request.id)
            request.cancelled = True
            self.engine.cancel(request.engine_id)

    def _stop_detached(self, session: Session) -> None:
        if session.grace_timer is not None:
            session.grace_timer.cancel()
            session.grace_timer = None
        task, session.detached_task = session.detached_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def adopt(self, session: Session, request_id: str, owner: object) -> Generation | None:
        """A client resumed: hand the turn to its new connection (None if there is none). Returns it with
        `previous_owner` set, so a connection that has not yet noticed its death can let go of it."""
        request = session.current
        if request is None or request.id != request_id:
            return None
        self._stop_detached(session)
        request.previous_owner, request.owner = request.owner, owner
        return request

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        for session in self.sessions.values():
            self._stop_detached(session)
        if self.pending_saves:
            await asyncio.gather(*self.pending_saves, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.close()
