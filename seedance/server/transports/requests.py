"""A protocol `generate` message -> an engine GenerateRequest (shared by WebSocket and polling)."""

from __future__ import annotations

from seedance.engine.async_engine import GenerateRequest
from seedance.engine.sampling_params import SamplingParams
from seedance.protocol import Generate, decode_binary_prompt


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
    )
    request = GenerateRequest(params=params, priority=msg.priority, request_id=request_id)
    if msg.prompt_b64 is not None:
        request.prompt_token_ids = decode_binary_prompt(msg)  # raises ProtocolError for embeddings
    elif msg.messages is not None:
        request.messages = [{"role": m.role, "content": m.content} for m in msg.messages]
    else:
        request.prompt = msg.prompt
    return request
