"""One Realtime API connection's rules, sans I/O: text events in (`receive_text`), encoded server events out
(`data_to_send`), plain-data commands out (`commands`: start a response, cancel one), and what the engine did
in (`response_text`, `response_ended`).

It owns the conversation (items in order, which of them the session's KV already holds) and the response
lifecycle with the SDK's event order: response.created, response.output_item.added, conversation.item.added,
response.content_part.added, response.output_text.delta..., response.output_text.done,
response.content_part.done, response.output_item.done, conversation.item.done, response.done.

The conversation is fed to the engine incrementally: a response's prompt is the session's history (tokens the
model already saw, KV pinned) plus the items added since, so each response computes only what is new. An edit
of items the history holds (delete, truncate, an insert before them) makes the next response re-render the
whole conversation (`restart`).

Full duplex: a response.create while one is streaming is a barge-in: the streaming one is cancelled at the next
engine step, its item keeps what was sent, and the new one starts when the old one has ended.

Flow control is /v1/stream's policy (protocol/flow.py), fed here so it is tested without a socket: bytes written
(`wrote`, which may ask for a probe ping), pongs (`receive_pong`), the clock and the socket's buffer (`tick`). Above
the high water mark of unread output the active response is paused in the engine (and a response that starts
meanwhile starts paused), at low water it resumes; above high water for too long, or with pings unanswered, the
client gets an `error` event (`slow_consumer` / `heartbeat_timeout`) and the socket is closed (4001 / 4000).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

from seedance.protocol.data_url import image_base64
from seedance.protocol.errors import CloseCode
from seedance.protocol.flow import PAUSE, RESUME, Backpressure, CloseConnection, FlowLimits, SendPing
from seedance.protocol.messages import Usage  # one response's token counts, as /v1/stream's done carries them
from seedance.protocol.realtime_events import (
    ACTIVE_RESPONSE,
    DUPLICATE_ITEM,
    EVENT_TOO_LARGE,
    HEARTBEAT_TIMEOUT,
    INTERNAL,
    INVALID_EVENT,
    ITEM_IN_PROGRESS,
    ITEM_NOT_FOUND,
    ITEM_NOT_OPEN,
    ITEM_TOO_LARGE,
    NO_ACTIVE_RESPONSE,
    SERVER_ERROR,
    SLOW_CONSUMER,
    TOO_MANY_ITEMS,
    UNSUPPORTED,
    UNSUPPORTED_CONTENT,
    ClientEvent,
    EventError,
    Item,
    ItemAppend,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    ResponseCancel,
    ResponseCreate,
    ResponseParams,
    SessionConfig,
    SessionUpdate,
    decode_client_event,
    encode_event,
)

ROLES = frozenset({"user", "system", "assistant"})
INPUT_TEXT_TYPES = {"user": "input_text", "system": "input_text", "assistant": "output_text"}


@dataclass(slots=True)
class StartResponse:
    """Run a response: `messages` are the chat messages to append to the session's history (all of the
    conversation when `restart`, or the whole context of an out-of-band response, `in_conversation` False)."""

    response_id: str
    messages: list[dict[str, Any]]  # content: a string, or text / image_url parts ({"type", "url"}) with images
    restart: bool
    in_conversation: bool
    max_output_tokens: int | None  # None: "inf" (the server's limit)
    temperature: float


@dataclass(slots=True)
class CancelResponse:
    response_id: str


@dataclass(slots=True)
class InputChanged:
    """An item still arriving grew, and no response runs: the transport may prefill `pending_messages()`."""


@dataclass(slots=True)
class PauseResponse:
    """The client reads too slowly (above high water): pause the response in the engine; it keeps its KV."""

    response_id: str


@dataclass(slots=True)
class ResumeResponse:
    """The client caught up (low water): resume the response in the engine."""

    response_id: str


Command = (StartResponse | CancelResponse | InputChanged | PauseResponse | ResumeResponse | SendPing
           | CloseConnection)
_CLOSE_ERRORS = {CloseCode.SLOW_CONSUMER: SLOW_CONSUMER, CloseCode.HEARTBEAT_TIMEOUT: HEARTBEAT_TIMEOUT}


@dataclass(eq=False)
class _Item:
    id: str
    role: str
    content_type: str
    text: str
    status: str = "completed"
    committed: bool = False  # the session's history (and pinned KV) holds it
    # A user item's images, in order: (offset, data URL, detail), the image standing before text[offset:]
    # (so appended text grows the text after the last image).
    images: list[tuple[int, str, str | None]] = field(default_factory=list)

    def _pieces(self) -> list[tuple[str, str | None]]:
        """The content in order: ("text", text) and ("image", data URL); the detail is only echoed."""
        pieces: list[tuple[str, str | None]] = []
        start = 0
        for offset, url, _ in self.images:
            if offset > start:
                pieces.append(("text", self.text[start:offset]))
            pieces.append(("image", url))
            start = offset
        if start < len(self.text) or not pieces:
            pieces.append(("text", self.text[start:]))
        return pieces

    def wire(self, *, with_text: bool = True) -> dict[str, Any]:
        if not self.images:
            content = [{"type": self.content_type, "text": self.text}]
        else:
            details = iter(detail for _, _, detail in self.images)
            content = [{"type": self.content_type, "text": value} if kind == "text"
                       else {"type": "input_image", "image_url": value, "detail": next(details) or "auto"}
                       for kind, value in self._pieces()]
        return {"id": self.id, "object": "realtime.item", "type": "message", "role": self.role,
                "status": self.status, "content": content if with_text else []}

    def message(self) -> dict[str, Any]:
        """As a chat message: a string, or (with images) text and image_url parts for the transport to decode."""
        if not self.images:
            return {"role": self.role, "content": self.text}
        return {"role": self.role, "content": [{"type": "text", "text": value} if kind == "text"
                                               else {"type": "image_url", "url": value}
                                               for kind, value in self._pieces() if value]}


@dataclass(eq=False)
class _Response:
    id: str
    item: _Item
    params: StartResponse
    included: list[_Item]
    metadata: dict[str, str] | None
    sent: list[str] = field(default_factory=list)
    cancelling: bool = False
    conversation_id: str | None = None
    session_instructions: str | None = None  # the session's instructions as this response put them in

    def wire(self, status: str, status_details: dict | None = None, usage: dict | None = None,
             output: list[dict] | None = None) -> dict[str, Any]:
        limit = self.params.max_output_tokens
        return {"id": self.id, "object": "realtime.response", "status": status, "status_details": status_details,
                "output": output or [], "conversation_id": self.conversation_id,
                "output_modalities": ["text"], "max_output_tokens": "inf" if limit is None else limit,
                "metadata": self.metadata, "usage": usage}


@dataclass(slots=True)
class Limits:
    max_items: int = 1000  # conversation items per connection
    max_item_chars: int = 1 << 20  # text of one item (conversation.item.append grows it)
    max_output_tokens: int | None = None  # a response's cap ("inf" means this); None: the engine's
    takes_images: bool = False  # the model takes input_image parts (else they are refused)


class RealtimeConnection:
    def __init__(self, model: str, *, limits: Limits | None = None, id_prefix: str | None = None,
                 flow: FlowLimits | None = None, now: float = 0.0) -> None:
        self.model = model
        self.limits = limits or Limits()
        self.backpressure = Backpressure(flow or FlowLimits(), now)
        self._prefix = id_prefix or os.urandom(6).hex()
        self._counter = itertools.count(1)
        self.session: dict[str, Any] = {
            "id": f"sess_{self._prefix}", "object": "realtime.session", "type": "realtime", "model": model,
            "output_modalities": ["text"], "instructions": "", "max_output_tokens": "inf", "tools": [],
            "tool_choice": "auto", "temperature": 0.8, "expires_at": 0,
        }
        self.items: list[_Item] = []
        self.restart = False  # the history was edited: the next response re-renders the conversation
        self._instructions_in_history = ""  # the session instructions the history last took in
        self.active: _Response | None = None
        self.pending: tuple[ResponseCreate, str | None] | None = None  # a barge-in waiting for active to end
        self._out: list[bytes] = []
        self._commands: list[Command] = []
        self._emit("session.created", session=dict(self.session))

    # ---- I/O surface ------------------------------------------------------------------------------
    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def commands(self) -> list[Command]:
        out, self._commands = self._commands, []
        return out

    def receive_text(self, text: str | bytes) -> None:
        """One client event: its server events and commands are queued; a bad one queues one `error`."""
        event_id = None
        try:
            event = decode_client_event(text)
            event_id = event.event_id
            self._handle(event)
        except EventError as err:
            self.error(err.code, err.message, event_id=err.event_id or event_id, param=err.param, type=err.type)

    def too_large(self, size: int, limit: int) -> None:
        self.error(EVENT_TOO_LARGE, f"the event has {size} bytes; the limit is {limit}")

    def error(self, code: str, message: str, *, event_id: str | None = None, param: str | None = None,
              type: str = "invalid_request_error") -> None:
        self._emit("error", error={"type": type, "code": code, "message": message, "param": param,
                                   "event_id": event_id})

    # ---- flow control (protocol/flow.py: /v1/stream's policy) ---------------------------------------
    def tick(self, now: float, buffered_bytes: int) -> float | None:
        """Before writing: the heartbeat if due, and the water marks on the unread output (`buffered_bytes`:
        what the transport itself still holds). Returns None to write now, else how soon to tick again
        (math.inf: never, the connection is closing)."""
        hold, actions = self.backpressure.tick(now, buffered_bytes)
        for action in actions:
            if action is PAUSE or action is RESUME:
                if self.active is not None:
                    kind = PauseResponse if action is PAUSE else ResumeResponse
                    self._commands.append(kind(self.active.id))
                continue
            if isinstance(action, CloseConnection):
                self.error(_CLOSE_ERRORS.get(action.code, INTERNAL), action.reason, type=SERVER_ERROR)
            self._commands.append(action)
        return hold

    def wrote(self, nbytes: int) -> bytes | None:
        """A message of nbytes went to the socket; returns a probe to ping with now, if one is due."""
        return self.backpressure.wrote(nbytes)

    def receive_pong(self, payload: bytes) -> bool:
        """A pong arrived (the client is alive). True if it acknowledged output: the writer should tick again."""
        return self.backpressure.pong(payload)

    # ---- from the engine ---------------------------------------------------------------------------
    def rate_limits(self, limits: list[dict[str, Any]]) -> None:
        """rate_limits.updated: the transport's view of the connection's limits (after response.created)."""
        self._emit("rate_limits.updated", rate_limits=limits)

    def response_text(self, response_id: str, text: str) -> None:
        response = self.active
        if response is None or response.id != response_id or not text:
            return
        response.sent.append(text)
        self._emit("response.output_text.delta", response_id=response.id, item_id=response.item.id,
                   output_index=0, content_index=0, delta=text)

    def response_ended(self, response_id: str, finish: str, usage: Usage | None = None,
                       error: str | None = None) -> None:
        """The engine ended the response: finish is stop | length | cancelled | error. The item keeps what was
        sent; a completed, incomplete or cancelled response's items join the history (a failed one's do not)."""
        response = self.active
        if response is None or response.id != response_id:
            return
        self.active = None
        item = response.item
        item.text = "".join(response.sent)
        status, details = {
            "stop": ("completed", None),
            "length": ("incomplete", {"type": "incomplete", "reason": "max_output_tokens"}),
            "cancelled": ("cancelled", {"type": "cancelled", "reason": "client_cancelled"}),
        }.get(finish, ("failed", {"type": "failed", "error": {"type": SERVER_ERROR, "code": INTERNAL,
                                                               "message": error or "the response failed"}}))
        item.status = "completed" if status == "completed" else "incomplete"
        part = {"type": "text", "text": item.text}
        common = {"response_id": response.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        self._emit("response.output_text.done", **common, text=item.text)
        self._emit("response.content_part.done", **common, part=part)
        self._emit("response.output_item.done", response_id=response.id, output_index=0, item=item.wire())
        if response.params.in_conversation:
            if status == "failed":
                self._remove(item)
            else:
                for included in (*response.included, item):
                    included.committed = True
                if response.session_instructions is not None:
                    self._instructions_in_history = response.session_instructions
                if response.params.restart:
                    self.restart = False
                self._emit("conversation.item.done", item=item.wire(), previous_item_id=self._previous_id(item))
        self._emit("response.done", response=response.wire(status, details, _wire_usage(usage), [item.wire()]))
        if self.pending is None and self.pending_messages() is not None:
            self._input_changed()  # what arrived meanwhile can be prefilled now
        if self.pending is not None:
            event, pending_event_id = self.pending
            self.pending = None
            try:
                self._start_response(event)
            except EventError as err:
                self.error(err.code, err.message, event_id=err.event_id or pending_event_id, param=err.param)

    def response_failed_to_start(self, response_id: str, code: str, message: str) -> None:
        """The engine refused the response (too long a prompt, overloaded): it ends failed, with an error too."""
        self.error(code, message)
        self.response_ended(response_id, "error", error=message)

    # ---- client events -----------------------------------------------------------------------------
    def _handle(self, event: ClientEvent) -> None:
        if isinstance(event, SessionUpdate):
            self._session_update(event.session, event.event_id)
        elif isinstance(event, ItemCreate):
            self._item_create(event)
        elif isinstance(event, ItemAppend):
            self._item_append(event)
        elif isinstance(event, ItemDelete):
            self._item_delete(event)
        elif isinstance(event, ItemTruncate):
            self._item_truncate(event)
        elif isinstance(event, ItemRetrieve):
            item = self._find(event.item_id, event.event_id)
            self._emit("conversation.item.retrieved", item=item.wire())
        elif isinstance(event, ResponseCreate):
            self._response_create(event)
        elif isinstance(event, ResponseCancel):
            self._response_cancel(event)

    def _session_update(self, cfg: SessionConfig, event_id: str | None) -> None:
        _check_text_only(cfg.output_modalities, cfg.audio, event_id, "session")
        _check_no_tools(cfg.tools, event_id, "session")
        if cfg.type not in (None, "realtime"):
            raise EventError(UNSUPPORTED, f"session type {cfg.type!r} is not supported (only 'realtime')",
                             event_id=event_id, param="session.type")
        if cfg.instructions is not None:
            self.session["instructions"] = cfg.instructions
        if cfg.max_output_tokens is not None:
            self.session["max_output_tokens"] = cfg.max_output_tokens
        if cfg.temperature is not None:
            self.session["temperature"] = cfg.temperature
        self._emit("session.updated", session=dict(self.session))

    def _item_create(self, event: ItemCreate) -> None:
        item = _input_item(event.item, event.event_id, self.limits.takes_images)
        if event.item.status == "in_progress":
            if item.role != "user":
                raise EventError(INVALID_EVENT, "only a user item can be created in_progress (to append to)",
                                 event_id=event.event_id, param="item.status")
            item.status = "in_progress"
        if len(item.text) > self.limits.max_item_chars:
            raise EventError(ITEM_TOO_LARGE, f"an item holds at most {self.limits.max_item_chars} characters",
                             event_id=event.event_id, param="item.content")
        if len(self.items) >= self.limits.max_items:
            raise EventError(TOO_MANY_ITEMS, f"the conversation has {len(self.items)} items, the limit: delete "
                                             "some first", event_id=event.event_id)
        item.id = event.item.id or self._new_id("item")
        if any(i.id == item.id for i in self.items):
            raise EventError(DUPLICATE_ITEM, f"the conversation already has an item {item.id!r}",
                             event_id=event.event_id, param="item.id")
        if event.previous_item_id is None:
            index = len(self.items)
        elif event.previous_item_id == "root":
            index = 0
        else:
            index = self.items.index(self._find(event.previous_item_id, event.event_id, "previous_item_id")) + 1
        if any(i.committed or (self.active is not None and i is self.active.item) for i in self.items[index:]):
            self.restart = True  # inserted into what the history already holds
        self.items.insert(index, item)
        previous = self._previous_id(item)
        self._emit("conversation.item.added", item=item.wire(), previous_item_id=previous)
        if item.status == "in_progress":
            self._input_changed()
        else:
            self._emit("conversation.item.done", item=item.wire(), previous_item_id=previous)

    def _item_append(self, event: ItemAppend) -> None:
        item = self._find(event.item_id, event.event_id)
        if item.status != "in_progress" or item.role != "user":
            raise EventError(ITEM_NOT_OPEN, f"item {item.id!r} is complete: append only to a user item created "
                                            "with status 'in_progress'", event_id=event.event_id, param="item_id")
        if len(item.text) + len(event.text) > self.limits.max_item_chars:
            raise EventError(ITEM_TOO_LARGE, f"an item holds at most {self.limits.max_item_chars} characters",
                             event_id=event.event_id, param="text")
        item.text += event.text
        if event.done:
            self._close(item)
        else:
            self._input_changed()

    def _close(self, item: _Item) -> None:
        item.status = "completed"
        self._emit("conversation.item.done", item=item.wire(), previous_item_id=self._previous_id(item))

    def _input_changed(self) -> None:
        if self.active is None and not any(isinstance(c, InputChanged) for c in self._commands):
            self._commands.append(InputChanged())

    def pending_messages(self) -> list[dict[str, Any]] | None:
        """What the next response would append to the history (its open items' text so far included), or None
        when no item is still arriving (nothing worth prefilling early)."""
        if not any(i.status == "in_progress" and i.role == "user" for i in self.items):
            return None
        return self._context_messages(None, True, None)

    def _item_delete(self, event: ItemDelete) -> None:
        item = self._find(event.item_id, event.event_id)
        if self.active is not None and item is self.active.item:
            raise EventError(ITEM_IN_PROGRESS, f"item {item.id!r} is being generated: cancel the response first",
                             event_id=event.event_id, param="item_id")
        if item.committed or (self.active is not None and item in self.active.included):
            self.restart = True
        self._remove(item)
        self._emit("conversation.item.deleted", item_id=item.id)

    def _item_truncate(self, event: ItemTruncate) -> None:
        """Text items have no audio: truncating at audio_end_ms 0 drops the item's text from the context
        (what a client does for text it did not show); anything later is past the end of its (no) audio."""
        item = self._find(event.item_id, event.event_id)
        if item.role != "assistant":
            raise EventError(INVALID_EVENT, "only assistant message items can be truncated",
                             event_id=event.event_id, param="item_id")
        if self.active is not None and item is self.active.item:
            raise EventError(ITEM_IN_PROGRESS, f"item {item.id!r} is being generated: cancel the response first",
                             event_id=event.event_id, param="item_id")
        if event.content_index != 0:
            raise EventError(INVALID_EVENT, f"item {item.id!r} has no content part {event.content_index}",
                             event_id=event.event_id, param="content_index")
        if event.audio_end_ms > 0:
            raise EventError(INVALID_EVENT, f"audio_end_ms {event.audio_end_ms} is past the end of the item's "
                                            "audio (0 ms: a text item has no audio)",
                             event_id=event.event_id, param="audio_end_ms")
        if item.text:
            item.text = ""
            self.restart = self.restart or item.committed
        self._emit("conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=0)

    def _response_create(self, event: ResponseCreate) -> None:
        params = event.response or ResponseParams()
        _check_text_only(params.output_modalities, params.audio, event.event_id, "response")
        _check_no_tools(params.tools, event.event_id, "response")
        if params.conversation not in (None, "auto", "none"):
            raise EventError(UNSUPPORTED, "response.conversation is 'auto' or 'none' (one conversation per "
                                          "connection)", event_id=event.event_id, param="response.conversation")
        for item in params.input or []:  # checked now: a bad barge-in is refused at once, not when its turn comes
            _input_item(item, event.event_id, "response.input")
        if self.active is None:
            self._start_response(event)
            return
        if self.pending is not None:
            raise EventError(ACTIVE_RESPONSE, f"response {self.active.id!r} is being cancelled and another "
                                              "response is already waiting to start", event_id=event.event_id)
        self.pending = (event, event.event_id)  # barge-in: starts when the active one has ended
        self._cancel_active()

    def _response_cancel(self, event: ResponseCancel) -> None:
        if self.active is None or (event.response_id is not None and event.response_id != self.active.id):
            which = f" {event.response_id!r}" if event.response_id else ""
            raise EventError(NO_ACTIVE_RESPONSE, f"no active response{which} to cancel", event_id=event.event_id,
                             param="response_id" if event.response_id else None)
        self.pending = None
        self._cancel_active()

    def _cancel_active(self) -> None:
        assert self.active is not None
        if not self.active.cancelling:
            self.active.cancelling = True
            self._commands.append(CancelResponse(self.active.id))

    def _context_messages(self, instructions: str | None, in_conversation: bool,
                          inputs: list[_Item] | None) -> list[dict[str, Any]]:
        """The chat messages a response appends to the history: the items the history lacks (all of them after
        an edit), or an out-of-band response's whole context; the instructions go first in a fresh context."""
        context = self._included() if in_conversation else inputs if inputs is not None else list(self.items)
        messages = [i.message() for i in context if i.text or i.images]
        fresh = not in_conversation or self.restart or not any(i.committed for i in self.items)
        current = self.session["instructions"]
        if instructions is not None:
            system = instructions
        else:  # the session's instructions, where the history does not hold them yet
            system = current if fresh or current != self._instructions_in_history else ""
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return messages

    def _included(self) -> list[_Item]:
        return [i for i in self.items if self.restart or not i.committed]

    def _start_response(self, event: ResponseCreate) -> None:
        params = event.response or ResponseParams()
        in_conversation = params.conversation != "none"
        inputs = ([_input_item(i, event.event_id, self.limits.takes_images, "response.input") for i in params.input]
                  if params.input is not None else None)
        if in_conversation:
            for open_item in [i for i in self.items if i.status == "in_progress" and i.role == "user"]:
                self._close(open_item)  # a response answers what has arrived of it
        messages = self._context_messages(params.instructions, in_conversation, inputs)
        restart = in_conversation and self.restart
        included = self._included() if in_conversation else []
        limit = params.max_output_tokens if params.max_output_tokens is not None else self.session["max_output_tokens"]
        max_tokens = None if limit == "inf" else int(limit)
        if self.limits.max_output_tokens is not None:
            max_tokens = min(max_tokens or self.limits.max_output_tokens, self.limits.max_output_tokens)
        temperature = params.temperature if params.temperature is not None else self.session["temperature"]
        command = StartResponse(self._new_id("resp"), messages, restart, in_conversation, max_tokens, temperature)
        item = _Item(self._new_id("item"), "assistant", "output_text", "", status="in_progress")
        response = _Response(command.response_id, item, command, included, params.metadata,
                             conversation_id=f"conv_{self._prefix}" if in_conversation else None,
                             session_instructions=self.session["instructions"]
                             if in_conversation and params.instructions is None else None)
        self.active = response
        self._emit("response.created", response=response.wire("in_progress"))
        self._emit("response.output_item.added", response_id=response.id, output_index=0,
                   item=item.wire(with_text=False))
        if in_conversation:
            self.items.append(item)
            self._emit("conversation.item.added", item=item.wire(with_text=False),
                       previous_item_id=self._previous_id(item))
        self._emit("response.content_part.added", response_id=response.id, item_id=item.id, output_index=0,
                   content_index=0, part={"type": "text", "text": ""})
        self._commands.append(command)
        if self.backpressure.paused:
            self._commands.append(PauseResponse(response.id))  # the client is still behind: it starts paused

    # ---- helpers -----------------------------------------------------------------------------------
    def _emit(self, kind: str, **fields: Any) -> None:
        self._out.append(encode_event({"type": kind, "event_id": self._new_id("event"), **fields}))

    def _new_id(self, kind: str) -> str:
        return f"{kind}_{self._prefix}{next(self._counter):x}"

    def _find(self, item_id: str, event_id: str | None, param: str = "item_id") -> _Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise EventError(ITEM_NOT_FOUND, f"the conversation has no item {item_id!r}", event_id=event_id,
                         param=param)

    def _remove(self, item: _Item) -> None:
        if item in self.items:
            self.items.remove(item)

    def _previous_id(self, item: _Item) -> str | None:
        index = self.items.index(item) if item in self.items else 0
        return self.items[index - 1].id if index > 0 else None


def _input_item(item: Item, event_id: str | None, takes_images: bool, param: str = "item") -> _Item:
    """A client's message item as the conversation holds it: its text, and a user item's images (data: URLs,
    checked here, decoded by the engine when a response uses them) where the model takes images."""
    if item.type != "message":
        raise EventError(UNSUPPORTED, f"item type {item.type!r} is not supported (no tools): only 'message'",
                         event_id=event_id, param=f"{param}.type")
    if item.role not in ROLES:
        raise EventError(INVALID_EVENT, f"item role must be one of {sorted(ROLES)}", event_id=event_id,
                         param=f"{param}.role")
    expected = INPUT_TEXT_TYPES[item.role]
    texts: list[str] = []
    images: list[tuple[int, str, str | None]] = []
    for index, part in enumerate(item.content):
        if part.type == "input_image":
            where = f"{param}.content[{index}]"
            if item.role != "user":
                raise EventError(INVALID_EVENT, "only a user message has input_image parts", event_id=event_id,
                                 param=where)
            if not takes_images:
                raise EventError(UNSUPPORTED_CONTENT, "this model takes no images (serve a LLaVA-family model "
                                                      "for input_image)", event_id=event_id, param=where)
            if part.image_url is None or image_base64(part.image_url) is None:
                raise EventError(INVALID_EVENT, "input_image.image_url must be a data:image/...;base64,... URL: "
                                                "this server fetches no URLs", event_id=event_id,
                                 param=f"{where}.image_url")
            detail = part.detail if part.detail in ("auto", "low", "high") else "auto"  # echoed, not used
            images.append((sum(map(len, texts)), part.image_url, detail))
            continue
        if part.type in ("input_audio", "output_audio", "audio"):
            raise EventError(UNSUPPORTED_CONTENT, f"{part.type} is not supported: this server serves text only",
                             event_id=event_id, param=f"{param}.content[{index}]")
        if part.type not in (expected, "text") or part.text is None:
            raise EventError(INVALID_EVENT, f"a {item.role} message's content parts are {expected!r} with text",
                             event_id=event_id, param=f"{param}.content[{index}]")
        texts.append(part.text)
    return _Item("", item.role, expected, "".join(texts), images=images)


def _wire_usage(usage: Usage | None) -> dict[str, Any] | None:
    """response.usage: a prompt's rows (its images' features, in this conversation or its history) are its image
    tokens, the rest its text; cached tokens are not split (the prefix cache does not tell)."""
    if usage is None:
        return None
    prompt, output = usage.prompt_tokens, usage.completion_tokens
    rows = (usage.image_tokens or 0) + (usage.embedding_tokens or 0)  # UNSET (a text-only prompt) is falsy
    return {
        "total_tokens": prompt + output, "input_tokens": prompt, "output_tokens": output,
        "input_token_details": {"text_tokens": prompt - rows, "audio_tokens": 0, "image_tokens": rows,
                                "cached_tokens": usage.cached_tokens,
                                "cached_tokens_details": {"text_tokens": usage.cached_tokens, "audio_tokens": 0,
                                                          "image_tokens": 0}},
        "output_token_details": {"text_tokens": output, "audio_tokens": 0},
    }


def _check_text_only(modalities: list[str] | None, audio: Any, event_id: str | None, where: str) -> None:
    if modalities is not None and modalities != ["text"]:
        raise EventError(UNSUPPORTED, f"{where}.output_modalities must be ['text']: this server has no audio "
                                      "output", event_id=event_id, param=f"{where}.output_modalities")
    if audio is not None and where == "response":
        raise EventError(UNSUPPORTED, "response.audio is not supported: this server has no audio output",
                         event_id=event_id, param="response.audio")


def _check_no_tools(tools: list[Any] | None, event_id: str | None, where: str) -> None:
    if tools:
        raise EventError(UNSUPPORTED, f"{where}.tools: function calling is not supported on /v1/realtime yet",
                         event_id=event_id, param=f"{where}.tools")
