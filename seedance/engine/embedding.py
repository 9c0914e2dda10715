"""Embeddings through the engine's own model, where the engine steps, between two steps (thread mode: on the
engine thread, whose OpenMP pool torch work shares, a second thread running torch ops would fight it for the
cores; process mode: an Embed command to the engine process). Inputs are grouped into forwards of about one
engine step's token budget (max_num_batched_tokens; a longer input alone), one forward per engine command, so a
large batch interleaves with generation steps rather than stalling them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from seedance.engine.engine_front import EngineFront
from seedance.engine.errors import InvalidRequest

if TYPE_CHECKING:  # the vectors come from the engine; this module (the gateway's side) never makes tensors
    import numpy as np
    import torch


def embedding_shape(engine: EngineFront) -> tuple[int, int]:
    """(vector size, vocabulary size) of the model; InvalidRequest when the backend has none (synthetic)."""
    shape = engine.embedding_shape
    if shape is None:
        raise InvalidRequest("this server runs the synthetic backend: it has no model to compute embeddings with")
    return shape


def groups(inputs: list[list[int]], budget: int) -> list[list[list[int]]]:
    """Consecutive inputs, in order, in groups of at most `budget` tokens (an input over it: a group of its own)."""
    out: list[list[list[int]]] = []
    size = 0
    for ids in inputs:
        if not out or size + len(ids) > budget:
            out.append([])
            size = 0
        out[-1].append(ids)
        size += len(ids)
    return out


async def embed(engine: EngineFront, inputs: list[list[int]]) -> list[torch.Tensor | np.ndarray]:
    """One unit-norm float32 vector per token list (models/pooling.py: mean of the last hidden state); a
    tensor or a numpy row (EngineFront.embed_group): np.asarray reads either without a copy."""
    embedding_shape(engine)
    vectors: list[torch.Tensor | np.ndarray] = []
    for group in groups(inputs, engine.config.max_num_batched_tokens):
        vectors += await engine.embed_group(group)
    return vectors
