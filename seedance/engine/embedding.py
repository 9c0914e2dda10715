"""Embeddings through the engine's own model, on the engine thread between two steps (torch work shares the
engine's one OpenMP pool; a second thread running torch ops would fight it for the cores). One input per
engine command, so a batch of inputs interleaves with generation steps rather than stalling them."""

from __future__ import annotations

from functools import partial

import torch

from seedance.engine.async_engine import AsyncEngine
from seedance.engine.errors import InvalidRequest
from seedance.models.pooling import mean_pooled_embedding


def _model(engine: AsyncEngine):
    model = getattr(engine.engine.runner, "model", None)
    if model is None:
        raise InvalidRequest("this server runs the synthetic backend: it has no model to compute embeddings with")
    return model


def embedding_shape(engine: AsyncEngine) -> tuple[int, int]:
    """(vector size, vocabulary size) of the model; InvalidRequest when the backend has none (synthetic)."""
    config = _model(engine).config
    return int(config.hidden_size), int(config.vocab_size)


async def embed(engine: AsyncEngine, inputs: list[list[int]]) -> list[torch.Tensor]:
    """One unit-norm float32 vector per token list (models/pooling.py: mean of the last hidden state)."""
    model = _model(engine)
    return [await engine.run_on_engine_thread(partial(mean_pooled_embedding, model, ids)) for ids in inputs]
