"""The server side of one /v1/stream connection as a sans-I/O state machine (python-websockets' Protocol
shape): text in (`receive_text`), results of what it asked for in (`refuse`, `reauthenticated`, ...), and out
`data_to_send()` (each item one text message, already encoded) and `commands()` (plain data for the adapter
to carry out: submit, cancel, credit, priority, resume, reauth, close).

It owns the per-message rules of docs/protocol.md, so they are tested with strings in and bytes out, no
socket: a malformed generate is refused (error, then done with finish_reason error) while other malformed
messages get an error only; ids are unique among the connection's active requests; at most
`max_requests` at once; a draining server refuses new generates; each message needs its scopes
(protocol/scopes.py); reauth and resume are handed to the adapter, which owns the token verifier and the
sessions. The request table maps the client's ids to whatever the adapter keeps per request (its handle).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from seedance.protocol import errors as codes
from seedance.protocol.errors import ProtocolError
from seedance.protocol.messages import (
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
class CancelRequest:
    id: str


@dataclass(frozen=True, slots=True)
class GrantCredit:
    id: str
    n: int


@dataclass(frozen=True, slots=True)
class SetPriority:
    id: str
    priority: int


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """Replay a session request after last_seq and adopt it; answer with `open` or `error`."""

    message: Resume


@dataclass(frozen=True, slots=True)
class Reauthenticate:
    """Verify this token; answer `reauthenticated`, `reauth_refused` or close with 4403 (another subject)."""

    token: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A generate was refused (for metrics and traces)."""

    id: str
    code: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    code: int
    reason: str


Command = (Submit | CancelRequest | GrantCredit | SetPriority | ResumeRequest | Reauthenticate | Refused
           | CloseConnection)


def _no_active(request_id: str) -> bytes:
    return error_message(request_id, codes.UNKNOWN_ID, f"no active request {request_id!r}")


class ServerConnection(Generic[H]):
    """One connection's protocol state: the request table, scopes, and what to send and do next."""

    def __init__(self, *, max_message_bytes: int, max_requests: int, scopes: frozenset[str],
                 token_auth: bool = False, draining: Callable[[], bool] = lambda: False,
                 log_context: str = "") -> None:
        self.max_message_bytes = max_message_bytes
        self.max_requests = max_requests
        self.scopes = scopes  # what this connection's credentials grant (replaced by a reauth)
        self.token_auth = token_auth  # False: no bearer tokens here, so nothing to renew
        self.draining = draining
        self.log_context = log_context  # "client=... subject=..." for log lines
        self.requests: dict[str, H] = {}
        self._out: list[bytes] = []
        self._commands: list[Command] = []

    # ---- outputs --------------------------------------------------------------------------------------------
    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def commands(self) -> list[Command]:
        out, self._commands = self._commands, []
        return out

    def send(self, body: bytes) -> None:
        """Queue one already encoded text message (the adapter's own, e.g. a fault report)."""
        self._out.append(body)

    # ---- inputs from the client ----------------------------------------------------------------------------
    def receive_text(self, data: str | bytes) -> None:
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
            self._for_active(message.id, CancelRequest(message.id))
        elif isinstance(message, Credit):
            self._for_active(message.id, GrantCredit(message.id, message.n))
        elif isinstance(message, Priority):
            self._for_active(message.id, SetPriority(message.id, message.priority))
        elif isinstance(message, Ping):
            self._out.append(pong_message(message.ts))
        elif isinstance(message, Resume):
            if message.id in self.requests:
                self._duplicate(message.id)
            else:
                self._commands.append(ResumeRequest(message))

    def receive_binary(self) -> None:
        self.error(None, codes.UNSUPPORTED, "client messages are JSON text frames")

    # ---- inputs from the adapter ---------------------------------------------------------------------------
    def open(self, request_id: str, handle: H) -> None:
        """A submitted (or resumed) request is live on this connection."""
        self.requests[request_id] = handle

    def forget(self, request_id: str) -> H | None:
        """The request ended (its done went out) or moved to another connection."""
        return self.requests.pop(request_id, None)

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
        else:
            self._commands.append(Submit(message))

    def _for_active(self, request_id: str, command: Command) -> None:
        if request_id in self.requests:
            self._commands.append(command)
        else:
            self._out.append(_no_active(request_id))

    def _duplicate(self, request_id: str) -> None:
        self.error(request_id, codes.DUPLICATE_ID, f"request id {request_id!r} is already active")
