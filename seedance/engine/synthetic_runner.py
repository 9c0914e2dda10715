"""SYNTHETIC backend, for transport benchmarks only: it emits tokens at a configured rate per stream
and computes nothing. The scheduler, block accounting, detokenizer and stop handling are the real
engine's; only the model is replaced, so transport cost can be measured without model cost.

The tokens spell a fixed public-domain passage (tokenized with the built-in tokenizer), so clients
receive real text.
"""

from __future__ import annotations

import time

from seedance.engine.config import EngineConfig
from seedance.engine.output_processor import SampledToken
from seedance.engine.scheduler import ScheduledChunk
from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.models.tokenizer import TextTokenizer

PASSAGE = (
    " In the beginning God created the heaven and the earth. And the earth was without form, and void;"
    " and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters."
    " And God said, Let there be light: and there was light."
)


class SyntheticRateRunner:
    """Each step lasts 1/rate seconds (tokens per second per stream) and yields one token per stream."""

    kv_bytes_per_token = 0

    def __init__(self, rate: float, passage_ids: list[int], num_kv_blocks: int) -> None:
        if rate <= 0:
            raise ValueError("synthetic rate must be > 0 tokens/s")
        self.interval = 1.0 / rate
        self.passage_ids = passage_ids
        self.num_kv_blocks = num_kv_blocks
        self._next_step_at = 0.0
        # One SampledToken per passage position, shared by every stream (nothing downstream changes a sampled
        # token; the model's sampler makes fresh ones): a step then allocates no per-token sample.
        self._plain = [SampledToken(t) for t in passage_ids]

    @classmethod
    def create(cls, config: EngineConfig) -> tuple[SyntheticRateRunner, TextTokenizer, int]:
        tokenizer = TextTokenizer.from_dir(BUILTIN_MODEL_DIR)
        blocks = config.num_kv_blocks or 1 << 16
        return cls(config.synthetic_rate, tokenizer.encode(PASSAGE), blocks), tokenizer, 1 << 20

    def forget(self, request_id: str) -> None:
        pass

    def execute(self, chunks: list[ScheduledChunk]) -> list[tuple[ScheduledChunk, SampledToken]]:
        now = time.monotonic()
        if self._next_step_at > now:
            time.sleep(self._next_step_at - now)
        self._next_step_at = max(now, self._next_step_at) + self.interval
        n = len(self.passage_ids)
        plain, ids = self._plain, self.passage_ids
        out = []
        for c in chunks:
            seq = c.seq
            length = len(seq.token_ids)
            if c.start + c.num_tokens != length:  # a prefill chunk short of the prompt's end samples nothing
                continue
            i = (length - seq.num_prompt_tokens) % n
            # a logprob (0.0: the passage is certain) only for a request that asked, as the model's sampler does:
            # otherwise every chunk would carry a logprobs array the real model does not send
            out.append((c, plain[i] if seq.params.logprobs is None else SampledToken(ids[i], logprob=0.0)))
        return out
