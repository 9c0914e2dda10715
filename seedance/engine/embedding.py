"""Embeddings through the engine's own model, on the engine thread between two steps (torch work shares the
engine's one OpenMP pool; a second thread running torch ops would fight it for the cores). Inputs are grouped
into forwards of about one engine step's token budget (max_num_batched_tokens; a longer input alone), one
forward per engine command, so a large batch interleaves with generation steps rather than stalling them."""

from __future__ import annotations

from functools import partial

import torch

from seedance.engine.async_engine import AsyncEngine
from seedance.engine.errors import InvalidRequest
from seedance.models.pooling import mean_pooled_embeddings


def _model(engine: AsyncEngine):
    model = getattr(engine.engine.runner, "model", None)
    if model is None:
        raise InvalidRequest("this server runs the synthetic backend: it has no model to compute embeddings with")
    return model


def embedding_shape(engine: AsyncEngine) -> tuple[int, int]:
    """(vector size, vocabulary size) of the model; InvalidRequest when the backend has none (synthetic)."""
    config = _model(engine).config
    return int(config.hidden_size), int(config.vocab_size)


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


async def embed(engine: AsyncEngine, inputs: list[list[int]]) -> list[torch.Tensor]:
    """One unit-norm float32 vector per token list (models/pooling.py: mean of the last hidden state)."""
    model = _model(engine)
    vectors: list[torch.Tensor] = []
    for group in groups(inputs, engine.config.max_num_batched_tokens):
        vectors += await engine.run_on_engine_thread(partial(mean_pooled_embeddings, model, group))
    return vectors
