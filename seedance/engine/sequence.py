"""A request's life inside the engine: its tokens, its KV blocks and where it stands."""

from __future__ import annotations

import itertools
from enum import Enum, auto
from typing import TYPE_CHECKING

from seedance.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from seedance.engine.prompt_embeds import PromptEmbeds

_arrival_counter = itertools.count()


class SequenceStatus(Enum):
    WAITING = auto()  # queued, or preempted and waiting to be recomputed
    RUNNING = auto()  # in the batch
    PAUSED = auto()  # out of the batch, KV kept (flow control, disconnect grace)
    FINISHED = auto()


class Sequence:
    """Plain data the scheduler and block manager reason about. An embedding prompt's rows ride along in
    prompt_embeds for the runner alone; the rest of the engine sees their content ids (prompt_embeds.py)."""

    __slots__ = (
        "admitted_once",
        "arrival",
        "arrival_time",
        "block_hashes",
        "block_table",
        "client",
        "finish_reason",
        "num_cached_tokens",
        "num_committed_blocks",
        "num_computed_tokens",
        "num_prompt_tokens",
        "params",
        "pause_requested",
        "pin_key",
        "priority",
        "prompt_embeds",
        "request_id",
        "status",
        "token_ids",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        arrival_time: float = 0.0,
        prompt_embeds: PromptEmbeds | None = None,
    ) -> None:
        self.request_id = request_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.prompt_embeds = prompt_embeds  # rows spliced in at their positions (token ids there are content ids)
        self.params = params
        self.priority = priority  # lower value is served first, as in vLLM
        self.arrival_time = arrival_time
        self.arrival = next(_arrival_counter)  # FIFO tie-break within a priority
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # BLAKE3 chain over this sequence's full blocks
        self.num_committed_blocks = 0  # leading blocks already published to the prefix cache
        self.admitted_once = False
        self.num_computed_tokens = 0  # tokens whose KV is in the cache
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache at first admission
        self.finish_reason: str | None = None
        self.pause_requested = False
        self.pin_key: str | None = None  # session whose KV this sequence continues and leaves pinned
        self.client: str | None = None  # whose request (a connection): the scheduler's per-client share

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return f"Sequence({self.request_id!r}, {self.status.name}, {self.num_computed_tokens}/{len(self)})"

    def num_prompt_rows(self, kind: str) -> int:
        """Prompt positions filled by embedding rows of this kind ("embedding" or "image")."""
        return self.prompt_embeds.count(kind) if self.prompt_embeds is not None else 0

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
