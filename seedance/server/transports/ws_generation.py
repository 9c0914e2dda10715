"""One WebSocket request's output side: a Generation whose steps become protocol messages (JSON chunks and
done, or MTF1 frames)."""

from __future__ import annotations

from dataclasses import dataclass

from seedance.engine.events import FinishReason, TokenEvent
from seedance.protocol import encode_frame
from seedance.protocol import errors as codes
from seedance.protocol.server_connection import ServerConnection, error_message
from seedance.server.transports.ws_messages import chunk_message, done_message, frame_metadata
from seedance.serving.generation import END, Generation


@dataclass(eq=False)
class WsGeneration(Generation):
    binary: bool = False
    next_seq: int = 0  # chunk counter (it survives a resume: the client's last_seq counts in it)
    index: int | None = None  # its choice, when its generate has n > 1 (ws_choices.py sends the one done)

    @property
    def engine_ids(self) -> tuple[str, ...]:
        """The engine requests a cancel, pause, resume or priority of its id applies to."""
        return (self.stream.request_id,)

    def write_ready(self, protocol: ServerConnection, texts: list[bytes], frames: list[bytes]) -> None:
        """The writer's turn: take what the engine produced, as far as the id's credit allows, and encode it."""
        stream = self.stream
        if stream.queue.empty():
            return  # nothing delivered (another request of the connection's step): no credit spent, nothing to say
        if protocol.may_take(self.id, True):
            events = stream.drain()
            protocol.receive_events(self.id, events)
            self.encode(events, texts, frames)

    def sent(self) -> None:
        """Its end marker went to the socket."""
        if self.obs is not None:
            self.obs.sent()

    def produce(self, texts: list[bytes], frames: list[bytes]) -> None:
        """Encode everything the engine produced since the last call (its owner has no credit to respect:
        the session while the client is away)."""
        self.encode(self.stream.drain(), texts, frames)

    def encode(self, events: list[TokenEvent], texts: list[bytes], frames: list[bytes]) -> None:
        """Turn one batch of events into one chunk or frame (and the end marker if it ended). Credit is the
        connection's (protocol/server_connection.py decides which events go now)."""
        if self.final is not None:  # finished (the property costs a call per chunk)
            return
        if self.cancelled:  # unsent tokens of a cancelled request are dropped
            events = [e for e in events if e.finished]
        if not events:
            return
        step = self.take(events)
        final = step.final
        if step.tokens or step.text or (final is not None and self.binary):
            seq = self.next_seq
            self.next_seq += 1
            if self.binary:
                self.emit(frames, seq, True, self._frame(seq, step.tokens, step.text, final))
            else:
                self.emit(texts, seq, False, chunk_message(self.id, seq, step.tokens, step.text, self.index))
        if final is not None:
            self.end(final)
            if final.finish_reason is FinishReason.ERROR:
                texts.append(error_message(self.id, codes.INTERNAL, "generation failed on the server"))
            if not self.binary and self.index is None:
                kv_reuse = (final.num_cached_tokens / final.num_prompt_tokens
                            if self.session_id is not None and final.num_prompt_tokens else None)
                self.emit(texts, END, False, done_message(self.id, final, self.completion_tokens, kv_reuse))
            if self.on_finish is not None:
                self.on_finish(self)

    def _frame(self, seq: int, events: list[TokenEvent], text: str, final: TokenEvent | None) -> bytes:
        has_logprobs = bool(events) and events[0].logprob is not None
        return encode_frame(
            [e.token_id for e in events],
            text,
            frame_metadata(self.id, seq, events, final, self.completion_tokens),
            logprobs=[e.logprob for e in events] if has_logprobs else None,
            is_multimodal=self.stream.is_multimodal,
            is_partial=final is None,
        )
