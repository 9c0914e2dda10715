"""The messages between the gateway and the engine-core process, msgpack-encoded with msgspec, and their framing.

Gateway -> core: one frame per event-loop turn carrying every command queued in it (add, abort, pause, resume,
set priority, unpin, embed, encode images, shutdown). A prompt's embedding rows (prompt_embeds.py: client rows,
or a session's history of them) travel as raw bytes with their dtype, position and digest, so the core rebuilds
the very tensors and content ids the gateway assembled. A prompt's images go first as pixels (EncodeImages: the
gateway decoded and resized them), the core's vision thread answers with their features (Encoded), and the
gateway assembles the prompt exactly as the thread mode does, so its rows then ride on the Add like any others.
Core -> gateway: one `Step` frame per engine step carrying all its requests' token events, the admissions
decided since the last frame, the abort results, embedding answers and image features, so the gateway's cost
per step is one read and one decode whatever the batch size (vLLM v1's EngineCore output batches, the same
shape).

A frame is a 4-byte little-endian length and the msgpack body. Sans-I/O: `FrameBuffer` cuts frames out of
bytes as they arrive; the two sides own their sockets.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from seedance.engine.events import TokenEvent
from seedance.engine.prompt_embeds import ACCEPTED_DTYPE_NAMES, EmbedSegment, PromptEmbeds
from seedance.engine.sampling_params import SamplingParams
from seedance.engine.stats import EngineStats

if TYPE_CHECKING:  # only the functions that take or make tensors import torch: the gateway of `--engine
    # process` decodes frames with this module and stays torch-free on the text path
    import torch

_LEN = struct.Struct("<I")
MAX_FRAME_BYTES = 1 << 30  # a longer length prefix is a corrupt stream, not a message


class EmbedRows(msgspec.Struct, array_like=True):
    """One EmbedSegment on the wire: its rows' raw bytes (native byte order: both ends share the host)."""

    start: int
    dtype: str  # float32, bfloat16, float16 (prompt_embeds.ACCEPTED_DTYPE_NAMES)
    num_rows: int
    data: bytes
    digest: bytes
    kind: str = "embedding"


_ITEMSIZE = dict(zip(ACCEPTED_DTYPE_NAMES, (4, 2, 2), strict=True))  # bytes per value of each dtype on the wire


def tensor_bytes(t: torch.Tensor | np.ndarray) -> tuple[str, bytes]:
    """A contiguous CPU tensor (or numpy array) of ACCEPTED_DTYPE_NAMES as (dtype name, raw bytes in native
    order)."""
    if isinstance(t, np.ndarray):
        return str(t.dtype), t.tobytes()
    import torch

    view = {2: torch.int16, 4: torch.int32}[t.element_size()]  # bfloat16 has no numpy dtype: its bits as int16
    return str(t.dtype).removeprefix("torch."), t.view(view).numpy().tobytes()


def tensor_from_bytes(data: bytes, dtype_name: str, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """tensor_bytes' tensor again; ValueError for an unknown dtype or bytes that do not fit the shape."""
    itemsize = _ITEMSIZE.get(dtype_name)
    n = 1
    for d in shape:
        n *= d
    if itemsize is None or not shape or min(shape) < 1 or len(data) != n * itemsize:
        raise ValueError(f"a tensor of {dtype_name} x {list(shape)} in {len(data)} bytes")
    import torch

    return torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype_name)).view(*shape)


def embeds_to_wire(embeds: PromptEmbeds | None) -> list[EmbedRows] | None:
    if embeds is None:
        return None
    wire = []
    for s in embeds.segments:
        dtype, data = tensor_bytes(s.rows)
        wire.append(EmbedRows(s.start, dtype, s.rows.shape[0], data, s.digest, s.kind))
    return wire


def embeds_from_wire(rows: list[EmbedRows] | None) -> PromptEmbeds | None:
    """The PromptEmbeds embeds_to_wire was given; ValueError for a segment whose bytes do not fit its shape."""
    if not rows:
        return None
    segments = []
    for r in rows:
        itemsize = _ITEMSIZE.get(r.dtype)
        if itemsize is None or r.num_rows < 1 or not r.data or len(r.data) % (r.num_rows * itemsize):
            raise ValueError(f"embedding rows of {r.dtype} x {r.num_rows} in {len(r.data)} bytes")
        width = len(r.data) // (r.num_rows * itemsize)
        segments.append(EmbedSegment(r.start, tensor_from_bytes(r.data, r.dtype, (r.num_rows, width)), r.digest,
                                     r.kind))
    return PromptEmbeds(tuple(segments))


