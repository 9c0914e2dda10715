"""The messages between the gateway and the engine-core process, msgpack-encoded with msgspec, and their framing.

Gateway -> core: one frame per event-loop turn carrying every command queued in it (add, abort, pause, resume,
set priority, unpin, shutdown). Core -> gateway: one `Step` frame per engine step carrying all its requests'
token events, the admissions decided since the last frame and the abort results, so the gateway's cost per step
is one read and one decode whatever the batch size (vLLM v1's EngineCore output batches, the same shape).

A frame is a 4-byte little-endian length and the msgpack body. Sans-I/O: `FrameBuffer` cuts frames out of
bytes as they arrive; the two sides own their sockets.
"""

from __future__ import annotations

import struct

import msgspec

from seedance.engine.events import TokenEvent
from seedance.engine.llm_engine import EngineStats
from seedance.engine.sampling_params import SamplingParams

_LEN = struct.Struct("<I")
MAX_FRAME_BYTES = 1 << 30  # a longer length prefix is a corrupt stream, not a message


class Add(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    token_ids: list[int]
    params: SamplingParams
    priority: int = 0
    arrival: float = 0.0  # time.monotonic() at submit (one clock for every process on the host)
    pin_key: str | None = None


class Abort(msgspec.Struct, tag=True, array_like=True):
    request_id: str


class Pause(msgspec.Struct, tag=True, array_like=True):
    request_id: str


class Resume(msgspec.Struct, tag=True, array_like=True):
    request_id: str


class SetPriority(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    priority: int


class Unpin(msgspec.Struct, tag=True, array_like=True):
    key: str


class Shutdown(msgspec.Struct, tag=True, array_like=True):
    pass


Command = Add | Abort | Pause | Resume | SetPriority | Unpin | Shutdown


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
