"""An OpenAI SSE stream as a Generation: the same ownership, replay log and session hand-off as the
WebSocket path, with OpenAI chunk objects as its messages. Event ids are `<request id>:<seq>`, or
`<session>/<request id>:<seq>` for session turns, which a client resumes with Last-Event-ID."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from seedance.engine.events import FinishReason
from seedance.server.transports.openai_format import OpenAIFormatter, openai_finish_reason
from seedance.server.transports.openai_tools import ToolChoice
from seedance.server.transports.tool_call_parser import CallParser, parse_call
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
    # Tools: a reply that is a call goes out as tool_calls deltas, its arguments as the model writes them
    # (tool_call_parser.py); text replies stream as text.
    tool_choice: ToolChoice | None = None
    holding: bool | None = None  # None: undecided until the reply's first text
    call: CallParser | None = None
    called: bool = False  # the reply ended as a complete call: finish_reason "tool_calls"
    held_events: list = field(default_factory=list)  # the call's events not yet sent (their logprobs)

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
        elif text or calls or final is not None or (self.first and not self.holding):  # a call opens with its own
            finish = openai_finish_reason(final.finish_reason) if final is not None else None
            finish = "tool_calls" if self.called else finish
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
        nothing until its name is known, then tool_calls deltas with the arguments so far. A reply that never
        became a streamed call goes out at the end: whole as tool_calls if it parses, else as text."""
        if self.holding is None and text:
            self.holding = self.tool_choice.mode != "auto" or text.startswith("{")
            self.call = CallParser(self.tool_choice.names) if self.holding else None
        if not self.holding:
            return text, events, None
        self.held_events += events
        deltas = self.call.feed(text)
        if not self.call.started:
            if not final:
                return "", [], None
            call = parse_call(self.call.text, self.tool_choice.names)  # the name came last: sent whole
            self.called = call is not None
            if self.called:
                return "", self.held_events, [dict(call, index=0)]
            return self.call.text, self.held_events, None
        self.called = final and self.call.complete
        if not deltas and not final:
            return "", [], None  # nothing new of the arguments (the call's closing brace): its events wait
        events, self.held_events = self.held_events, []
        return "", events, deltas or None
