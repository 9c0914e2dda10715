"""A protocol `generate` message -> an engine GenerateRequest (shared by WebSocket and polling)."""

from __future__ import annotations

import json

from seedance.engine.async_engine import GenerateRequest
from seedance.engine.sampling_params import GuidedDecoding, SamplingParams
from seedance.protocol import Generate, decode_binary_prompt


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
    if msg.prompt_b64 is not None:
        request.prompt_token_ids = decode_binary_prompt(msg)  # raises ProtocolError for embeddings
    elif msg.messages is not None:
        request.messages = [{"role": m.role, "content": m.content} for m in msg.messages]
    else:
        request.prompt = msg.prompt
    return request
