"""The OpenAI Realtime API's events (GA shapes, as the `openai` Python SDK 3.57 types them in
`openai/types/realtime/`), the subset Seedance serves: client events as msgspec tagged unions keyed by "type",
server events encoded from plain dicts by `encode_event`. docs/realtime.md lists what is supported and what is
refused with which error.

Unknown fields are ignored on decode, as the SDK's own models do, so a client that sends a field Seedance does not
know (audio settings, tracing) is not refused for it; what it would change is refused where it matters (audio
output, tools) by the connection (protocol/realtime_connection.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

MAX_ID_LENGTH = 64
ItemId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
OutputLimit = Annotated[int, msgspec.Meta(ge=1)] | Literal["inf"]

# error.type values the Realtime API uses
INVALID_REQUEST_ERROR = "invalid_request_error"
SERVER_ERROR = "server_error"

# error.code values Seedance sends (docs/realtime.md)
INVALID_JSON = "invalid_json"
INVALID_EVENT = "invalid_event"
UNKNOWN_EVENT = "unknown_event_type"
UNSUPPORTED = "unsupported"
UNSUPPORTED_CONTENT = "unsupported_content_type"
ITEM_NOT_FOUND = "item_not_found"
DUPLICATE_ITEM = "duplicate_item_id"
ITEM_IN_PROGRESS = "item_in_progress"
ITEM_NOT_OPEN = "item_not_open"
ITEM_TOO_LARGE = "item_too_large"
TOO_MANY_ITEMS = "too_many_items"
ACTIVE_RESPONSE = "conversation_already_has_active_response"
NO_ACTIVE_RESPONSE = "response_cancel_not_active"
RESPONSE_FAILED = "response_failed"
INTERNAL = "internal"
EVENT_TOO_LARGE = "event_too_large"
RATE_LIMITED = "rate_limited"
SLOW_CONSUMER = "slow_consumer"  # then close 4001: above the high water mark too long
HEARTBEAT_TIMEOUT = "heartbeat_timeout"  # then close 4000: pings went unanswered

# Client event types the API defines that Seedance knows but does not serve (no audio, no WebRTC/SIP).
REFUSED_EVENT_TYPES = frozenset({
    "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "output_audio_buffer.clear",
})


class ContentPart(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """One part of a message's content: input_text / output_text, input_image (a model that takes images);
    audio refused."""

    type: str
    text: str | None = None
    image_url: str | None = None
    audio: str | None = None
    transcript: str | None = None
    detail: str | None = None


class Item(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """A conversation item as a client creates it (RealtimeConversationItem*Message)."""

    type: str = "message"
    id: ItemId | None = None
    role: str | None = None
    content: list[ContentPart] = msgspec.field(default_factory=list)
    status: str | None = None


class SessionConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """session.update's session (RealtimeSessionCreateRequest); `temperature` is a Seedance extension (the GA
    API dropped it from the session; the beta API had it)."""

    type: str | None = None
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[str] | None = None
    max_output_tokens: OutputLimit | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    audio: Any = None


class ResponseParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """response.create's response (RealtimeResponseCreateParams): per-response overrides."""

    instructions: str | None = None
    output_modalities: list[str] | None = None
    max_output_tokens: OutputLimit | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    conversation: str | None = None  # "auto" (default) or "none": an out-of-band response
    input: list[Item] | None = None
    metadata: dict[str, str] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    audio: Any = None


class _ClientEvent(msgspec.Struct, tag_field="type", kw_only=True, forbid_unknown_fields=False):
    event_id: str | None = None


class SessionUpdate(_ClientEvent, tag="session.update"):
    session: SessionConfig


class ItemCreate(_ClientEvent, tag="conversation.item.create"):
    item: Item
    previous_item_id: str | None = None


class ItemDelete(_ClientEvent, tag="conversation.item.delete"):
    item_id: str


class ItemTruncate(_ClientEvent, tag="conversation.item.truncate"):
    item_id: str
    content_index: Annotated[int, msgspec.Meta(ge=0)]
    audio_end_ms: Annotated[int, msgspec.Meta(ge=0)]


class ItemRetrieve(_ClientEvent, tag="conversation.item.retrieve"):
    item_id: str


class ItemAppend(_ClientEvent, tag="conversation.item.append"):
    """Seedance extension: more text for a user item created with status "in_progress" (a message still being
    typed or transcribed); `done` completes it. The server prefills each piece as it arrives."""

    item_id: str
    text: str = ""
    done: bool = False


class ResponseCreate(_ClientEvent, tag="response.create"):
    response: ResponseParams | None = None


class ResponseCancel(_ClientEvent, tag="response.cancel"):
    response_id: str | None = None


ClientEvent = (SessionUpdate | ItemCreate | ItemAppend | ItemDelete | ItemTruncate | ItemRetrieve | ResponseCreate |
               ResponseCancel)
_decoder = msgspec.json.Decoder(ClientEvent)
_CLIENT_TYPES = frozenset(cls.__struct_config__.tag for cls in ClientEvent.__args__)


class EventError(Exception):
    """A client event that cannot be served: becomes one `error` event naming the offending event_id."""

    def __init__(self, code: str, message: str, *, event_id: str | None = None, param: str | None = None,
                 type: str = INVALID_REQUEST_ERROR) -> None:
        super().__init__(message)
        self.code, self.message, self.event_id, self.param, self.type = code, message, event_id, param, type


def decode_client_event(text: str | bytes) -> ClientEvent:
    """One client event, or EventError saying why not (with the event's event_id when it had a readable one)."""
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError:
        pass
    try:
        raw = msgspec.json.decode(text)
    except msgspec.DecodeError:
        raise EventError(INVALID_JSON, "the event is not valid JSON") from None
    if not isinstance(raw, dict):
        raise EventError(INVALID_EVENT, "an event is a JSON object")
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise EventError(INVALID_EVENT, "the event has no string 'type'", event_id=event_id, param="type")
    if kind in REFUSED_EVENT_TYPES:
        raise EventError(UNSUPPORTED, f"{kind!r} is not supported: this server serves text only (no audio input "
                                      "or output)", event_id=event_id, param="type")
    if kind not in _CLIENT_TYPES:
        raise EventError(UNKNOWN_EVENT, f"unknown event type {kind!r}", event_id=event_id, param="type")
    try:
        _decoder.decode(msgspec.json.encode({**raw, "event_id": event_id}))
    except msgspec.ValidationError as err:
        raise EventError(INVALID_EVENT, f"invalid {kind!r} event: {err}", event_id=event_id) from None
    raise EventError(INVALID_EVENT, f"invalid {kind!r} event", event_id=event_id)  # pragma: no cover


def encode_event(event: dict[str, Any]) -> bytes:
    """A server event (a dict with its "type" and "event_id") as the JSON text of one WebSocket message."""
    return msgspec.json.encode(event)
