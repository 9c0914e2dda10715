"""What a session snapshot holds, and the hash that ties it to the KV it describes.

Format 2 (SNAPSHOT_VERSION) adds the history's embedding rows and image features (the rows its negative
content ids stand for), so a restored session rebuilds exactly the KV it lost. Format 1 snapshots (no
`version` field, no rows) still load; one whose history has rows is refused at restore (it cannot be rebuilt).
"""

from __future__ import annotations

import time

import blake3
import msgspec
import numpy as np

from seedance.engine.core_protocol import EmbedRows, embeds_from_wire
from seedance.engine.prompt_embeds import PromptEmbeds, content_ids, digest_of

SNAPSHOT_VERSION = 2


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
    version: int = 1  # format 1 snapshots have no version field; the manager writes SNAPSHOT_VERSION
    # The history's embedding rows / image features, position by position (engine/core_protocol.py EmbedRows:
    # raw bytes, dtype, digest; little-endian, as every host we run on).
    embeds: list[EmbedRows] = msgspec.field(default_factory=list)

    def verify(self, model_id: str = "") -> None:
        if self.version > SNAPSHOT_VERSION:
            raise ValueError(f"snapshot of session {self.session_id!r} has format {self.version}, newer than this "
                             f"server's ({SNAPSHOT_VERSION}): refused")
        if self.model_id != model_id:
            raise ValueError(f"snapshot of session {self.session_id!r} was taken with another model "
                             f"({self.model_id or 'unknown'}; this server runs {model_id}): refused, its KV cannot "
                             "be recomputed here")
        if kv_cache_hash(self.token_ids, self.model_id) != self.kv_cache_hash:
            raise ValueError(f"snapshot of session {self.session_id!r} is corrupt: kv_cache_hash mismatch")
        if self.token_ids and self.token_ids[-1] != self.last_token_id:
            raise ValueError(f"snapshot of session {self.session_id!r} is corrupt: last_token_id mismatch")

    def prompt_embeds(self) -> PromptEmbeds | None:
        """The history's rows, each segment checked against its digest and the content ids standing for it in
        token_ids (which kv_cache_hash covers), so verified rows rebuild exactly the KV that was lost. ValueError
        for rows that do not match, or a history with rows the snapshot does not hold (format 1, or over the
        manager's snapshot_embeds_bytes)."""
        try:
            embeds = embeds_from_wire(self.embeds)
        except ValueError as err:
            raise ValueError(f"snapshot of session {self.session_id!r} is corrupt: {err}") from None
        segments = embeds.segments if embeds is not None else ()
        for seg in segments:
            ids = self.token_ids[seg.start:seg.end]
            if digest_of(seg.rows) != seg.digest or ids != content_ids(seg.digest, seg.rows.shape[0]):
                raise ValueError(f"snapshot of session {self.session_id!r} is corrupt: embedding rows at "
                                 f"{seg.start} do not match its history")
        if sum(t < 0 for t in self.token_ids) != sum(s.rows.shape[0] for s in segments):
            raise ValueError(f"snapshot of session {self.session_id!r} (format {self.version}) does not hold the "
                             "embedding rows or images of its history, so its KV cannot be rebuilt: start a new "
                             "session")
        return embeds


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return _encoder.encode(snapshot)


def decode_snapshot(data: bytes) -> Snapshot:
    return _decoder.decode(data)
