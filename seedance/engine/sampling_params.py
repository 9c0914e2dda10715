"""Per-request generation settings, validated once at admission."""

from __future__ import annotations

from dataclasses import dataclass, field

from seedance.engine.errors import InvalidRequest

MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024  # entries in one request's logit_bias
GUIDED_KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")


@dataclass(frozen=True, slots=True)
class GuidedDecoding:
    """A grammar the output must match (engine/guided.py compiles it). spec: the JSON schema as canonical JSON
    text, a regex, a JSON list of choice strings, or a Lark grammar; "" for json_object. strict: refuse schema
    keywords the compiler does not implement instead of ignoring them. Hashable: the compile cache's key."""

    kind: str
    spec: str = ""
    strict: bool = True


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
    # Penalties as OpenAI and vLLM define them: presence / frequency subtract from the logit of each token already
    # generated (once, or once per occurrence); repetition divides a positive logit of any token in the prompt or
    # the output by it and multiplies a negative one (transformers' RepetitionPenaltyLogitsProcessor).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit, in [-100, 100]
    guided: GuidedDecoding | None = None

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
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InvalidRequest(f"{name} must be in [-2, 2]")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise InvalidRequest("repetition_penalty must be in (0, 10]")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidRequest(f"logit_bias has more than {MAX_LOGIT_BIAS} entries")
        if any(t < 0 or not -100.0 <= b <= 100.0 for t, b in self.logit_bias.items()):
            raise InvalidRequest("logit_bias maps token ids (>= 0) to values in [-100, 100]")
        if self.guided is not None and self.guided.kind not in GUIDED_KINDS:
            raise InvalidRequest(f"guided decoding kind must be one of {', '.join(GUIDED_KINDS)}")
        if len(self.stop) > 16:
            raise InvalidRequest("at most 16 stop strings")

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
