"""BoundedClose (server/transports/ws_liveness.py) over a real aiohttp WebSocket and a raw client with a small
receive buffer: a peer that reads late still gets everything, the close frame included (aiohttp itself closes
the transport right after writing the close frame when another task is reading); a peer that never reads is
reset once CLOSE_TIMEOUT_S has passed, and no descriptor is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time

from aiohttp import web

from seedance.protocol import CloseCode
from seedance.server.transports import ws_liveness
from seedance.server.transports.ws_liveness import BoundedClose
from tests.e2e.wire import frames_until_close, raw_handshake


class Stalling:
    """A WebSocket endpoint that writes JSON messages until its transport holds unsent bytes of its own (the
    kernel's buffers are full: the client does not read), then closes 4001 while another task reads."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = asyncio.Event()
        self.finished = asyncio.Event()
        self.finish_took = 0.0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        transport = request.transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        closer = BoundedClose(ws, transport, "test websocket")
        reader = asyncio.create_task(ws.receive())  # a reader waits: aiohttp's close then closes the transport
        while transport.get_write_buffer_size() < 8192:
            await ws.send_str(json.dumps({"i": self.sent, "pad": "x" * 1000}))
            self.sent += 1
            await asyncio.sleep(0)
        await closer.close(CloseCode.SLOW_CONSUMER, "slow consumer")
        self.closed.set()
        started = time.monotonic()
        await closer.finish()
        self.finish_took = time.monotonic() - started
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        self.finished.set()
        return ws


async def serve(endpoint: Stalling) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/ws", endpoint.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_peer_that_reads_late_gets_every_message_and_the_close_frame():
    endpoint = Stalling()
    runner, port = await serve(endpoint)
    try:
        sock = await asyncio.to_thread(raw_handshake, port, path="/ws", rcvbuf=4096)
        await asyncio.wait_for(endpoint.closed.wait(), 10)
        await asyncio.sleep(1.0)  # well within CLOSE_TIMEOUT_S, long after aiohttp closed its transport
        events, code = await asyncio.to_thread(frames_until_close, sock)
        sock.close()
        assert code == CloseCode.SLOW_CONSUMER
        assert [e["i"] for e in events] == list(range(endpoint.sent))
        await asyncio.wait_for(endpoint.finished.wait(), 10)
        assert endpoint.finish_took < ws_liveness.CLOSE_TIMEOUT_S - 0.5  # released once the peer took it all
    finally:
        await runner.cleanup()


async def test_a_peer_that_never_reads_is_reset_after_the_close_timeout_and_nothing_leaks(monkeypatch):
    monkeypatch.setattr(ws_liveness, "CLOSE_TIMEOUT_S", 0.5)
    endpoint = Stalling()
    runner, port = await serve(endpoint)
    try:
        before = open_fds()
        sock = await asyncio.to_thread(raw_handshake, port, path="/ws", rcvbuf=4096)
        await asyncio.wait_for(endpoint.finished.wait(), 10)
        assert 0.4 < endpoint.finish_took < 2.0, endpoint.finish_took
        reset = False
        try:
            await asyncio.to_thread(frames_until_close, sock)
        except ConnectionResetError:
            reset = True
        sock.close()
        assert reset  # the kernel dropped what the peer never took
        await asyncio.sleep(0.1)
        assert open_fds() <= before  # the duplicate descriptor and the transport's are both gone
    finally:
        await runner.cleanup()


class ExpiringToken:
    """/v1/stream's shape on aiohttp, as seedance's app runs it (handler_cancellation): the handler reads, a
    timer closes the connection 4401 (a token's expiry). aiohttp's close closes the transport as soon as the
    close frame is out, and its connection_lost then cancels the handler while it waits in BoundedClose.finish
    for that very close. The endpoint keeps the closer, as a live connection's object graph does until the
    collector gets to it: only an explicit close of the held descriptor can end the stream."""

    def __init__(self) -> None:
        self.finish_cancelled = asyncio.Event()
        self.closers: list[BoundedClose] = []
        self._closing: list[asyncio.Future] = []

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        closer = BoundedClose(ws, request.transport, "test websocket")
        self.closers.append(closer)

        def expired() -> None:
            self._closing.append(asyncio.ensure_future(closer.close(CloseCode.UNAUTHORIZED, "token expired")))

        asyncio.get_running_loop().call_later(0.05, expired)
        await ws.receive()  # CLOSING, once the close frame is out
        try:
            await closer.finish()
        except asyncio.CancelledError:
            self.finish_cancelled.set()
            raise
        return ws


async def test_a_close_still_ends_the_stream_when_aiohttp_cancels_the_handler_in_finish():
    endpoint = ExpiringToken()
    app = web.Application()
    app.router.add_get("/ws", endpoint.handler)
    runner = web.AppRunner(app, handler_cancellation=True)  # as seedance's app (server/app.py)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        before = open_fds()
        sock = await asyncio.to_thread(raw_handshake, port, path="/ws")
        _, code = await asyncio.to_thread(frames_until_close, sock, 5)
        assert code == CloseCode.UNAUTHORIZED
        sock.settimeout(3)
        try:
            rest = await asyncio.to_thread(sock.recv, 100)  # the stream's end, not a socket held open for ever
        except TimeoutError:
            rest = None
        sock.close()
        assert endpoint.finish_cancelled.is_set()  # the case under test did happen
        assert rest == b""
        await asyncio.sleep(0.1)
        assert open_fds() <= before  # the held duplicate descriptor was closed
    finally:
        await runner.cleanup()
