"""MTF1: the binary frame a `binary: true` request's chunks travel in (layout in docs/protocol.md).

Version 1 orders the payload tokens | logprobs | text | metadata, so both numeric blocks start 4-byte
aligned (the header is 16 bytes), and pads the metadata JSON with trailing spaces to a frame length that
is a multiple of 4, so frames sent back to back in one message stay aligned too. A client can then view
the blocks in place (Float32Array, numpy.frombuffer, memoryview.cast). Decoding hands out memoryviews over
the caller's buffer.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from seedance.protocol.errors import INVALID_MESSAGE, MESSAGE_TOO_LARGE, ProtocolError
from seedance.protocol.messages import Chunk, Done, TokenLogprob, Usage, _json_type

MAGIC: Final = b"MTF1"
VERSION: Final = 1
HEADER_SIZE: Final = 16
FLAG_HAS_LOGPROBS: Final = 0x01
FLAG_IS_MULTIMODAL: Final = 0x02
FLAG_IS_PARTIAL: Final = 0x04
_KNOWN_FLAGS: Final = FLAG_HAS_LOGPROBS | FLAG_IS_MULTIMODAL | FLAG_IS_PARTIAL
# Offsets are u16, so everything before the metadata block (tokens, logprobs, text) fits in 65535 bytes.
MAX_BODY_BYTES: Final = 0xFFFF
MAX_TOKENS_PER_FRAME: Final = MAX_BODY_BYTES // 4  # 16383 without logprobs, half that with them

_HEADER = struct.Struct("<4sBBHIHH")
# On a little-endian host with 4-byte C ints the wire blocks are native arrays and can be viewed in place.
_NATIVE: Final = sys.byteorder == "little" and struct.calcsize("I") == 4
_encoder = msgspec.json.Encoder()


class FrameError(ProtocolError):
    """A malformed MTF1 frame."""

    def __init__(self, message: str, *, code: str = INVALID_MESSAGE) -> None:
        super().__init__(code, message)


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame. token_ids and logprobs view the decoded buffer: keep it alive and unchanged while
    they are in use, or copy them (`.tolist()`)."""

    version: int
    is_partial: bool
    is_multimodal: bool
    token_ids: memoryview  # format "I"
    text: str
    logprobs: memoryview | None  # format "f", one per token
    metadata: dict[str, Any]

    @property
    def has_logprobs(self) -> bool:
        return self.logprobs is not None


def encode_frame(
    token_ids: Sequence[int],
    text: str,
    metadata: dict[str, Any],
    *,
    logprobs: Sequence[float] | None = None,
    is_partial: bool = True,
    is_multimodal: bool = False,
) -> bytes:
    """Build one frame. Raises ValueError when the content cannot be framed (sender bug, not peer input):
    token ids outside u32, logprobs of the wrong length, or more than MAX_BODY_BYTES before the metadata."""
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    n = len(token_ids)
    if logprobs is not None and len(logprobs) != n:
        raise ValueError(f"{len(logprobs)} logprobs for {n} tokens")
    # A zero-token frame has no logprob block to point at, so it never sets the flag (see the spec).
    has_logprobs = logprobs is not None and n > 0
    text_bytes = text.encode("utf-8")
    meta_bytes = _encoder.encode(metadata)
    text_start = 8 * n if has_logprobs else 4 * n
    metadata_offset = text_start + len(text_bytes)
    if metadata_offset > MAX_BODY_BYTES:
        raise ValueError(
            f"frame body is {metadata_offset} bytes (tokens, logprobs and text); MTF1 allows {MAX_BODY_BYTES}: "
            "split it into several frames"
        )
    # JSON allows trailing whitespace: spaces pad the frame to a multiple of 4 at no cost to parsers.
    meta_bytes += b" " * (-(HEADER_SIZE + metadata_offset + len(meta_bytes)) % 4)
    flags = (
        (FLAG_HAS_LOGPROBS if has_logprobs else 0)
        | (FLAG_IS_MULTIMODAL if is_multimodal else 0)
        | (FLAG_IS_PARTIAL if is_partial else 0)
    )
    header = _HEADER.pack(
        MAGIC, VERSION, flags, n, metadata_offset + len(meta_bytes), 4 * n if has_logprobs else 0, metadata_offset
    )
    try:
        tokens = struct.pack(f"<{n}I", *token_ids)
        floats = struct.pack(f"<{n}f", *logprobs) if logprobs is not None and has_logprobs else b""
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"cannot pack tokens/logprobs: {exc}") from None
    return b"".join((header, tokens, floats, text_bytes, meta_bytes))


