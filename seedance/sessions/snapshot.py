"""What a session snapshot holds, and the hash that ties it to the KV it describes."""

from __future__ import annotations

import time

import blake3
import msgspec
import numpy as np


def kv_cache_hash(token_ids: list[int], model_id: str = "") -> str:
    """The KV a session holds is a pure function of its tokens and the model, so both are hashed: BLAKE3,
    hex, of the UTF-8 model identity (seedance.models.identity), a newline, then the token ids as
    little-endian int64. A restored history with this hash recomputes exactly the KV that was lost."""
    data = model_id.encode() + b"\n" + np.asarray(token_ids, dtype="<i8").tobytes()
    return blake3.blake3(data).hexdigest()


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
    model_id: str = ""  # the identity of the model that computed the KV (seedance.models.identity)
    timestamp: float = msgspec.field(default_factory=time.time)
    turns: list[Turn] = msgspec.field(default_factory=list)
    # Per-request log of what was sent for the last turn, (seq, is_binary, message), for replay.
    replay: dict[str, list[tuple[int, bool, bytes]]] = msgspec.field(default_factory=dict)

    def verify(self, model_id: str = "") -> None:
        if self.model_id != model_id:
            raise ValueError(f"snapshot of session {self.session_id!r} was taken with another model "
                             f"({self.model_id or 'unknown'}; this server runs {model_id}): refused, its KV cannot "
                             "be recomputed here")
        if kv_cache_hash(self.token_ids, self.model_id) != self.kv_cache_hash:
            raise ValueError(f"snapshot of session {self.session_id!r} is corrupt: kv_cache_hash mismatch")
        if self.token_ids and self.token_ids[-1] != self.last_token_id:
            raise ValueError(f"snapshot of session {self.session_id!r} is corrupt: last_token_id mismatch")


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return _encoder.encode(snapshot)


def decode_snapshot(data: bytes) -> Snapshot:
    return _decoder.decode(data)
