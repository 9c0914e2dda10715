"""Engine events -> WebSocket protocol messages (JSON bytes) and MTF1 frame metadata."""

from __future__ import annotations

import msgspec

from seedance.engine.events import TokenEvent
from seedance.protocol import Chunk, Done, SnapshotAck, TokenLogprob, Usage, encode_server_message


def _logprobs(events: list[TokenEvent]) -> list[TokenLogprob] | None:
    if not events or events[0].logprob is None:
        return None
    return [TokenLogprob(token_id=e.token_id, logprob=e.logprob,
                         top=list(e.top_logprobs) if e.top_logprobs else None) for e in events]


def chunk_message(request_id: str, seq: int, events: list[TokenEvent], text: str) -> bytes:
    """events: the chunk's token events; text: all the text (a final event without a token may add some)."""
    return encode_server_message(Chunk(id=request_id, seq=seq, text=text,
                                       token_ids=[e.token_id for e in events], logprobs=_logprobs(events)))


def usage_of(final: TokenEvent, completion_tokens: int) -> Usage:
    usage = Usage(prompt_tokens=final.num_prompt_tokens, completion_tokens=completion_tokens,
                  cached_tokens=final.num_cached_tokens)
    if final.num_embedding_tokens or final.num_image_tokens:  # a multimodal prompt: its split, text and rows
        usage.text_tokens, usage.embedding_tokens = final.num_text_tokens, final.num_embedding_tokens
        usage.image_tokens = final.num_image_tokens
    return usage


def done_message(request_id: str, final: TokenEvent, completion_tokens: int, kv_reuse: float | None = None) -> bytes:
    return encode_server_message(Done(id=request_id, finish_reason=str(final.finish_reason),
                                      usage=usage_of(final, completion_tokens), stop_reason=final.stop_reason,
                                      kv_reuse=None if kv_reuse is None else round(kv_reuse, 4)))


def snapshot_message(request_id: str, session_name: str, snapshot) -> bytes:
    return encode_server_message(SnapshotAck(id=request_id, session=session_name, turn=snapshot.turn,
                                             kv_cache_hash=snapshot.kv_cache_hash))


def frame_metadata(request_id: str, seq: int, events: list[TokenEvent], final: TokenEvent | None,
                   completion_tokens: int) -> dict:
    meta: dict = {"id": request_id, "seq": seq}
    if events and events[0].top_logprobs:
        meta["top_logprobs"] = [[list(pair) for pair in e.top_logprobs or ()] for e in events]
    if final is not None:
        meta.update(finish_reason=str(final.finish_reason), stop_reason=final.stop_reason,
                    usage=msgspec.to_builtins(usage_of(final, completion_tokens)))
    return meta
