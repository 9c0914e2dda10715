"""Turns each sampled token into TokenEvents: detokenize, match stops, decide whether the request ends.

Token ids and text are held back together. While the stop matcher holds back text that could be the
start of a stop string, the tokens that produced it are held too, and released only once their whole
text is released. When a stop string matches, the tokens whose text lies wholly before it are emitted;
the token in which the stop string begins, and every later one, are dropped, so `token_ids` never
decode to any part of the stop string. The text before the stop string inside that token still goes
out, on the final event, which then carries no token (token_id -1).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from msgspec.structs import replace
from tokenizers import Tokenizer

from seedance.engine.detokenizer import IncrementalDetokenizer
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.sequence import Sequence
from seedance.engine.stop_matcher import StopStringMatcher


class SampledToken(msgspec.Struct, gc=False):
    """What the runner sampled for one sequence. A Struct the collector does not track (it holds no references
    that could form a cycle): one is made per token per step, and tracked ones drove collections in the core."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    grammar_done: bool = False  # the request's grammar admits no further token: it ends here


@dataclass(slots=True)
class _Held:
    sampled: SampledToken
    index: int  # 0-based position in the request's output
    end: int  # where its text ends, in characters of the whole output text


class RequestOutputState:
    def __init__(
        self, seq: Sequence, tokenizer: Tokenizer | None, eos_token_ids: frozenset[int], max_model_len: int
    ) -> None:
        self.seq = seq
        params = seq.params
        self.detokenizer = IncrementalDetokenizer(tokenizer, seq.token_ids) if tokenizer else None
        self.stop_matcher = StopStringMatcher(params.stop)
        self.stop_token_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else eos_token_ids)
        self.max_model_len = max_model_len
        self.held: list[_Held] = []  # tokens whose text is not wholly released yet
        self.text_fed = 0  # characters of output text given to the stop matcher
        self.unassigned = ""  # text released by the matcher but not yet attached to an event
        self.unassigned_at = 0  # where `unassigned` starts, in characters of the output text
        # Without stop strings nothing is ever held back: each token is one event with its own text (`direct_event`).
        self.direct = not self.stop_matcher.stops
        self._decode, self._tokenizer = self.detokenizer.stepper() if self.detokenizer else (None, None)
        self.num_embedding_tokens = seq.num_prompt_rows("embedding")
        self.num_image_tokens = seq.num_prompt_rows("image")

    def process(self, sampled: SampledToken) -> list[TokenEvent]:
        """Call after sampled.token_id was appended to seq.token_ids. Returns the events now ready, in
        order (none while the token's text is held back); the last one is final when the request ends."""
        if self.direct:
            return [self.direct_event(sampled)]
        seq, token_id = self.seq, sampled.token_id
        index = seq.num_output_tokens - 1
        if token_id in self.stop_token_ids:
            # Special/stop tokens never reach the text; held-back text and tokens are flushed first.
            events = self._release(self.stop_matcher.flush(), len(self.held))
            events.append(self._event(sampled, index, "", FinishReason.STOP, token_id))
            return events
        delta = self.detokenizer.step(token_id) if self.detokenizer else ""
        self.text_fed += len(delta)
        self.held.append(_Held(sampled, index, self.text_fed))
        released, matched = self.stop_matcher.feed(delta)
        if matched is not None:
            match_at = self.unassigned_at + len(self.unassigned) + len(released)  # where the stop begins
            before = sum(1 for h in self.held if h.end <= match_at)
            events = self._release(released, before)
            events.append(self._event(None, index + 1, self._take(match_at), FinishReason.STOP, matched))
            self.held.clear()
            return events
        if sampled.grammar_done:
            events = self._release(released + self.stop_matcher.flush(), len(self.held))
            events[-1] = replace(events[-1], finish_reason=FinishReason.STOP)
            return events
        if self._length_reached(seq.num_output_tokens):
            events = self._release(released + self.stop_matcher.flush(), len(self.held))
            events[-1] = replace(events[-1], finish_reason=FinishReason.LENGTH)  # the current token: held last
            return events
        released_to = self.unassigned_at + len(self.unassigned) + len(released)
        return self._release(released, sum(1 for h in self.held if h.end <= released_to))

    def direct_event(self, sampled: SampledToken) -> TokenEvent:
        """`process` for a request without stop strings (`direct`), where the matcher would hold nothing back:
        its one event, built without the hold-back bookkeeping (every token of every such request takes this
        path; LLMEngine.step calls it without the list)."""
        seq, token_id = self.seq, sampled.token_id
        num_output = len(seq.token_ids) - seq.num_prompt_tokens
        if token_id in self.stop_token_ids:
            text, finish, stop_reason = "", FinishReason.STOP, token_id
        else:
            text = (self._decode(self._tokenizer, token_id) or "") if self._decode is not None else ""
            stop_reason = None
            if sampled.grammar_done:
                finish = FinishReason.STOP
            elif self._length_reached(num_output):
                finish = FinishReason.LENGTH
            else:
                finish = None
        return TokenEvent(seq.request_id, num_output - 1, token_id, text, sampled.logprob, sampled.top_logprobs,
                          finish, stop_reason, seq.num_prompt_tokens, seq.num_cached_tokens,
                          self.num_embedding_tokens, self.num_image_tokens)

    def _length_reached(self, num_output: int) -> bool:
        """The request's length limit, one rule for both paths: its max_tokens or the model's context."""
        return num_output >= self.seq.params.max_tokens or len(self.seq.token_ids) >= self.max_model_len

    def _release(self, text: str, count: int) -> list[TokenEvent]:
        """Take `text` from the matcher, then emit the first `count` held tokens, each with its text."""
        self.unassigned += text
        out, self.held = self.held[:count], self.held[count:]
        return [self._event(h.sampled, h.index, self._take(h.end), None, None) for h in out]

    def _take(self, end: int) -> str:
        """The released text up to `end` (output-text characters), not yet given to an event."""
        n = max(0, min(end - self.unassigned_at, len(self.unassigned)))
        text, self.unassigned = self.unassigned[:n], self.unassigned[n:]
        self.unassigned_at += n
        return text

    def _event(self, sampled: SampledToken | None, index: int, text: str, finish: FinishReason | None,
               stop_reason: str | int | None) -> TokenEvent:
        seq = self.seq
        return TokenEvent(
            request_id=seq.request_id,
            seq=index,
            token_id=sampled.token_id if sampled is not None else -1,
            text_delta=text,
            logprob=sampled.logprob if sampled is not None else None,
            top_logprobs=sampled.top_logprobs if sampled is not None else None,
            finish_reason=finish,
            stop_reason=stop_reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            num_embedding_tokens=self.num_embedding_tokens,
            num_image_tokens=self.num_image_tokens,
        )
