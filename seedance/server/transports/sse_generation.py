"""An OpenAI SSE stream as a Generation: the same ownership, replay log and session hand-off as the
WebSocket path, with OpenAI chunk objects as its messages. Event ids are `<request id>:<seq>`, or
`<session>/<request id>:<seq>` for session turns, which a client resumes with Last-Event-ID."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from seedance.engine.events import FinishReason
from seedance.server.transports.openai_format import OpenAIFormatter, openai_finish_reason
from seedance.server.transports.openai_tools import ToolChoice, tool_calls_of
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
    tail: bool = True  # end with usage and [DONE]; False for one choice of n, whose handler writes the tail once
    # Tools: a reply that is a call is held back and sent as tool_calls when it ends; text replies stream.
    tool_choice: ToolChoice | None = None
    holding: bool | None = None  # None: undecided until the reply's first text
    held_text: str = ""
    held_events: list = field(default_factory=list)

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
        calls = None
        if self.tool_choice is not None:
            text, events, calls = self._hold(text, events, final is not None)
        if final is not None and final.finish_reason is FinishReason.ERROR:
            error = {"error": {"message": "generation failed", "type": "server_error", "code": "internal"}}
            self.emit(texts, self.next_seq, False, sse_event(f"{self.event_prefix}:{self.next_seq}", error))
        elif text or final is not None or self.first:
            finish = openai_finish_reason(final.finish_reason) if final is not None else None
            finish = "tool_calls" if calls is not None else finish
            chunk = fmt.chunk(text, fmt.logprobs(events, self.logprobs_k), finish, self.first, calls)
            self.emit(texts, self.next_seq, False, sse_event(f"{self.event_prefix}:{self.next_seq}", chunk))
            self.next_seq += 1
            self.first = False
        if final is not None:
            self.end(final)
            if not self.tail:
                return
            tail = b""
            if self.include_usage:
                usage = fmt.usage(final.num_prompt_tokens, self.completion_tokens, final.num_cached_tokens, final)
                tail += sse_event(f"{self.event_prefix}:{self.next_seq}", fmt.usage_chunk(usage))
            self.emit(texts, END, False, tail + b"data: [DONE]\n\n")
            if self.on_finish is not None:
                self.on_finish(self)

    def _hold(self, text: str, events: list, final: bool) -> tuple[str, list, list[dict] | None]:
        """What of this step goes out now when tools are on: text as it comes for a text reply; for a call,
        nothing until the end, then its tool_calls (or, if it did not parse, its text)."""
        if self.holding is None and text:
            self.holding = self.tool_choice.mode != "auto" or text.startswith("{")
        if not self.holding:
            return text, events, None
        self.held_text += text
        self.held_events += events
        if not final:
            return "", [], None
        calls = tool_calls_of(self.held_text, self.tool_choice)
        return ("" if calls is not None else self.held_text), self.held_events, calls
