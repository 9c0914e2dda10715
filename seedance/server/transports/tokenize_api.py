"""POST /tokenize and POST /detokenize, as vLLM and llama-server name them, with both servers' field names.

/tokenize takes `prompt` (vLLM) or `content` (llama-server), or `messages` (vLLM's chat form: the ids the chat
template gives, generation prompt included). Special tokens are off by default, unlike vLLM's default: these
are the ids a completion's prompt is fed as here, so `count` is what a prompt costs. `add_special_tokens`
(vLLM) or `add_special` (llama-server) turns them on; `return_token_strs` (vLLM) adds the vocabulary strings,
`with_pieces` (llama-server) makes each token an {"id", "piece"}. The answer carries vLLM's `count`,
`max_model_len` and `tokens`. /detokenize takes `tokens` and answers the text as vLLM's `prompt` and
llama-server's `content`. Both run on the tokenizer thread, off the event loop; a body is within
max_message_bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from seedance.models.tokenizer import TextTokenizer
from seedance.server.http.http_errors import HttpError, read_json_object
from seedance.server.http.state import STATE
from seedance.server.transports.engine_gate import check_model, ready_engine
from seedance.server.transports.openai_api import parse_chat


def _flag(body: dict, *names: str, default: bool = False) -> bool:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise HttpError(400, "invalid_request", f"{name} must be a boolean", name)
        return value
    return default


async def _off_loop(request: web.Request, fn: Callable[[], Any]) -> Any:
    engine = ready_engine(request)
    return await asyncio.get_running_loop().run_in_executor(engine.tokenize_executor, fn)


def _tokenizer(request: web.Request) -> TextTokenizer:
    tokenizer = ready_engine(request).tokenizer
    if tokenizer is None:
        raise HttpError(400, "unsupported", "this model has no tokenizer")
    return tokenizer


async def tokenize(request: web.Request) -> web.Response:
    tokenizer = _tokenizer(request)
    body = await read_json_object(request, request.app[STATE].config.max_message_bytes)
    check_model(request, body)
    special = _flag(body, "add_special_tokens", "add_special")
    strs, pieces = _flag(body, "return_token_strs"), _flag(body, "with_pieces")
    text = body.get("prompt", body.get("content"))
    if body.get("messages") is not None:
        if text is not None:
            raise HttpError(400, "invalid_request", "give prompt (or content) or messages, not both", "messages")
        if not _flag(body, "add_generation_prompt", default=True):
            raise HttpError(400, "unsupported", "add_generation_prompt false is not supported: the chat template "
                            "is applied as chat completions apply it", "add_generation_prompt")
        if special:
            raise HttpError(400, "unsupported", "add_special_tokens applies to prompt; the chat template writes "
                            "its own special tokens", "add_special_tokens")
        messages = parse_chat({"messages": body["messages"]}).request.messages
        ids = await _off_loop(request, lambda: tokenizer.apply_chat_template(messages))
    elif isinstance(text, str):
        ids = await _off_loop(request, lambda: tokenizer.encode(text, add_special_tokens=special))
    else:
        raise HttpError(400, "invalid_request", "prompt (or content) must be a string, or give messages", "prompt")
    answer: dict[str, Any] = {"count": len(ids), "max_model_len": ready_engine(request).engine.max_model_len,
                              "tokens": ids}
    if strs:
        answer["token_strs"] = await _off_loop(request, lambda: tokenizer.token_strings(ids))
    if pieces:
        texts = await _off_loop(request, lambda: [tokenizer.decode([i]) for i in ids])
        answer["tokens"] = [{"id": i, "piece": p} for i, p in zip(ids, texts, strict=True)]
    return web.json_response(answer)


async def detokenize(request: web.Request) -> web.Response:
    tokenizer = _tokenizer(request)
    body = await read_json_object(request, request.app[STATE].config.max_message_bytes)
    check_model(request, body)
    ids = body.get("tokens")
    vocab = tokenizer.vocab_size
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise HttpError(400, "invalid_request", "tokens must be an array of token ids", "tokens")
    if not all(0 <= t < vocab for t in ids):
        raise HttpError(400, "invalid_request", f"tokens has ids outside the vocabulary [0, {vocab})", "tokens")
    text = await _off_loop(request, lambda: tokenizer.decode(ids))
    return web.json_response({"prompt": text, "content": text})
