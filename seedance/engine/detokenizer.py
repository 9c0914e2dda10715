"""Incremental detokenization with the tokenizers library's DecodeStream: text is released only once
it forms complete characters, and the prompt primes the stream so leading spaces come out right."""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

_PRIME_TOKENS = 8  # enough context for any decoder's merge of the first output token


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        # Negative ids stand for embedding rows (prompt_embeds.py): no text to prime with.
        prime = [t for t in prompt_token_ids[-_PRIME_TOKENS:] if t >= 0]
        self._stream = DecodeStream(ids=prime, skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        return self._stream.step(self._tokenizer, token_id) or ""

    def stepper(self):
        """`step` without this object's frame: (DecodeStream.step, tokenizer), for the per-token hot path."""
        return self._stream.step, self._tokenizer
