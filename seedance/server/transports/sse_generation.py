"""An OpenAI SSE stream as a Generation: the same ownership, replay log and session hand-off as the
WebSocket path, with OpenAI chunk objects as its messages. Event ids are `<request id>:<seq>`, or
`<session>/<request id>:<seq>` for session turns, which a client resumes with Last-Event-ID."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from seedance.engine.events import FinishReason
from seedance.server.transports.openai_format import OpenAIFormatter, openai_finish_reason
from seedance.serving.generation import END, Generation


def sse_event(event_id: str, payload: dict) -> bytes:
    return f"id: {event_id}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


@dataclass(eq=False)
class SseGeneration(Generation):
    fmt: OpenAIFormatter | None = None
    logprobs_k: int | None = None
    include_usage: bool = False
    first: bool = field(default=True)
    next_seq: int = 0  # event counter

    @property
    def event_prefix(self) -> str:
        return f"{self.session_name}/{self.id}" if self.session_name else self.id

    def produce(self, texts: list[bytes], frames: list[bytes]) -> None:
        """Everything the engine step produced becomes one SSE event (and one write)."""
        if self.finished:
            return
        events = self.stream.drain()
        if not events:
            return
        step = self.take(events)
        final, text = step.final, step.text
        fmt = self.fmt
        if final is not None and final.finish_reason is FinishReason.ERROR:
            error = {"error": {"message": "generation failed", "type": "server_error", "code": "internal"}}
            self.emit(texts, self.next_seq, False, sse_event(f"{self.event_prefix}:{self.next_seq}", error))
        elif text or final is not None or self.first:
            finish = openai_finish_reason(final.finish_reason) if final is not None else None
            chunk = fmt.chunk(text, fmt.logprobs(events, self.logprobs_k), finish, self.first)
            self.emit(texts, self.next_seq, False, sse_event(f"{self.event_prefix}:{self.next_seq}", chunk))
            self.next_seq += 1
            self.first = False
        if final is not None:
            self.end(final)
            tail = b""
            if self.include_usage:
                usage = fmt.usage(final.num_prompt_tokens, self.completion_tokens, final.num_cached_tokens, final)
                tail += sse_event(f"{self.event_prefix}:{self.next_seq}", fmt.usage_chunk(usage))
            self.emit(texts, END, False, tail + b"data: [DONE]\n\n")
            if self.on_finish is not None:
                self.on_finish(self)
