"""A protocol `generate` message -> an engine GenerateRequest (shared by WebSocket and polling)."""

from __future__ import annotations

from seedance.engine.async_engine import GenerateRequest
from seedance.engine.prompt_embeds import EncodedRows
from seedance.engine.sampling_params import SamplingParams
from seedance.protocol import EmbeddingPart, Generate, TextPart, decode_binary_prompt


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
        request.messages = [{"role": m.role, "content": m.content} for m in msg.messages]
    else:
        request.prompt = msg.prompt
    return request
