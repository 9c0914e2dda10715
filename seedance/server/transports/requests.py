"""A protocol `generate` message -> an engine GenerateRequest (shared by WebSocket and polling)."""

from __future__ import annotations

import json
import re

from seedance.engine.async_engine import GenerateRequest
from seedance.engine.errors import InvalidRequest
from seedance.engine.image_prompt import ImageInput
from seedance.engine.prompt_embeds import EncodedRows
from seedance.engine.sampling_params import GuidedDecoding, SamplingParams
from seedance.protocol import EmbeddingPart, Generate, ImageUrlContent, TextPart, decode_binary_prompt

_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,")


def image_from_url(url: str) -> ImageInput:
    """An image content part's data: URL as an ImageInput (its base64 is decoded on the vision thread). Any other
    URL is refused: the server fetches nothing on a client's behalf."""
    head = _DATA_URL.match(url[:128])
    if head is None:
        raise InvalidRequest("image_url.url must be a data:image/...;base64,... URL: this server fetches no URLs")
    return ImageInput(url[head.end():])


def chat_content(content):
    """Wire content parts (text, image_url) -> the engine's: a string when there is no image, else parts."""
    if isinstance(content, str):
        return content
    if not any(isinstance(p, ImageUrlContent) for p in content):
        return "".join(p.text for p in content)
    return [{"type": "image", "image": image_from_url(p.image_url.url)} if isinstance(p, ImageUrlContent)
            else {"type": "text", "text": p.text} for p in content]


def _guided(msg: Generate) -> GuidedDecoding | None:
    if msg.guided_json is not None:
        return GuidedDecoding("json_schema", json.dumps(msg.guided_json, sort_keys=True, separators=(",", ":")))
    if msg.guided_regex is not None:
        return GuidedDecoding("regex", msg.guided_regex)
    if msg.guided_choice is not None:
        return GuidedDecoding("choice", json.dumps(msg.guided_choice))
    if msg.guided_grammar is not None:
        return GuidedDecoding("grammar", msg.guided_grammar)
    return None


def generate_request_from(msg: Generate, request_id: str) -> GenerateRequest:
    params = SamplingParams(
        max_tokens=msg.max_tokens,
        temperature=msg.temperature,
        top_p=msg.top_p,
        top_k=msg.top_k,
        seed=msg.seed,
        stop=msg.stop_strings,
        stop_token_ids=list(msg.stop_token_ids or []),
        ignore_eos=msg.ignore_eos,
        logprobs=msg.logprobs,
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        repetition_penalty=msg.repetition_penalty,
        logit_bias=dict(msg.logit_bias or {}),
        guided=_guided(msg),
    )
    request = GenerateRequest(params=params, priority=msg.priority, request_id=request_id)
    if msg.prompt_parts is not None:
        request.prompt_parts = [
            p.text if isinstance(p, TextPart) else EncodedRows(p.b64) if isinstance(p, EmbeddingPart) else list(p.ids)
            for p in msg.prompt_parts
        ]  # embedding rows are decoded and checked on the engine's tokenizer thread, against the model
    elif msg.prompt_b64 is not None and msg.prompt_format == "embedding_f32le":
        request.prompt_parts = [EncodedRows(msg.prompt_b64)]
    elif msg.prompt_b64 is not None:
        request.prompt_token_ids = decode_binary_prompt(msg)
    elif msg.messages is not None:
        request.messages = [{"role": m.role, "content": chat_content(m.content)} for m in msg.messages]
    else:
        request.prompt = msg.prompt
    return request
