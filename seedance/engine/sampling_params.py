"""Per-request generation settings, validated once at admission."""

from __future__ import annotations

from dataclasses import dataclass, field

from seedance.engine.errors import InvalidRequest

MAX_TOP_LOGPROBS = 20


@dataclass(slots=True)
class SamplingParams:
    """What a client may ask of one generation. temperature 0 means greedy."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    # None: no logprobs; 0: logprob of the chosen token only; N: also the top-N alternatives.
    logprobs: int | None = None

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be >= 1")
        if not 0.0 <= self.temperature <= 100.0:
            raise InvalidRequest("temperature must be in [0, 100]")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise InvalidRequest("top_k must be >= 0 (0 disables it)")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
        if any(not s for s in self.stop):
            raise InvalidRequest("stop strings must be non-empty")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise InvalidRequest("seed must fit in 64 bits")
        if len(self.stop) > 16:
            raise InvalidRequest("at most 16 stop strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
