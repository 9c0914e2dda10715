"""What the engine emits per generated token."""

from __future__ import annotations

from enum import StrEnum

import msgspec


class FinishReason(StrEnum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the model's context length
    CANCELLED = "cancelled"  # the caller cancelled
    ERROR = "error"  # the engine failed while running it


class TokenEvent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One generated token. text_delta is what the client may show now: it may be empty while the
    detokenizer waits for a complete UTF-8 character or a possible stop string is held back.

    A msgspec Struct (encoded as an array) because the engine process sends every step's events to the gateway
    in one message: decoding straight into these objects is ~3x cheaper than dataclass fields by name."""

    request_id: str
    seq: int  # 0-based index of this token in the request's output
    token_id: int
    text_delta: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    num_embedding_tokens: int = 0  # prompt positions that were embedding rows sent by the client
    num_image_tokens: int = 0  # prompt positions that were image features

    @property
    def num_text_tokens(self) -> int:
        return self.num_prompt_tokens - self.num_embedding_tokens - self.num_image_tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
