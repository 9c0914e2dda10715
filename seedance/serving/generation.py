"""One request's life above the engine, the same for every transport: the events taken per step, the
counts and output it accumulated (what a session turn and the usage are built from), the replay log, who
owns it now, and the observability hooks. No wire format: each transport's subclass encodes a step in
`produce` (server/transports/ws_generation.py for WebSocket JSON and MTF1,
server/transports/sse_generation.py for OpenAI SSE).

Whoever owns the request (a live connection, or the session while the client is away) calls produce();
only one owner at a time, so seq numbers and the log are exact: a resumed client gets every message after
the seq it last saw, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from seedance.engine.async_engine import AsyncEngine, RequestStream
from seedance.engine.events import TokenEvent
from seedance.observability.hub import RequestObs

if TYPE_CHECKING:
    from seedance.sessions.snapshot import Snapshot

END = 1 << 62  # log position of the end marker: after every chunk
ReplayLog = list[tuple[int, bool, bytes]]  # (seq, is_binary, message) for everything produced


class Step(msgspec.Struct, gc=False):
    """What one take() found: the token events (a final event may carry no token), all the text, the end. A
    msgspec Struct, not a dataclass: one is made per chunk of every stream, in a third of the time."""

    tokens: list[TokenEvent]
    text: str
    final: TokenEvent | None


@dataclass(eq=False)
class Generation:
    id: str  # the client's id (scoped to the connection or the session)
    stream: RequestStream
    engine: AsyncEngine
    session_id: str | None = None  # the session's key in the manager (scoped to the caller when authenticated)
    session_name: str | None = None  # the name the client gave it
    input_text: str = ""
    prompt_token_ids: list[int] = field(default_factory=list)
    completion_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    output_text: list[str] = field(default_factory=list)
    cancelled: bool = False  # the client cancelled: its end goes out whatever the credit
    # A cancelled session turn still extends the history with the output taken so far (realtime barge-in: the
    # answer the client saw stays in the conversation); otherwise a cancelled turn leaves the history as it was.
    keep_on_cancel: bool = False
    final: TokenEvent | None = None
    log: ReplayLog | None = None  # kept for session requests only (replay)
    on_finish: Callable[[Generation], None] | None = None
    # The session turn's snapshot was written (True: durable) or not (False); set by its connection.
    on_snapshot: Callable[[Snapshot, bool], None] | None = None
    # Who produces this request's output now: its connection (or SSE response), or the session manager
    # while the client is away. A resume moves it; only the owner may produce, detach or cancel it.
    owner: object = None
    previous_owner: object = None
    obs: RequestObs | None = None  # metrics / tracing recorder (seedance.observability)

    @property
    def finished(self) -> bool:
        return self.final is not None

    @property
    def engine_id(self) -> str:
        return self.stream.request_id

    def produce(self, texts: list[bytes], frames: list[bytes]) -> None:
        """Encode what the engine produced since the last call into texts (JSON) and frames (binary)."""
        raise NotImplementedError  # the transport's subclass

    def take(self, events: list[TokenEvent]) -> Step:
        """Account for one batch of events: counts, output, the tokens hook; the end is `end()`."""
        ids = self.output_token_ids
        if len(events) == 1 and events[0].token_id >= 0:  # the common chunk: one step's one token
            e = events[0]
            tokens, text = events, e.text_delta
            ids.append(e.token_id)
        else:
            tokens = []
            texts = []
            for e in events:  # one pass: this runs for every chunk of every stream
                if e.token_id >= 0:
                    tokens.append(e)
                    ids.append(e.token_id)
                if e.text_delta:
                    texts.append(e.text_delta)
            text = texts[0] if len(texts) == 1 else "".join(texts)  # a final event without a token may carry text
        final = events[-1] if events and events[-1].finish_reason is not None else None  # not .finished: per chunk
        self.completion_tokens += len(tokens)
        self.output_text.append(text)
        if self.obs is not None and tokens:
            self.obs.tokens(len(tokens))
        return Step(tokens, text, final)

    def end(self, final: TokenEvent) -> None:
        self.final = final
        if self.obs is not None:
            self.obs.finish(final, self.completion_tokens, self.session_id is not None)

    def emit(self, out: list[bytes], seq: int, is_binary: bool, message: bytes) -> None:
        out.append(message)
        if self.log is not None:
            self.log.append((seq, is_binary, message))

    def replay_after(self, last_seq: int) -> tuple[list[bytes], list[bytes]]:
        return split_replay(self.log or (), last_seq)


def split_replay(log: Iterable[tuple[int, bool, bytes]], last_seq: int) -> tuple[list[bytes], list[bytes]]:
    """Everything logged after last_seq (a live request's log or a snapshot's), split into JSON texts and
    MTF1 frames."""
    texts: list[bytes] = []
    frames: list[bytes] = []
    for seq, is_binary, message in log:
        if seq > last_seq:
            (frames if is_binary else texts).append(message)
    return texts, frames