def decode_frame(data: bytes | bytearray | memoryview, *, max_size: int | None = None) -> Frame:
    """Parse and validate one frame; every malformation is a FrameError naming the offending field."""
    mv = _byte_view(data)
    size = mv.nbytes
    if max_size is not None and size > max_size:
        raise FrameError(f"frame is {size} bytes, larger than max_size {max_size}", code=MESSAGE_TOO_LARGE)
    if size < HEADER_SIZE:
        raise FrameError(f"short header: frame is {size} bytes, the header alone is {HEADER_SIZE}")
    magic, version, flags, n, payload_length, logprob_offset, metadata_offset = _HEADER.unpack_from(mv, 0)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(f"unknown version {version}, this decoder reads version {VERSION}")
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"reserved flag bits set: flags=0x{flags:02x}, only 0x{_KNOWN_FLAGS:02x} are defined")
    if payload_length != size - HEADER_SIZE:
        raise FrameError(
            f"payload_length {payload_length} does not match the {size - HEADER_SIZE} bytes after the header"
        )
    if size % 4:
        raise FrameError(f"frame length {size} is not a multiple of 4 (pad the metadata with trailing spaces)")
    has_logprobs = bool(flags & FLAG_HAS_LOGPROBS)
    token_bytes = 4 * n
    if has_logprobs:
        if n == 0:
            raise FrameError("has_logprobs flag set on a frame with no tokens")
        if logprob_offset != token_bytes:
            raise FrameError(
                f"logprob_offset {logprob_offset} must be 4*token_count = {token_bytes} when has_logprobs is set"
            )
        text_start = 2 * token_bytes
    else:
        if logprob_offset != 0:
            raise FrameError(f"logprob_offset {logprob_offset} set without the has_logprobs flag")
        text_start = token_bytes
    if text_start > payload_length:
        raise FrameError(f"token_count {n} needs {text_start} bytes, past payload_length {payload_length}")
    if metadata_offset > payload_length:
        raise FrameError(f"metadata_offset {metadata_offset} is past payload_length {payload_length}")
    if metadata_offset < text_start:
        raise FrameError(
            f"metadata_offset {metadata_offset} is before the end of the "
            f"{'token and logprob blocks' if has_logprobs else 'token block'} ({text_start})"
        )
    body = mv[HEADER_SIZE:]
    try:
        text = str(body[text_start:metadata_offset], "utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(
            f"text is not valid UTF-8: {exc.reason} at text byte {exc.start} (frame byte "
            f"{HEADER_SIZE + text_start + exc.start})"
        ) from None
    metadata = _decode_metadata(body[metadata_offset:])
    token_view = _u32_view(body[:token_bytes])
    logprob_view = _f32_view(body[token_bytes:text_start]) if has_logprobs else None
    return Frame(
        version=version,
        is_partial=bool(flags & FLAG_IS_PARTIAL),
        is_multimodal=bool(flags & FLAG_IS_MULTIMODAL),
        token_ids=token_view,
        text=text,
        logprobs=logprob_view,
        metadata=metadata,
    )


def decode_frames(data: bytes | bytearray | memoryview, *, max_size: int | None = None) -> list[Frame]:
    """Split a binary WebSocket message into its frames: the server sends the frames of one engine step
    back to back in one message, each delimited by its own payload_length. max_size bounds the message."""
    mv = _byte_view(data)
    if max_size is not None and mv.nbytes > max_size:
        raise FrameError(f"message is {mv.nbytes} bytes, larger than max_size {max_size}", code=MESSAGE_TOO_LARGE)
    if not mv.nbytes:
        raise FrameError("empty message: expected at least one frame")
    frames: list[Frame] = []
    pos = 0
    while pos < mv.nbytes:
        left = mv.nbytes - pos
        if left < HEADER_SIZE:
            raise FrameError(f"frame at byte {pos}: short header: {left} bytes left, the header alone is {HEADER_SIZE}")
        if mv[pos : pos + 4] != MAGIC:
            raise FrameError(f"frame at byte {pos}: bad magic {mv[pos : pos + 4].tobytes()!r}, expected {MAGIC!r}")
        (payload_length,) = struct.unpack_from("<I", mv, pos + 8)
        if payload_length > left - HEADER_SIZE:
            raise FrameError(
                f"frame at byte {pos}: payload_length {payload_length} runs past the end of the message "
                f"({left - HEADER_SIZE} bytes left)"
            )
        end = pos + HEADER_SIZE + payload_length
        try:
            frames.append(decode_frame(mv[pos:end]))
        except FrameError as exc:
            raise FrameError(f"frame at byte {pos}: {exc.message}", code=exc.code) from None
        pos = end
    return frames


