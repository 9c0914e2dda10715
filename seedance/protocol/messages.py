"""JSON messages of the WebSocket protocol (docs/protocol.md), as msgspec tagged unions keyed by "type".

Unknown fields are ignored on decode so older peers keep working when newer ones add optional fields.
Valid input takes the fast path (one typed msgspec decode); only a failure pays for a second, untyped parse
that works out which error code applies and which request the error belongs to.
"""

from __future__ import annotations

import binascii
import re
import struct
import sys
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import msgspec

from seedance.protocol.errors import (
    INVALID_JSON,
    INVALID_MESSAGE,
    MESSAGE_TOO_LARGE,
    UNKNOWN_TYPE,
    UNSUPPORTED,
    ProtocolError,
)

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
UINT32_MAX: Final = 2**32 - 1
MAX_ID_LENGTH: Final = 128

RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
TokenId = Annotated[int, msgspec.Meta(ge=0, le=UINT32_MAX)]
Int32 = Annotated[int, msgspec.Meta(ge=INT32_MIN, le=INT32_MAX)]
Count = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
PromptFormat = Literal["tokens_u32le", "embedding_f32le"]
FinishReason = Literal["stop", "length", "cancelled", "error"]


# ---------------------------------------------------------------------------------------------- client → server


class _ClientBase(msgspec.Struct, tag_field="type", kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    pass  # omit_defaults: a client (seedance.client) sends only what it set


class ChatMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    role: str
    content: str


class Generate(_ClientBase, tag="generate", kw_only=True):
    """Start a request. Exactly one of prompt / messages / prompt_b64 carries the input."""

    id: RequestId
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)] | None = None
    # Standard base64 (RFC 4648 §4, padded) of a binary prompt laid out as prompt_format says.
    prompt_b64: str | None = None
    prompt_format: PromptFormat = "tokens_u32le"
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)] = 64
    temperature: Annotated[float, msgspec.Meta(ge=0.0)] = 1.0
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 1.0
    top_k: Count = 0
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool = False
    logprobs: Count | None = None
    priority: Int32 = 0
    binary: bool = False
    credit: Count | None = None
    session: str | None = None  # reserved for resumable sessions; ignored today

    def __post_init__(self) -> None:
        # Raised as ValueError so msgspec reports it as a ValidationError on decode, like any other field rule.
        given = [name for name in ("prompt", "messages", "prompt_b64") if getattr(self, name) is not None]
        if len(given) != 1:
            got = "none" if not given else " and ".join(given)
            raise ValueError(f"exactly one of prompt, messages, prompt_b64 is required, got {got}")
        if self.prompt_b64 is not None:
            try:
                raw = _b64decode(self.prompt_b64)
            except ValueError as exc:
                raise ValueError(f"prompt_b64: {exc}") from None
            if len(raw) % 4:
                raise ValueError(
                    f"prompt_b64: decodes to {len(raw)} bytes, not a multiple of 4 "
                    f"({self.prompt_format} has 4-byte items)"
                )

    @property
    def stop_strings(self) -> list[str]:
        """`stop` normalised to a list, since the wire accepts a bare string too."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class Cancel(_ClientBase, tag="cancel", kw_only=True):
    id: RequestId


class Credit(_ClientBase, tag="credit", kw_only=True):
    id: RequestId
    n: Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]


class Priority(_ClientBase, tag="priority", kw_only=True):
    id: RequestId
    priority: Int32


class Ping(_ClientBase, tag="ping", kw_only=True):
    ts: float | None = None


class Reauth(_ClientBase, tag="reauth", kw_only=True):
    """A fresh bearer token for this connection, sent before the current one expires (docs/security.md)."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]


class Resume(_ClientBase, tag="resume"):
    """Re-attach to a session's request after a dropped connection: the server replays every message
    after last_seq (-1: from the start), then continues live."""

    session: RequestId
    id: RequestId
    last_seq: Annotated[int, msgspec.Meta(ge=-1, le=INT32_MAX)] = -1


