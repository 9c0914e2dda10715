"""The server side of one /v1/stream connection as a sans-I/O state machine (python-websockets' Protocol
shape). Inputs: the client's text (`receive_text`), the engine's events per request (`receive_events`),
pongs (`receive_pong`), bytes written (`wrote`), the clock and the socket's buffer (`tick(now,
buffered_bytes)`), the end of the socket (`connection_lost`), and the results of what it asked for (`open`,
`refuse`, `reauthenticated`, ...). Outputs: `data_to_send()` (each item one text message, already encoded)
and `commands()` (plain data for the adapter to carry out: submit, cancel, pause, resume, priority, resume
a session turn, reauth, ping, detach, close).

It owns the per-message rules of docs/protocol.md, so they are tested with strings in and bytes out, no
socket: a malformed generate is refused (error, then done with finish_reason error) while other malformed
messages get an error only; ids are unique among the connection's active requests; at most
`max_requests` at once (a generate with n choices counts once: credit, cancel and priority are per id
too); n > 1 takes neither a session nor binary output; a draining server refuses new generates; each
message needs its scopes (protocol/scopes.py); reauth and resume are handed to the adapter, which owns
the token verifier and the sessions. The request table maps the client's ids to whatever the adapter
keeps per request (its handle).
Flow control (protocol/flow.py) is here too: credit per request, water marks and the heartbeat per
connection, so a slow reader is paused, then closed, by rules tested without a socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from seedance.protocol import errors as codes
from seedance.protocol.errors import ProtocolError
from seedance.protocol.flow import (
    PAUSE,
    RESUME,
    Backpressure,
    CloseConnection,
    FlowLimits,
    RequestFlow,
    SendPing,
    StreamEvent,
)
from seedance.protocol.messages import (
    Append,
    Authenticated,
    Cancel,
    ClientMessage,
    Credit,
    Done,
    Error,
    Generate,
    Ping,
    Pong,
    Priority,
    Reauth,
    Resume,
    Usage,
    decode_client_message,
    encode_server_message,
)
from seedance.protocol.scopes import message_scopes

log = logging.getLogger("seedance.security")

H = TypeVar("H")  # the adapter's per-request handle


# ---- outgoing messages -------------------------------------------------------------------------------------
def error_message(request_id: str | None, code: str, message: str) -> bytes:
    return encode_server_message(Error(id=request_id, code=code, message=message))


def refused_done_message(request_id: str) -> bytes:
    return encode_server_message(Done(id=request_id, finish_reason="error",
                                      usage=Usage(prompt_tokens=0, completion_tokens=0)))


def refusal_message(request_id: str, code: str, message: str) -> bytes:
    """A refused generate ends like any request: error, then done with finish_reason error (one message)."""
    return b"[" + error_message(request_id, code, message) + b"," + refused_done_message(request_id) + b"]"


def pong_message(ts: float | None) -> bytes:
    return encode_server_message(Pong(ts=ts))


# ---- commands: what the adapter must do ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Submit:
    """Start this generation; on success `open(id, handle)`, on failure `refuse(id, code, message)`."""

    message: Generate


@dataclass(frozen=True, slots=True)
class _ForRequest:
    id: str  # the client's id: the adapter finds its handle in the request table


class CancelRequest(_ForRequest):
    __slots__ = ()


class PauseRequest(_ForRequest):
    """Pause it in the engine (no credit, or the client reads too slowly): it keeps its KV."""

    __slots__ = ()


class ResumeStream(_ForRequest):
    """Resume it in the engine and wake the writer: what it held may go out now."""

    __slots__ = ()


class DetachRequest(_ForRequest):
    """The connection is gone: the session keeps this turn for a resume."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SetPriority:
    id: str
    priority: int


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """Replay a session request after last_seq and adopt it; answer with `open` or `error`."""

    message: Resume


@dataclass(frozen=True, slots=True)
class AppendInput:
    """Add a piece to the session's next user message and prefill it; answer `error` if it cannot."""

    message: Append


