"""Turns each sampled token into a TokenEvent: detokenize, match stops, decide whether the request ends."""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from seedance.engine.detokenizer import IncrementalDetokenizer
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.sequence import Sequence
from seedance.engine.stop_matcher import StopStringMatcher


@dataclass(slots=True)
class SampledToken:
    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None


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

    def process(self, sampled: SampledToken) -> TokenEvent:
        """Call after sampled.token_id was appended to seq.token_ids."""
        seq, token_id = self.seq, sampled.token_id
        finish: FinishReason | None = None
        stop_reason: str | int | None = None
        if token_id in self.stop_token_ids:
            # Special/stop tokens never reach the text; held-back text is flushed with this event.
            text = self.stop_matcher.flush()
            finish, stop_reason = FinishReason.STOP, token_id
        else:
            delta = self.detokenizer.step(token_id) if self.detokenizer else ""
            text, matched = self.stop_matcher.feed(delta)
            if matched is not None:
                finish, stop_reason = FinishReason.STOP, matched
            elif seq.num_output_tokens >= seq.params.max_tokens or len(seq) >= self.max_model_len:
                finish = FinishReason.LENGTH
                text += self.stop_matcher.flush()
        return TokenEvent(
            request_id=seq.request_id,
            seq=seq.num_output_tokens - 1,
            token_id=token_id,
            text_delta=text,
            logprob=sampled.logprob,
            top_logprobs=sampled.top_logprobs,
            finish_reason=finish,
            stop_reason=stop_reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
        )
