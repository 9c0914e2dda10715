"""What a session snapshot holds, and the hash that ties it to the KV it describes."""

from __future__ import annotations

import time

import blake3
import msgspec
import numpy as np


def kv_cache_hash(token_ids: list[int]) -> str:
    """BLAKE3 of the token sequence whose KV the session holds. KV is a pure function of the tokens (and
    the model), so a restored history with this hash recomputes exactly the KV that was lost."""
    return blake3.blake3(np.asarray(token_ids, dtype=np.int64).tobytes()).hexdigest()


class Turn(msgspec.Struct, kw_only=True):
    request_id: str
    input_text: str
    output_text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Snapshot(msgspec.Struct, kw_only=True):
    session_id: str
    turn: int  # completed turns
    token_ids: list[int]  # the whole conversation as the model saw it
    last_token_id: int
    kv_cache_hash: str
    timestamp: float = msgspec.field(default_factory=time.time)
    turns: list[Turn] = msgspec.field(default_factory=list)
    # Per-request log of what was sent for the last turn, (seq, is_binary, message), for replay.
    replay: dict[str, list[tuple[int, bool, bytes]]] = msgspec.field(default_factory=dict)

    def verify(self) -> None:
        if kv_cache_hash(self.token_ids) != self.kv_cache_hash:
            raise ValueError(f"snapshot of session {self.session_id!r} is corrupt: kv_cache_hash mismatch")
        if self.token_ids and self.token_ids[-1] != self.last_token_id:
            raise ValueError(f"snapshot of session {self.session_id!r} is corrupt: last_token_id mismatch")


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return _encoder.encode(snapshot)


def decode_snapshot(data: bytes) -> Snapshot:
    return _decoder.decode(data)