ClientMessage = Generate | Cancel | Credit | Priority | Ping | Resume | Reauth

# ---------------------------------------------------------------------------------------------- server → client


class _ServerBase(msgspec.Struct, tag_field="type", kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    pass


class TokenLogprob(msgspec.Struct, kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    token_id: int
    logprob: float
    top: list[tuple[int, float]] | None = None  # [[token_id, logprob], ...], best first


class Usage(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class Chunk(_ServerBase, tag="chunk", kw_only=True):
    id: str
    seq: int  # per-request chunk counter from 0, not a token index: one chunk may carry several tokens
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None


class Done(_ServerBase, tag="done", kw_only=True):
    id: str
    finish_reason: FinishReason
    usage: Usage
    stop_reason: str | int | None = None
    # Session turns only: share of this turn's prompt whose KV was reused (usage.cached_tokens / prompt_tokens).
    kv_reuse: float | None = None


class Error(_ServerBase, tag="error", kw_only=True, omit_defaults=False):
    # omit_defaults off: a client can rely on "id" being present (null for connection-level errors).
    id: str | None = None
    code: str
    message: str


class Pong(_ServerBase, tag="pong", kw_only=True, omit_defaults=False):
    ts: float | None = None


class Authenticated(_ServerBase, tag="authenticated", kw_only=True, omit_defaults=False):
    """The answer to a successful `reauth`: the connection now runs on the new token."""

    expires_at: float | None = None  # unix time at which the connection is closed with 4401 unless renewed
    scopes: list[str] = msgspec.field(default_factory=list)


class SnapshotAck(_ServerBase, tag="snapshot"):
    """The session's state after a turn is durable in the session store (it survives a server crash)."""

    id: str  # the request that completed the turn
    session: str
    turn: int
    kv_cache_hash: str


ServerMessage = Chunk | Done | Error | Pong | SnapshotAck | Authenticated

CLIENT_MESSAGE_TYPES: Final[dict[str, type[msgspec.Struct]]] = {
    "generate": Generate,
    "cancel": Cancel,
    "credit": Credit,
    "resume": Resume,
    "priority": Priority,
    "ping": Ping,
    "reauth": Reauth,
}
SERVER_MESSAGE_TYPES: Final[dict[str, type[msgspec.Struct]]] = {
    "chunk": Chunk,
    "done": Done,
    "snapshot": SnapshotAck,
    "error": Error,
    "pong": Pong,
    "authenticated": Authenticated,
}


class _Envelope(msgspec.Struct, forbid_unknown_fields=False):
    type: Any = msgspec.UNSET
    id: Any = msgspec.UNSET


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_client_decoder = msgspec.json.Decoder(ClientMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_server_batch_decoder = msgspec.json.Decoder(ServerMessage | list[ServerMessage])
_encoder = msgspec.json.Encoder()
_NATIVE_U32LE = sys.byteorder == "little" and struct.calcsize("I") == 4

# ---------------------------------------------------------------------------------------------- API


def decode_client_message(data: str | bytes | bytearray | memoryview, *, max_size: int) -> ClientMessage:
    """Parse one client message; any violation becomes a ProtocolError with the code the spec assigns."""
    raw = _utf8_within(data, max_size)
    try:
        return _client_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _diagnose(raw, exc, CLIENT_MESSAGE_TYPES) from exc


def decode_server_message(data: str | bytes | bytearray | memoryview, *, max_size: int | None = None) -> ServerMessage:
    """The client side's counterpart, with the same error codes."""
    raw = _utf8_within(data, max_size)
    try:
        return _server_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _diagnose(raw, exc, SERVER_MESSAGE_TYPES) from exc


def decode_server_messages(
    data: str | bytes | bytearray | memoryview, *, max_size: int | None = None
) -> list[ServerMessage]:
    """A server text frame holds one message or, when the server batched an engine step, an array of them."""
    raw = _utf8_within(data, max_size)
    try:
        decoded = _server_batch_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _diagnose(raw, exc, SERVER_MESSAGE_TYPES, batch_of=ServerMessage) from exc
    return decoded if isinstance(decoded, list) else [decoded]


def encode_server_message(msg: ServerMessage) -> bytes:
    """Compact JSON; None-valued optional fields of chunk/done are left out to keep per-token messages small."""
    return _encoder.encode(msg)


def encode_server_messages(msgs: Sequence[ServerMessage]) -> bytes:
    """One text frame for several messages (e.g. one engine step's chunks and dones): a lone message is sent
    as itself, several as a JSON array."""
    if len(msgs) == 1:
        return _encoder.encode(msgs[0])
    return _encoder.encode(list(msgs))


def encode_client_message(msg: ClientMessage) -> bytes:
    return _encoder.encode(msg)


def decode_binary_prompt(msg: Generate) -> list[int]:
    """Token ids of a binary prompt: the compact way to send a pre-tokenized prompt.

    Embedding input is refused with `unsupported`: the built-in model is text-only.
    """
    if msg.prompt_b64 is None:
        raise ProtocolError(INVALID_MESSAGE, "generate has no prompt_b64", request_id=msg.id, message_type="generate")
    if msg.prompt_format == "embedding_f32le":
        raise ProtocolError(
            UNSUPPORTED,
            "prompt_format embedding_f32le: the model is text-only and cannot take embedding input; "
            "send text, messages, or token ids as tokens_u32le",
            request_id=msg.id,
            message_type="generate",
        )
    try:
        raw = _b64decode(msg.prompt_b64)
    except ValueError as exc:
        raise ProtocolError(
            INVALID_MESSAGE, f"generate.prompt_b64: {exc}", request_id=msg.id, message_type="generate"
        ) from exc
    if len(raw) % 4:
        raise ProtocolError(
            INVALID_MESSAGE,
            f"generate.prompt_b64: {len(raw)} bytes is not a whole number of u32 token ids",
            request_id=msg.id,
            message_type="generate",
        )
    if _NATIVE_U32LE:
        return memoryview(raw).cast("I").tolist()
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


# ---------------------------------------------------------------------------------------------- internals


def _b64decode(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValueError(f"not valid base64 ({str(exc).lower()})") from None


def _utf8_within(
    data: str | bytes | bytearray | memoryview, max_size: int | None
) -> str | bytes | bytearray | memoryview:
    """UTF-8 bytes of the message, refused before parsing when larger than max_size (counted in UTF-8 bytes)."""
    if isinstance(data, str):
        if max_size is not None and len(data) > max_size:  # a character is at least one byte: too big already
            raise ProtocolError(MESSAGE_TOO_LARGE, f"message is over {max_size} bytes (the limit)")
        try:
            # ASCII str is handed to msgspec as is (it reads the UTF-8 directly); others are measured by encoding.
            raw: str | bytes | bytearray | memoryview = data if data.isascii() else data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProtocolError(INVALID_JSON, f"text is not encodable as UTF-8: {exc.reason}") from None
        size = len(raw)
    else:
        raw = data
        size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if max_size is not None and size > max_size:
        raise ProtocolError(MESSAGE_TOO_LARGE, f"message is {size} bytes, over the limit of {max_size}")
    if not isinstance(raw, str):
        # msgspec skips ignored fields without checking their UTF-8; check here so no invalid text gets in.
        # ASCII (the common case) is a fast C scan; only other payloads pay for a full decode.
        as_bytes = raw if isinstance(raw, bytes | bytearray) else bytes(raw)
        if not as_bytes.isascii():
            try:
                as_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError(
                    INVALID_JSON, f"message is not valid UTF-8: {exc.reason} at byte {exc.start}"
                ) from None
    return raw


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "array"
    return "object"


_AT_PATH = re.compile(r"(?s)(.*?) - at `\$(.*)`")
_OWN_FIELD = re.compile(r"([a-z_][a-z0-9_]*): ")
_MISSING = re.compile(r"Object missing required field `(.*)`")


def _field_error(type_name: str, text: str) -> str:
    """Rewrite msgspec's "Expected `int`, got `str` - at `$.max_tokens`" as "generate.max_tokens: expected int,
    got str", so errors name the message type and read the same whichever field failed."""
    m = _AT_PATH.fullmatch(text)
    detail, path = (m.group(1), type_name + m.group(2)) if m else (text, type_name)
    own = None if m else _OWN_FIELD.match(detail)  # our __post_init__ names its field as "field: ..."
    if own:
        return f"{type_name}.{own.group(1)}: {detail[own.end() :]}"
    missing = _MISSING.fullmatch(detail)
    if missing:
        return f"{path}.{missing.group(1)}: required field missing"
    detail = detail.replace("`", "")
    return f"{path}: {detail[:1].lower()}{detail[1:]}"


def _diagnose(
    raw: str | bytes | bytearray | memoryview,
    exc: Exception,
    types: dict[str, type[msgspec.Struct]],
    *,
    batch_of: Any = None,
) -> ProtocolError:
    """Classify a failed typed decode by parsing without a schema. With batch_of, a JSON array of messages
    is allowed and the first bad element is reported."""
    try:
        obj = msgspec.json.decode(raw)
    except UnicodeDecodeError as e:
        return ProtocolError(INVALID_JSON, f"message is not valid UTF-8: {e.reason} at byte {e.start}")
    except RecursionError:
        return ProtocolError(INVALID_JSON, "JSON is nested too deeply")
    except msgspec.ValidationError as e:  # syntactically JSON, but e.g. a number beyond float range
        try:  # read just "type" and "id", so a bad number in a known field is still that field's error
            envelope = _envelope_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            m = _AT_PATH.fullmatch(str(e))
            detail = (m.group(1) if m else str(e)).lower()
            return ProtocolError(INVALID_JSON, f"unrepresentable JSON value: {detail}")
        obj = {k: v for k, v in msgspec.structs.asdict(envelope).items() if v is not msgspec.UNSET}
    except msgspec.DecodeError as e:
        detail = str(e).removeprefix("JSON is malformed: ")
        return ProtocolError(INVALID_JSON, f"invalid JSON: {detail}")
    if batch_of is not None and isinstance(obj, list):
        for i, item in enumerate(obj):
            try:
                msgspec.convert(item, batch_of)
            except msgspec.ValidationError as e:
                err = _classify(item, e, types)
                return ProtocolError(
                    err.code, f"batch[{i}]: {err.message}", request_id=err.request_id, message_type=err.message_type
                )
        return ProtocolError(INVALID_MESSAGE, f"invalid batch: {exc}")
    return _classify(obj, exc, types)


def _classify(obj: Any, exc: Exception, types: dict[str, type[msgspec.Struct]]) -> ProtocolError:
    if not isinstance(obj, dict):
        return ProtocolError(INVALID_JSON, f"expected a JSON object, got {_json_type(obj)}")
    rid = obj.get("id")
    request_id = rid if isinstance(rid, str) and 1 <= len(rid) <= MAX_ID_LENGTH else None
    if "type" not in obj:
        return ProtocolError(UNKNOWN_TYPE, 'missing "type" field', request_id=request_id)
    mtype = obj["type"]
    if not isinstance(mtype, str):
        return ProtocolError(UNKNOWN_TYPE, f'"type" must be a string, got {_json_type(mtype)}', request_id=request_id)
    if mtype not in types:
        known = ", ".join(types)
        return ProtocolError(
            UNKNOWN_TYPE, f"unknown message type {mtype!r} (expected one of {known})", request_id=request_id
        )
    if isinstance(exc, msgspec.ValidationError):
        message = _field_error(mtype, str(exc))
    else:  # the typed decoder failed for a reason the untyped one did not hit: let convert name the field
        try:
            msgspec.convert(obj, types[mtype])
            message = f"{mtype}: {exc}"
        except msgspec.ValidationError as e:
            message = _field_error(mtype, str(e))
    return ProtocolError(INVALID_MESSAGE, message, request_id=request_id, message_type=mtype)