class Add(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    token_ids: list[int]
    params: SamplingParams
    priority: int = 0
    arrival: float = 0.0  # time.monotonic() at submit (one clock for every process on the host)
    pin_key: str | None = None
    embeds: list[EmbedRows] | None = None  # the prompt's embedding rows (its negative content ids stand for them)
    client: str | None = None  # whose request (the gateway's prefix on it): max_running_per_client


class Abort(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    keep_tokens: int | None = None  # a session turn cut short keeps this many tokens' KV pinned (LLMEngine.abort)


class Pause(msgspec.Struct, tag=True, array_like=True):
    request_id: str


class Resume(msgspec.Struct, tag=True, array_like=True):
    request_id: str


class SetPriority(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    priority: int


class Unpin(msgspec.Struct, tag=True, array_like=True):
    key: str


class Embed(msgspec.Struct, tag=True, array_like=True):
    """/v1/embeddings: one group of token lists, pooled in one forward between two steps (engine/embedding.py)."""

    key: int  # the gateway's own number for it, answered in Embedded
    inputs: list[list[int]]


class EncodeImages(msgspec.Struct, tag=True, array_like=True):
    """A prompt's images for the core's vision tower: the pixels the gateway's image processor made of them
    ([n, 3, H, W], the processor's fixed size: bounded by the model, not by the files the client sent)."""

    key: int  # the gateway's own number for it, answered in Encoded
    dtype: str
    shape: list[int]
    pixels: bytes


class Shutdown(msgspec.Struct, tag=True, array_like=True):
    pass


class Delivered(msgspec.Struct, tag=True, array_like=True):
    """The gateway handed this many Step frames' events to its streams (its connections wrote them): the core
    steps at most EngineConfig.max_steps_ahead ahead of that."""

    steps: int


Command = Add | Abort | Pause | Resume | SetPriority | Unpin | Embed | EncodeImages | Shutdown | Delivered


class Embedded(msgspec.Struct, array_like=True):
    """An Embed's answer: len(inputs) float32 vectors of `dim` values, one after another; or what went wrong."""

    key: int
    dim: int = 0
    data: bytes = b""
    error: str | None = None
    code: str | None = None  # EngineError.code when the request was at fault


class Encoded(msgspec.Struct, array_like=True):
    """An EncodeImages' answer: each image's feature rows ([rows, dim] of dtype, one after another); or why not."""

    key: int
    dtype: str = "float32"
    rows: list[int] = []  # feature rows per image
    dim: int = 0
    data: bytes = b""
    error: str | None = None
    code: str | None = None  # EngineError.code when the request was at fault

    def features(self) -> list[torch.Tensor]:
        """One [rows, dim] tensor per image (ValueError when the bytes do not fit)."""
        flat = tensor_from_bytes(self.data, self.dtype, (sum(self.rows), self.dim))
        return list(flat.split(self.rows))


class Refusal(msgspec.Struct, array_like=True):
    request_id: str
    code: str  # EngineError.code: invalid_request, overloaded
    message: str


class Ready(msgspec.Struct, tag=True, array_like=True):
    """The core loaded its model: what the gateway needs to admit and tokenize on its side."""

    max_model_len: int
    model_name: str | None
    load_times: dict[str, int]
    tokenizer: bytes | None  # the pickled TextTokenizer (the core's own, so both sides tokenize alike)
    stats: EngineStats
    dtype: str = "float32"  # the dtype "auto" resolved to in the core (the session snapshots' model identity)
    hidden_size: int | None = None  # width of the prompt embedding rows the model takes; None: none
    takes_images: bool = False  # a multimodal model (its chat template takes image parts)
    embedding_shape: tuple[int, int] | None = None  # (vector size, vocabulary size) for /v1/embeddings
    image_front: bytes | None = None  # the pickled llava.ImageFront: the gateway prepares images with it
    # where the weights are (models/loader.py resolve_model_path; None: synthetic): the gateway fingerprints
    # them for the sessions' model identity without importing the loader (and torch) itself
    model_path: str | None = None


class LoadFailed(msgspec.Struct, tag=True, array_like=True):
    error: str


class Step(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Everything the core has for the gateway after one turn of its loop."""

    events: list[TokenEvent]
    admitted: list[str] = []
    refused: list[Refusal] = []
    aborted: list[TokenEvent] = []  # the final event of each request an Abort ended (or a stand-in if none was open)
    started: float | None = None  # time.perf_counter() when the step began; None: no step ran
    seconds: float = 0.0  # how long the step took
    stats: EngineStats | None = None  # sent at most every stats_interval_s and whenever the core goes idle
    embedded: list[Embedded] = []
    encoded: list[Encoded] = []


ToGateway = Ready | LoadFailed | Step

_encoder = msgspec.msgpack.Encoder()
_commands = msgspec.msgpack.Decoder(list[Command])
_to_gateway = msgspec.msgpack.Decoder(ToGateway)


def frame(message: object) -> bytes:
    """One frame: length prefix and msgpack body, encoded straight into one buffer."""
    buf = bytearray(4)
    _encoder.encode_into(message, buf, 4)
    _LEN.pack_into(buf, 0, len(buf) - 4)
    return bytes(buf)


def decode_commands(body: bytes | memoryview) -> list[Command]:
    return _commands.decode(body)


def decode_to_gateway(body: bytes | memoryview) -> Ready | LoadFailed | Step:
    return _to_gateway.decode(body)


class FrameBuffer:
    """Bytes in, complete frame bodies out; a length over MAX_FRAME_BYTES raises ValueError."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > MAX_FRAME_BYTES:
                raise ValueError(f"frame of {n} bytes: corrupt engine channel")
            if len(buf) - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out
