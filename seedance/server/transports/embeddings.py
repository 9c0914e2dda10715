"""POST /v1/embeddings in the OpenAI shape: one input or a batch (strings or token-id arrays), `encoding_format`
float or base64 (little-endian float32, what the openai SDK asks for by default and decodes), `usage`.

Each vector is the served model's mean-pooled, L2-normalised last hidden state (models/pooling.py), computed
on the engine thread (engine/embedding.py); text is tokenized on the tokenizer thread. Bounded per request:
`max_embedding_inputs` inputs, each within the prompt limit, `max_embedding_tokens` tokens in all; at most
`max_pending_embeddings` requests are computed or waiting at once, beyond that a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64

import msgspec
import numpy as np
from aiohttp import web

from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.embedding import embed, embedding_shape
from seedance.engine.errors import EngineError
from seedance.server.http.http_errors import HttpError, from_engine_error, read_json_object
from seedance.server.http.state import STATE
from seedance.server.transports.engine_gate import check_model, ready_engine

PENDING = web.AppKey("embeddings_pending", list)  # [requests being computed or waiting for the engine thread]


def _is_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def parse_inputs(value: object, max_inputs: int) -> list[str | list[int]]:
    """`input` as OpenAI takes it: a string, an array of strings, an array of token ids, or an array of those."""
    if isinstance(value, str) or _is_ids(value):
        items: list = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) or _is_ids(v) for v in value):
        items = value
    else:
        raise HttpError(400, "invalid_request", "input must be a string, an array of strings, an array of token "
                        "ids or an array of token-id arrays (none empty)", "input")
    if len(items) > max_inputs:
        raise HttpError(400, "invalid_request", f"input has {len(items)} items; at most {max_inputs} per request "
                        "(max_embedding_inputs)", "input")
    if any(item == "" for item in items):
        raise HttpError(400, "invalid_request", "input must not contain empty strings", "input")
    return items


async def _token_lists(engine: AsyncEngine, items: list[str | list[int]], vocab: int, max_total: int
                       ) -> list[list[int]]:
    lists: list[list[int]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            try:
                ids = await engine.tokenize(GenerateRequest(prompt=item))
            except EngineError as err:
                raise from_engine_error(err) from None
        else:
            ids = item
            if not all(0 <= t < vocab for t in ids):
                raise HttpError(400, "invalid_request", f"input[{i}] has token ids outside [0, {vocab})", "input")
        if not ids:
            raise HttpError(400, "invalid_request", f"input[{i}] has no tokens", "input")
        if len(ids) > engine.max_prompt_tokens:
            raise HttpError(400, "invalid_request", f"input[{i}] has {len(ids)} tokens; the limit is "
                            f"{engine.max_prompt_tokens}", "input")
        lists.append(ids)
        if sum(map(len, lists)) > max_total:
            raise HttpError(400, "invalid_request", f"input has more than {max_total} tokens in all "
                            "(max_embedding_tokens)", "input")
    return lists


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def install(app: web.Application) -> None:
    app[PENDING] = [0]
    app.router.add_post("/v1/embeddings", embeddings)


async def embeddings(request: web.Request) -> web.Response:
    engine = ready_engine(request)
    cfg = request.app[STATE].config
    body = await read_json_object(request, cfg.max_message_bytes)
    check_model(request, body)
    try:
        size, vocab = embedding_shape(engine)
    except EngineError as err:
        raise HttpError(400, "unsupported", str(err)) from None
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise HttpError(400, "invalid_request", "encoding_format must be float or base64", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions != size):
        raise HttpError(400, "unsupported", f"dimensions must be this model's {size}: its embeddings are not "
                        "trained to be truncated (Matryoshka)", "dimensions")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise HttpError(400, "invalid_request", "user must be a string", "user")
    items = parse_inputs(body.get("input"), cfg.max_embedding_inputs)
    pending = request.app[PENDING]
    if pending[0] >= cfg.max_pending_embeddings:
        raise HttpError(429, "overloaded", f"{pending[0]} embedding requests are in progress (max_pending_embeddings); "
                        "retry later", headers={"Retry-After": "1"})
    pending[0] += 1
    try:
        lists = await _token_lists(engine, items, vocab, cfg.max_embedding_tokens)
        vectors = await embed(engine, lists)
    finally:
        pending[0] -= 1
    tokens = sum(map(len, lists))

    def body_text() -> bytes:  # 128 vectors of 576 floats take tens of ms to format: off the event loop
        return msgspec.json.encode({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _encode(np.asarray(v), encoding)}
                     for i, v in enumerate(vectors)],
            "model": cfg.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    return web.Response(body=await asyncio.to_thread(body_text), content_type="application/json")
