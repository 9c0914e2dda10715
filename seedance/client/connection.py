"""The async Python client for Seedance's WebSocket protocol.

    async with SeedanceClient("ws://127.0.0.1:8000/v1/stream") as client:
        async for chunk in client.generate("In the beginning", max_tokens=32, seed=1):
            print(chunk.text, end="")

Many generations share one connection (each its own iterator). If the connection drops, the client
reconnects with exponential back-off and jitter and resumes every open stream from the last seq it
delivered: each caller's iterator sees every chunk exactly once. Resuming needs a server-side session, so
a generation without one gets a private single-turn session unless `resumable=False`.

With a `token_provider`, the client keeps a connection's token fresh: it sends `reauth` with a new token a
margin before the current one expires (streams carry on untouched), and if the server still closes with
4401 it reconnects with a fresh token and resumes (docs/client.md, "Tokens that expire").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as ssl_module
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from seedance.client.auth import (
    MIN_REAUTH_INTERVAL_S,
    ReauthError,
    TokenLifetime,
    TokenProvider,
    fetch_token,
    renewal_delay,
    retry_delay,
    token_lifetime,
)
from seedance.client.errors import ConnectionLost, SeedanceError
from seedance.protocol import (
    Authenticated,
    Cancel,
    ClientMessage,
    CloseCode,
    Credit,
    Done,
    Error,
    Generate,
    ProtocolError,
    Reauth,
    Resume,
    ServerMessage,
    SnapshotAck,
    decode_client_message,
    decode_frames,
    decode_server_message,
    decode_server_messages,
    encode_client_message,
)
from seedance.protocol import Chunk as ChunkMessage

__all__ = ["ChunkOut", "ConnectionLost", "DoneOut", "GenerationStream", "ReauthError", "SeedanceClient",
           "SeedanceError"]

log = logging.getLogger(__name__)
REAUTH_ANSWER_ERRORS = ("unauthorized", "unsupported")  # id-less errors that answer a pending reauth
_NO_LIMIT = 1 << 62  # the client checks a generate's fields, not its size (the server's limit is its own)


@dataclass(slots=True)
class ChunkOut:
    id: str
    seq: int
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None


@dataclass(slots=True)
class DoneOut:
    id: str
    finish_reason: str
    usage: dict
    stop_reason: str | int | None = None
    kv_reuse: float | None = None


@dataclass(eq=False)
class GenerationStream:
    """Async iterator of ChunkOut; `done` is set when it ends. Leaving it early cancels the generation."""

    client: SeedanceClient
    id: str
    session: str | None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    last_seq: int = -1
    done: DoneOut | None = None
    credit_window: int | None = None
    consumed_since_grant: int = 0
    request: Generate | None = None  # the generate message, re-sent if the server never saw it

    def __aiter__(self) -> AsyncIterator[ChunkOut]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ChunkOut]:
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, DoneOut):
                    self.done = item
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
                await self.client._consumed(self)
        finally:
            if self.done is None:
                await self.client.cancel(self.id)

    async def collect(self) -> str:
        return "".join([c.text async for c in self])


class SeedanceClient:
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        reauth_margin: float = 30.0,
        reauth_margin_ratio: float = 0.1,
        on_auth_error: Callable[[ReauthError], None] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        binary: bool = False,
        credit_window: int | None = None,
        heartbeat_interval: float = 15.0,
        reconnect: bool = True,
        backoff_base: float = 0.05,
        backoff_max: float = 5.0,
        max_reconnect_attempts: int = 50,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.token = token  # the token of the current connection (the first one, when given with a provider)
        self.token_provider = token_provider
        self.reauth_margin = reauth_margin
        self.reauth_margin_ratio = reauth_margin_ratio
        self.on_auth_error = on_auth_error
        self.ssl = ssl
        self.binary = binary
        self.credit_window = credit_window
        self.heartbeat_interval = heartbeat_interval
        self.reconnect = reconnect
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_reconnect_attempts = max_reconnect_attempts
        self.open_timeout = open_timeout
        self.streams: dict[str, GenerationStream] = {}
        self.snapshots: dict[str, dict] = {}  # request id -> the server's snapshot ack of that session turn
        self.reconnects = 0
        self.reauths = 0  # tokens renewed in-band (each answered `authenticated`)
        self.last_auth_error: ReauthError | None = None
        self._lifetime = token_lifetime(token, time.time())
        self._renewer: asyncio.Task | None = None
        self._reauth_answer: asyncio.Future | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._connected = asyncio.Event()
        self._closing = False

    @property
    def healthy(self) -> bool:
        """Connected now (not closed, not in the middle of reconnecting)."""
        return self._connected.is_set() and self._reader is not None and not self._reader.done()

    async def __aenter__(self) -> SeedanceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def expires_at(self) -> float | None:
        """Unix time at which the current connection's token expires (None: no token, or one without `exp`)."""
        return self._lifetime.expires_at

    async def _open(self) -> ClientConnection:
        """A new connection, with a fresh token from the provider when there is one (the first connection uses
        a `token` given alongside it). A provider failure raises ReauthError."""
        token = self.token
        if self.token_provider is not None and (self._ws is not None or token is None):
            token = await fetch_token(self.token_provider, self.open_timeout)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await connect(self.url, additional_headers=headers, ssl=self.ssl, open_timeout=self.open_timeout,
                           ping_interval=self.heartbeat_interval, ping_timeout=self.heartbeat_interval * 2,
                           max_size=None, max_queue=None)
        if token != self.token:
            self.token, self._lifetime = token, token_lifetime(token, time.time())
        return ws

    async def connect(self) -> None:
        self._ws = await self._open()
        self._connected.set()
        self._start_renewer()
        self._reader = asyncio.create_task(self._read_loop(), name="seedance-client-reader")

    async def close(self) -> None:
        """Cancel what is still running (an explicit close is not a dropped connection: nothing should stay
        on the server waiting for a resume), then close the socket."""
        self._closing = True
        self._stop_renewer()
        if self._ws is not None:
            for stream in list(self.streams.values()):
                with contextlib.suppress(ConnectionClosed):
                    await self._ws.send(_text(Cancel(id=stream.id)))
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        for stream in self.streams.values():
            stream.queue.put_nowait(ConnectionLost("client closed"))
        self.streams.clear()

    # ---- requests ---------------------------------------------------------------------------------
    async def _send(self, message: ClientMessage, still_wanted: Callable[[], bool] | None = None) -> None:
        """Send once connected; `still_wanted` is asked again then (a reconnect may have made it moot)."""
        if not self._connected.is_set() and self._reader is not None:
            # Reconnecting: wait for it, unless the reader gives up (then the streams already have their error
            # and a credit grant or cancel waiting here would hang the caller's iterator for ever).
            connected = asyncio.ensure_future(self._connected.wait())
            await asyncio.wait({connected, self._reader}, return_when=asyncio.FIRST_COMPLETED)
            connected.cancel()
            if not self._connected.is_set():
                return
        await self._connected.wait()
        if still_wanted is not None and not still_wanted():
            return
        with contextlib.suppress(ConnectionClosed):  # the reader reconnects and resumes from there
            await self._ws.send(_text(message))

    def generate(self, prompt: str | None = None, *, messages: list[dict] | None = None, session: str | None = None,
                 id: str | None = None, resumable: bool = True, **params: Any) -> GenerationStream:
        request_id = id or uuid.uuid4().hex[:16]
        if session is None and resumable:
            session = f"sdk-{uuid.uuid4().hex}"  # a private one-turn session makes it resumable
        stream = GenerationStream(self, request_id, session, credit_window=self.credit_window)
        self.streams[request_id] = stream
        message: dict[str, Any] = {"type": "generate", "id": request_id, **params}
        if prompt is not None:
            message["prompt"] = prompt
        if messages is not None:
            message["messages"] = messages
        if session is not None:
            message["session"] = session
        if self.binary:
            message["binary"] = True
        if self.credit_window:
            message["credit"] = self.credit_window
        try:  # the protocol's own decoder: a field the server would refuse fails here, with the server's words
            stream.request = decode_client_message(msgspec.json.encode(message), max_size=_NO_LIMIT)
        except ProtocolError as err:
            del self.streams[request_id]
            stream.queue.put_nowait(SeedanceError(err.code, err.message, request_id))
            return stream
        asyncio.get_running_loop().create_task(self._send(stream.request))
        return stream

    async def cancel(self, request_id: str) -> None:
        if request_id in self.streams:
            await self._send(Cancel(id=request_id))

    async def _consumed(self, stream: GenerationStream) -> None:
        """Credit flow control: grant back what the caller has consumed, half a window at a time."""
        if stream.credit_window:
            stream.consumed_since_grant += 1
            if stream.consumed_since_grant >= max(1, stream.credit_window // 2):
                n, stream.consumed_since_grant = stream.consumed_since_grant, 0
                # A grant held up by a reconnect is dropped: the resumed stream runs under water marks, and a
                # late grant would put it back under credit that no one grants any more.
                await self._send(Credit(id=stream.id, n=n),
                                 still_wanted=lambda: stream.credit_window is not None)

    # ---- reading ----------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        while not self._closing:
            closed: ConnectionClosed | None = None
            try:
                async for raw in self._ws:
                    self._dispatch(raw)
            except ConnectionClosed as exc:
                closed = exc
            self._stop_renewer()
            if self._closing:
                return
            self._connected.clear()
            fatal = self._closed_over_token(closed)
            if fatal is None and self.reconnect and await self._reconnect():
                continue
            for stream in self.streams.values():
                stream.queue.put_nowait(fatal or ConnectionLost("connection lost and not re-established"))
            self.streams.clear()
            return

    def _closed_over_token(self, closed: ConnectionClosed | None) -> ReauthError | None:
        """Reported when the server closed over the token; returned when the client will not reconnect: 4403,
        or 4401 without a provider (the only token the client has is the expired one) or with reconnect off."""
        rcvd = closed.rcvd if closed is not None else None
        if rcvd is None or rcvd.code not in (CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN):
            return None
        if rcvd.code == CloseCode.FORBIDDEN:
            error = ReauthError("forbidden", f"the server closed the connection with 4403: {rcvd.reason}")
        elif self.token_provider is None or not self.reconnect:
            why = "there is no token_provider to get a fresh token from" if self.reconnect else "reconnect is off"
            error = ReauthError("token_expired", f"the server closed the connection with 4401 ({rcvd.reason}) "
                                f"and {why}")
        else:
            self._auth_failed(ReauthError("token_expired", f"the server closed the connection with 4401 "
                                          f"({rcvd.reason}): reconnecting with a fresh token"))
            return None
        self._auth_failed(error)
        return error

    async def _reconnect(self) -> bool:
        for attempt in range(self.max_reconnect_attempts):
            delay = min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.5)
            await asyncio.sleep(delay)
            try:
                self._ws = await self._open()
            except ReauthError as err:
                self._auth_failed(err)
                continue
            except (OSError, TimeoutError, InvalidStatus) as err:
                log.info("reconnect attempt %d failed: %s", attempt + 1, err)
                continue
            self.reconnects += 1
            for stream in self.streams.values():  # before any send wakes: see _consumed
                stream.credit_window = None  # a resumed stream runs under the new connection's water marks
            self._connected.set()
            self._start_renewer()
            for stream in list(self.streams.values()):
                if stream.session is None:
                    stream.queue.put_nowait(ConnectionLost(f"request {stream.id} had no session to resume"))
                    del self.streams[stream.id]
                    continue
                await self._send(Resume(session=stream.session, id=stream.id, last_seq=stream.last_seq))
            return True
        return False

    def _dispatch(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            for frame in decode_frames(raw):
                meta = frame.metadata
                self._on_chunk(ChunkOut(meta["id"], meta["seq"], frame.text, list(frame.token_ids),
                                        list(frame.logprobs) if frame.logprobs is not None else None))
                if not frame.is_partial:
                    self._on_done(DoneOut(meta["id"], meta["finish_reason"], meta.get("usage", {}),
                                          meta.get("stop_reason")))
            return
        for m in _server_messages(raw):
            if isinstance(m, ChunkMessage):
                logprobs = [lp.logprob for lp in m.logprobs] if m.logprobs else None
                self._on_chunk(ChunkOut(m.id, m.seq, m.text, m.token_ids, logprobs))
            elif isinstance(m, Done):
                self._on_done(DoneOut(m.id, m.finish_reason, msgspec.structs.asdict(m.usage), m.stop_reason,
                                      m.kv_reuse))
            elif isinstance(m, SnapshotAck):
                self.snapshots[m.id] = msgspec.to_builtins(m)  # arrives after the turn's done: the turn is durable
            elif self._reauth_answer is not None and (isinstance(m, Authenticated) or (
                    isinstance(m, Error) and m.id is None and m.code in REAUTH_ANSWER_ERRORS)):
                if not self._reauth_answer.done():
                    self._reauth_answer.set_result(m)
            elif isinstance(m, Error):
                self._on_error(m)

    def _on_chunk(self, chunk: ChunkOut) -> None:
        stream = self.streams.get(chunk.id)
        if stream is None or chunk.seq <= stream.last_seq:
            return  # already delivered (a replay overlapping what arrived before the drop)
        stream.last_seq = chunk.seq
        stream.queue.put_nowait(chunk)

    def _on_done(self, done: DoneOut) -> None:
        stream = self.streams.pop(done.id, None)
        if stream is not None:
            stream.queue.put_nowait(done)

    def _on_error(self, m: Error) -> None:
        stream = self.streams.get(m.id) if m.id else None
        if stream is None:
            log.warning("server error: %s %s", m.code, m.message)
            return
        if m.code == "unknown_id" and stream.last_seq == -1 and stream.request is not None:
            # The connection died before the server saw the generate: send it again.
            asyncio.get_running_loop().create_task(self._send(stream.request))
            return
        self.streams.pop(m.id, None)
        stream.queue.put_nowait(SeedanceError(m.code, m.message, m.id))

    # ---- token renewal ----------------------------------------------------------------------------
    def _start_renewer(self) -> None:
        if self.token_provider is not None and self._lifetime.expires_at is not None:
            self._renewer = asyncio.create_task(self._renew(self._ws), name="seedance-client-reauth")

    def _stop_renewer(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    async def _renew(self, ws: ClientConnection) -> None:
        """For one connection: reauth a margin before expiry, again after each renewal; after a failure,
        retry until the connection ends (the read loop cancels this task then)."""
        delay = renewal_delay(self._lifetime, time.time(), self.reauth_margin, self.reauth_margin_ratio)
        while delay is not None:
            await asyncio.sleep(delay)
            try:
                await self._reauth(ws)
            except ConnectionClosed:
                return  # the read loop handles it
            except ReauthError as err:
                self._auth_failed(err)
                if err.code == "unsupported":
                    return
                delay = retry_delay(self._lifetime.expires_at, time.time())
                continue
            delay = renewal_delay(self._lifetime, time.time(), self.reauth_margin, self.reauth_margin_ratio,
                                  floor_s=MIN_REAUTH_INTERVAL_S)

    async def _reauth(self, ws: ClientConnection) -> None:
        token = await fetch_token(self.token_provider, self.open_timeout)
        fresh = token_lifetime(token, time.time())
        current = self._lifetime.expires_at
        if fresh.expires_at is not None and current is not None and fresh.expires_at <= current:
            raise ReauthError("token_provider", "the token provider returned a token that expires no later than "
                              "the one in use")
        answer = asyncio.get_running_loop().create_future()
        self._reauth_answer = answer
        try:
            await ws.send(_text(Reauth(token=token)))
            m = await asyncio.wait_for(answer, self.open_timeout)
        except TimeoutError:
            raise ReauthError("timeout", f"no answer to reauth within {self.open_timeout:g} s") from None
        finally:
            self._reauth_answer = None
        if isinstance(m, Error):
            raise ReauthError(m.code, m.message)
        expires_at = fresh.expires_at if fresh.expires_at is not None else m.expires_at
        self.token, self._lifetime = token, TokenLifetime(expires_at, fresh.issued_at)
        self.reauths += 1
        log.debug("token renewed in-band; it expires at %s", expires_at)

    def _auth_failed(self, error: ReauthError) -> None:
        """Tell the application (the on_auth_error callback, `last_auth_error`, the log)."""
        self.last_auth_error = error
        log.warning("seedance client: %s", error)
        if self.on_auth_error is not None:
            try:
                self.on_auth_error(error)
            except Exception:
                log.exception("on_auth_error callback failed")


def _text(message: ClientMessage) -> str:
    """A client message as a text frame (the protocol's encoder; the server takes no binary client frames)."""
    return encode_client_message(message).decode()


def _server_messages(raw: str) -> list[ServerMessage]:
    """One text message (one server message or an array of them), typed. A message this client does not
    know (a newer server's) is skipped, not fatal: the rest of the array still counts."""
    try:
        return decode_server_messages(raw)
    except ProtocolError:
        try:
            items = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            log.warning("skipped a server message that is not JSON")
            return []
    out = []
    for item in items if isinstance(items, list) else [items]:
        try:
            out.append(decode_server_message(msgspec.json.encode(item)))
        except ProtocolError as err:
            log.debug("skipped a server message: %s", err.message)
    return out
