"""Plain-data builders for engine tests."""

from __future__ import annotations

from seedance.engine.sampling_params import SamplingParams
from seedance.engine.sequence import Sequence


def make_seq(
    rid: str,
    n_prompt: int,
    priority: int = 0,
    arrival_time: float = 0.0,
    first_token: int = 1,
    max_tokens: int = 16,
) -> Sequence:
    return Sequence(
        rid,
        list(range(first_token, first_token + n_prompt)),
        SamplingParams(max_tokens=max_tokens, temperature=0.0),
        priority,
        arrival_time,
    )


def complete_step(out, next_token: int = 7, block_manager=None) -> None:
    """What the engine does after the model ran: advance computed counts, publish full blocks to the
    prefix cache, append sampled tokens."""
    for chunk in out.chunks:
        chunk.seq.num_computed_tokens += chunk.num_tokens
        if block_manager is not None:
            block_manager.commit(chunk.seq)
    for chunk in out.chunks:
        if chunk.samples:
            chunk.seq.token_ids.append(next_token)
