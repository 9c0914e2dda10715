"""One WebSocket request's output side: engine events -> protocol messages, credit accounting, and for
session requests a replay log, so the request can outlive its connection and be resumed elsewhere.

Whoever owns the request (a live connection, or the session while the client is away) calls produce();
only one owner at a time, so seq numbers and the log are exact: a resumed client gets every message after
the seq it last saw, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from seedance.engine.async_engine import AsyncEngine, RequestStream
from seedance.engine.events import FinishReason, TokenEvent
from seedance.observability.hub import RequestObs
from seedance.protocol import encode_frame
from seedance.protocol import errors as codes
from seedance.protocol.server_connection import error_message
from seedance.server.messages import chunk_message, done_message, frame_metadata

END = 1 << 62  # log position of the end marker: after every chunk


@dataclass(eq=False)
class StreamRequest:
    id: str  # the client's id (scoped to the connection or the session)
    stream: RequestStream
    engine: AsyncEngine
    binary: bool = False
    credit: int | None = None  # None: no explicit flow control
    session_id: str | None = None  # the session's key in the manager (scoped to the caller when authenticated)
    session_name: str | None = None  # the name the client gave it
    input_text: str = ""
    prompt_token_ids: list[int] = field(default_factory=list)
    next_seq: int = 0  # chunk counter
    completion_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    output_text: list[str] = field(default_factory=list)
    paused_for_credit: bool = False
    cancelled: bool = False  # the client cancelled: its end goes out whatever the credit
    final: TokenEvent | None = None
    # (seq, is_binary, message) for everything produced; kept for session requests only (replay).
    log: list[tuple[int, bool, bytes]] | None = None
    on_finish: Callable[[StreamRequest], None] | None = None
    # The session turn's snapshot was written (True: durable) or not (False); set by its connection.
    on_snapshot: Callable[[object, bool], None] | None = None
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

    def pause_for_credit(self) -> None:
        if not self.paused_for_credit:
            self.paused_for_credit = True
            self.engine.pause(self.engine_id)

    def produce(self, texts: list[bytes], frames: list[bytes]) -> None:
        """Turn the ready events into one chunk (and the end marker if it ended), respecting credit."""
        if self.finished:
            return
        if self.credit is not None and self.credit <= 0 and not self.cancelled:
            if not self.stream.queue.empty():
                self.pause_for_credit()
            return
        events = self.stream.drain()
        if self.cancelled:  # unsent tokens of a cancelled request are dropped
            events = [e for e in events if e.finished]
        if not events:
            return
        token_events = [e for e in events if e.token_id >= 0]
        final = events[-1] if events[-1].finished else None
        self.completion_tokens += len(token_events)
        self.output_token_ids += [e.token_id for e in token_events]
        text = "".join(e.text_delta for e in events)
        self.output_text.append(text)
        if self.obs is not None and token_events:
            self.obs.tokens(len(token_events))
        if token_events or text or (final is not None and self.binary):
            seq = self.next_seq
            self.next_seq += 1
            if self.credit is not None:
                self.credit -= 1
            if self.binary:
                self._emit(frames, seq, True, self._frame(seq, token_events, text, final))
            else:
                self._emit(texts, seq, False, chunk_message(self.id, seq, token_events, text))
        if final is not None:
            self.final = final
            if self.obs is not None:
                self.obs.finish(final, self.completion_tokens, self.session_id is not None)
            if final.finish_reason is FinishReason.ERROR:
                texts.append(error_message(self.id, codes.INTERNAL, "generation failed on the server"))
            if not self.binary:
                kv_reuse = (final.num_cached_tokens / final.num_prompt_tokens
                            if self.session_id is not None and final.num_prompt_tokens else None)
                self._emit(texts, END, False, done_message(self.id, final, self.completion_tokens, kv_reuse))
            if self.on_finish is not None:
                self.on_finish(self)
        elif self.credit is not None and self.credit <= 0:
            self.pause_for_credit()

    def _emit(self, out: list[bytes], seq: int, is_binary: bool, message: bytes) -> None:
        out.append(message)
        if self.log is not None:
            self.log.append((seq, is_binary, message))

    def _frame(self, seq: int, events: list[TokenEvent], text: str, final: TokenEvent | None) -> bytes:
        has_logprobs = bool(events) and events[0].logprob is not None
        return encode_frame(
            [e.token_id for e in events],
            text,
            frame_metadata(self.id, seq, events, final, self.completion_tokens),
            logprobs=[e.logprob for e in events] if has_logprobs else None,
            is_partial=final is None,
        )

    def replay_after(self, last_seq: int) -> tuple[list[bytes], list[bytes]]:
        return split_replay(self.log or (), last_seq)


def split_replay(log, last_seq: int) -> tuple[list[bytes], list[bytes]]:
    """Everything logged after last_seq (a live request's log or a snapshot's), split into JSON texts and
    MTF1 frames."""
    texts: list[bytes] = []
    frames: list[bytes] = []
    for seq, is_binary, message in log:
        if seq > last_seq:
            (frames if is_binary else texts).append(message)
    return texts, frames