def chunk_to_frame(chunk: Chunk, done: Done | None = None) -> bytes:
    """The binary form of a chunk (and, for the request's last frame, its done): what a `binary: true`
    request receives instead of the JSON `chunk` / `done` messages."""
    metadata: dict[str, Any] = {"id": chunk.id, "seq": chunk.seq}
    logprobs: list[float] | None = None
    if chunk.logprobs is not None and chunk.token_ids:
        logprobs = [lp.logprob for lp in chunk.logprobs]
        if any(lp.top is not None for lp in chunk.logprobs):
            metadata["top_logprobs"] = [lp.top or [] for lp in chunk.logprobs]
    if done is not None:
        if done.id != chunk.id:
            raise ValueError(f"done for {done.id!r} attached to a chunk of {chunk.id!r}")
        metadata["finish_reason"] = done.finish_reason
        metadata["usage"] = msgspec.to_builtins(done.usage)
        if done.stop_reason is not None:
            metadata["stop_reason"] = done.stop_reason
    return encode_frame(chunk.token_ids, chunk.text, metadata, logprobs=logprobs, is_partial=done is None)


class _FrameMetadata(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    id: str
    seq: int
    finish_reason: str | None = None
    usage: Usage | None = None
    stop_reason: str | int | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


def frame_to_chunk(frame: Frame) -> tuple[Chunk, Done | None]:
    """The client side of chunk_to_frame: a final frame also yields the request's Done."""
    try:
        meta = msgspec.convert(frame.metadata, _FrameMetadata)
    except msgspec.ValidationError as exc:
        raise FrameError(f"frame metadata: {exc}") from None
    token_ids = frame.token_ids.tolist()
    logprobs = None
    if frame.logprobs is not None:
        tops = meta.top_logprobs
        if tops is not None and len(tops) != len(token_ids):
            raise FrameError(f"frame metadata: {len(tops)} top_logprobs entries for {len(token_ids)} tokens")
        logprobs = [
            TokenLogprob(token_id=t, logprob=lp, top=tops[i] if tops is not None else None)
            for i, (t, lp) in enumerate(zip(token_ids, frame.logprobs.tolist(), strict=True))
        ]
    chunk = Chunk(id=meta.id, seq=meta.seq, text=frame.text, token_ids=token_ids, logprobs=logprobs)
    if frame.is_partial:
        return chunk, None
    if meta.finish_reason not in ("stop", "length", "cancelled", "error") or meta.usage is None:
        raise FrameError("final frame metadata needs finish_reason (stop|length|cancelled|error) and usage")
    done = Done(id=meta.id, finish_reason=meta.finish_reason, usage=meta.usage, stop_reason=meta.stop_reason)
    return chunk, done


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    mv = memoryview(data)
    if not mv.c_contiguous:  # e.g. a strided slice: the one input that has to be copied
        return memoryview(mv.tobytes())
    if mv.ndim != 1 or mv.format not in ("B", "b", "c"):
        return mv.cast("B")
    return mv


def _decode_metadata(block: memoryview) -> dict[str, Any]:
    if not block.nbytes:
        raise FrameError("metadata block is empty, expected a JSON object (at least {})")
    # UTF-8 is checked here, not left to the JSON decoder: msgspec's error for bad UTF-8 changed type across
    # releases (UnicodeDecodeError up to 0.22, DecodeError from 0.23), and the documented error must not.
    try:
        str(block, "utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(f"metadata is not valid UTF-8: {exc.reason} at metadata byte {exc.start}") from None
    try:
        value = msgspec.json.decode(block)
    except RecursionError:
        raise FrameError("metadata JSON is nested too deeply") from None
    except msgspec.DecodeError as exc:
        raise FrameError(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FrameError(f"metadata must be a JSON object, got {_json_type(value)}")
    return value


def _u32_view(block: memoryview) -> memoryview:
    if _NATIVE:
        return block.cast("I")
    return memoryview(array("I", struct.unpack(f"<{block.nbytes // 4}I", block)))


def _f32_view(block: memoryview) -> memoryview:
    if _NATIVE:
        return block.cast("f")
    return memoryview(array("f", struct.unpack(f"<{block.nbytes // 4}f", block)))