@dataclass(frozen=True, slots=True)
class Reauthenticate:
    """Verify this token; answer `reauthenticated`, `reauth_refused` or close with 4403 (another subject)."""

    token: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A generate was refused (for metrics and traces)."""

    id: str
    code: str


Command = (Submit | CancelRequest | PauseRequest | ResumeStream | SetPriority | ResumeRequest | Reauthenticate
           | Refused | SendPing | DetachRequest | CloseConnection | AppendInput)


_NOTHING: list = []  # returned when there is no output; never appended to


def _no_active(request_id: str) -> bytes:
    return error_message(request_id, codes.UNKNOWN_ID, f"no active request {request_id!r}")


class ServerConnection(Generic[H]):
    """One connection's protocol state: the request table, scopes, and what to send and do next."""

    def __init__(self, *, max_message_bytes: int, max_requests: int, scopes: frozenset[str],
                 token_auth: bool = False, draining: Callable[[], bool] = lambda: False,
                 log_context: str = "", flow: FlowLimits | None = None, now: float = 0.0) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_requests = max_requests
        self.scopes = scopes  # what this connection's credentials grant (replaced by a reauth)
        self.token_auth = token_auth  # False: no bearer tokens here, so nothing to renew
        self.draining = draining
        self.log_context = log_context  # "client=... subject=..." for log lines
        self.requests: dict[str, H] = {}
        self.flows: dict[str, RequestFlow] = {}  # the same ids: each request's credit on this connection
        self.backpressure = Backpressure(flow or FlowLimits(), now)
        self._out: list[bytes] = []
        self._commands: list[Command] = []

    # ---- outputs --------------------------------------------------------------------------------------------
    def data_to_send(self) -> list[bytes]:
        if not self._out:
            return _NOTHING  # the common case on the writer's path: no new list
        out, self._out = self._out, []
        return out

    def commands(self) -> list[Command]:
        if not self._commands:
            return _NOTHING
        out, self._commands = self._commands, []
        return out

    def has_output(self) -> bool:
        """Messages or commands are queued (data_to_send / commands would return some)."""
        return bool(self._out or self._commands)

    def send(self, body: bytes) -> None:
        """Queue one already encoded text message (the adapter's own, e.g. a fault report)."""
        self._out.append(body)

    # ---- inputs from the client ----------------------------------------------------------------------------
    def receive_text(self, data: str | bytes) -> None:
        try:
            self._receive_text(data)
        except Exception:  # a fault of ours on one message fails that message only
            self.message_failed()

    def message_failed(self) -> None:
        """Handling the last message failed (here or in the adapter carrying out its commands): drop what was
        left of it, tell the client, keep the connection and its other requests."""
        log.exception("websocket message failed")
        self._commands.clear()
        self.error(None, codes.INTERNAL, "the server failed on this message")

    def _receive_text(self, data: str | bytes) -> None:
        try:
            message = decode_client_message(data, max_size=self.max_message_bytes)
        except ProtocolError as err:
            if err.message_type == "generate" and err.request_id and err.request_id not in self.requests:
                self.refuse(err.request_id, err.code, err.message)
            else:
                self.error(err.request_id, err.code, err.message)
            return
        if isinstance(message, Reauth):
            if self.token_auth:
                self._commands.append(Reauthenticate(message.token))
            else:
                self.error(None, codes.UNSUPPORTED, "this server does not use bearer tokens: nothing to renew")
            return
        if not self._admit(message):
            return
        if isinstance(message, Generate):
            self._on_generate(message)
        elif isinstance(message, Cancel):
            if self._for_active(message.id, CancelRequest(message.id)):
                self.flows[message.id].cancelled = True
        elif isinstance(message, Credit):
            if self._for_active(message.id, None):
                self._grant(message.id, message.n)
        elif isinstance(message, Priority):
            self._for_active(message.id, SetPriority(message.id, message.priority))
        elif isinstance(message, Ping):
            self._out.append(pong_message(message.ts))
        elif isinstance(message, Resume):
            if message.id in self.requests:
                self._duplicate(message.id)
            else:
                self._commands.append(ResumeRequest(message))
        elif isinstance(message, Append):
            if self.draining():
                self.error(None, codes.OVERLOADED, "server is shutting down")
            else:
                self._commands.append(AppendInput(message))

    def receive_binary(self) -> None:
        self.error(None, codes.UNSUPPORTED, "client messages are JSON text frames")

    def receive_pong(self, payload: bytes) -> bool:
        """True if it acknowledged output: the writer should look again (paused streams may resume)."""
        return self.backpressure.pong(payload)

    def may_take(self, request_id: str, ready: bool) -> bool:
        """Whether the writer may take the request's events now (`ready`: the engine has some). Without
        credit they wait where they are, and the request is paused in the engine."""
        flow = self.flows[request_id]
        if flow.may_take():
            return True
        if ready:
            self._pause_for_credit(request_id, flow)
        return False

    def receive_events(self, request_id: str, events: list[StreamEvent]) -> None:
        """The writer took these events for one chunk: the request's credit pays for it."""
        flow = self.flows[request_id]
        if flow.credit is not None and flow.took(events):
            self._pause_for_credit(request_id, flow)

    def tick(self, now: float, buffered_bytes: int) -> float | None:
        """Before writing: the heartbeat if due, and the water marks on the unread output (`buffered_bytes`:
        what the transport itself still holds); flow.py decides, this pauses or resumes the requests without
        credit. Returns None to write now, else how soon to tick again (math.inf: never, the connection is
        closing)."""
        hold, actions = self.backpressure.tick(now, buffered_bytes)
        for action in actions:
            if action is PAUSE:
                self._commands.extend(PauseRequest(i) for i, f in self.flows.items() if f.credit is None)
            elif action is RESUME:
                self._commands.extend(ResumeStream(i) for i, f in self.flows.items() if not f.paused_for_credit)
            else:
                self._commands.append(action)
        return hold

    def wrote(self, nbytes: int) -> bytes | None:
        """A message of nbytes went to the socket; returns a probe to ping with now, if one is due."""
        return self.backpressure.wrote(nbytes)

    def connection_lost(self) -> list[Command]:
        """The socket is gone: each open request is detached (a live session turn) or cancelled. Returns the
        commands; the table is the adapter's to read until it calls `forget_all`."""
        return [DetachRequest(i) if f.session and not f.cancelled else CancelRequest(i)
                for i, f in self.flows.items()]

    # ---- inputs from the adapter ---------------------------------------------------------------------------
    def open(self, request_id: str, handle: H, *, credit: int | None = None, binary: bool = False,
             session: bool = False, resumed: bool = False) -> None:
        """A submitted or resumed request is live on this connection. A resumed one starts under this
        connection's water marks (whatever credit it had, or a pause while detached, is over)."""
        self.requests[request_id] = handle
        flow = self.flows[request_id] = RequestFlow(credit=credit, binary=binary, session=session)
        if credit == 0:
            self._pause_for_credit(request_id, flow)
        elif credit is None and self.backpressure.paused:
            self._commands.append(PauseRequest(request_id))  # joins its connection's back-pressure pause
        elif resumed:
            self._commands.append(ResumeStream(request_id))

    def forget(self, request_id: str) -> H | None:
        """The request ended (its done went out) or moved to another connection."""
        self.flows.pop(request_id, None)
        return self.requests.pop(request_id, None)

    def forget_all(self) -> None:
        self.flows.clear()
        self.requests.clear()

    def refuse(self, request_id: str, code: str, message: str) -> None:
        self._out.append(refusal_message(request_id, code, message))
        self._commands.append(Refused(request_id, code))

    def error(self, request_id: str | None, code: str, message: str) -> None:
        self._out.append(error_message(request_id, code, message))

    def reauthenticated(self, scopes: frozenset[str], expires_at: float | None) -> None:
        self.scopes = scopes
        self._out.append(encode_server_message(Authenticated(expires_at=expires_at, scopes=sorted(scopes))))

    def reauth_refused(self, reason: str) -> None:
        self.error(None, codes.UNAUTHORIZED, f"reauth refused: {reason}")

    def close(self, code: int, reason: str) -> None:
        self._commands.append(CloseConnection(code, reason))

    # ---- rules -------------------------------------------------------------------------------------------------
    def _admit(self, message: ClientMessage) -> bool:
        missing = [s for s in message_scopes(message) if s not in self.scopes]
        if not missing:
            return True
        mtype = type(message).__name__.lower()
        reason = f"{mtype} needs scope {missing[0]!r}, which this connection's token does not have"
        log.info("websocket message refused: %s: %s", self.log_context, reason)
        if isinstance(message, Generate):
            self.refuse(message.id, codes.FORBIDDEN, reason)
        else:
            self.error(getattr(message, "id", None), codes.FORBIDDEN, reason)
        return False

    def _on_generate(self, message: Generate) -> None:
        if self.draining():
            self.refuse(message.id, codes.OVERLOADED, "server is shutting down")
        elif message.id in self.requests:
            self._duplicate(message.id)
        elif len(self.requests) >= self.max_requests:
            self.refuse(message.id, codes.TOO_MANY_REQUESTS,
                        f"at most {self.max_requests} concurrent requests per connection")
        elif message.n > 1 and message.session is not None:
            self.refuse(message.id, codes.UNSUPPORTED, "a session turn has one choice (n = 1)")
        elif message.n > 1 and message.binary:
            self.refuse(message.id, codes.UNSUPPORTED,
                        "binary (MTF1) output has one choice (n = 1): ask for JSON chunks, which carry each index")
        else:
            self._commands.append(Submit(message))

    def _for_active(self, request_id: str, command: Command | None) -> bool:
        if request_id not in self.requests:
            self._out.append(_no_active(request_id))
            return False
        if command is not None:
            self._commands.append(command)
        return True

    def _grant(self, request_id: str, n: int) -> None:
        flow = self.flows[request_id]
        flow.credit = (flow.credit or 0) + n
        if flow.paused_for_credit and flow.credit > 0:
            flow.paused_for_credit = False
            if not self.backpressure.paused:  # else the back-pressure resume takes it along
                self._commands.append(ResumeStream(request_id))

    def _pause_for_credit(self, request_id: str, flow: RequestFlow) -> None:
        if not flow.paused_for_credit:
            flow.paused_for_credit = True
            self._commands.append(PauseRequest(request_id))

    def _duplicate(self, request_id: str) -> None:
        self.error(request_id, codes.DUPLICATE_ID, f"request id {request_id!r} is already active")
