"""PicowsSocket (server/transports/ws_picows.py): picows frames become the messages WsConnection reads, with
aiohttp's rules: fragments reassembled within max_message_bytes (else 1009), invalid UTF-8 closes with 1007,
a peer's close is answered with its code, and close() waits for the peer's close frame."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType
from picows import WSMsgType as PicowsType
from picows.picows import _make_test_ws_frame

from seedance.server.transports import ws_picows
from seedance.server.transports.ws_picows import PicowsSocket


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakeWS:
    """The WSTransport calls PicowsSocket makes."""

    def __init__(self) -> None:
        self.underlying_transport = FakeTransport()
        self.sent: list[tuple] = []
        self.closes: list[tuple] = []
        self.disconnected = False

    def send(self, kind, data) -> None:
        self.sent.append((int(kind), data))

    def send_close(self, code=1000, message=b"") -> None:
        self.closes.append((int(code), message))

    def send_ping(self, message=b"") -> None:
        self.sent.append(("ping", message))

    def disconnect(self, graceful: bool = True) -> None:
        self.disconnected = True


def frame(kind, payload: bytes, fin: bool = True):
    return _make_test_ws_frame(kind, payload, fin, False)


def opened(max_bytes: int = 1 << 20) -> tuple[PicowsSocket, FakeWS]:
    sock = PicowsSocket(max_bytes, lambda s: None)
    ws = FakeWS()
    sock.on_ws_connected(ws)
    return sock, ws


async def test_text_binary_and_fragmented_messages_arrive_whole_and_in_order():
    sock, ws = opened()
    sock.on_ws_frame(ws, frame(PicowsType.TEXT, b'{"a":', fin=False))
    sock.on_ws_frame(ws, frame(PicowsType.TEXT, b'1}', True))  # a new message while one is open: refused
    assert (await sock.receive()).type == WSMsgType.ERROR and ws.closes[-1][0] == 1002
    sock, ws = opened()
    sock.on_ws_frame(ws, frame(PicowsType.TEXT, "héllo".encode()))
    sock.on_ws_frame(ws, frame(PicowsType.TEXT, b'{"type":', fin=False))
    sock.on_ws_frame(ws, frame(PicowsType.CONTINUATION, b'"ping"}'))
    sock.on_ws_frame(ws, frame(PicowsType.BINARY, b"\x00\x01"))
    sock.on_ws_frame(ws, frame(PicowsType.PONG, b"probe"))
    got = [await sock.receive() for _ in range(4)]
    assert [(m.type, m.data) for m in got] == [(WSMsgType.TEXT, "héllo"), (WSMsgType.TEXT, '{"type":"ping"}'),
                                               (WSMsgType.BINARY, b"\x00\x01"), (WSMsgType.PONG, b"probe")]


async def test_an_oversized_fragmented_message_closes_with_1009_and_bad_utf8_with_1007():
    sock, ws = opened(max_bytes=10)
    sock.on_ws_frame(ws, frame(PicowsType.TEXT, b"123456", fin=False))
    sock.on_ws_frame(ws, frame(PicowsType.CONTINUATION, b"789012"))
    assert (await sock.receive()).type == WSMsgType.ERROR
    assert ws.closes == [(1009, b"message over 10 bytes")] and ws.disconnected and sock.closed
    sock, ws = opened()
    sock.on_ws_frame(ws, frame(PicowsType.TEXT, b"\xff\xfe"))
    assert (await sock.receive()).type == WSMsgType.ERROR and ws.closes[0][0] == 1007


async def test_the_peers_close_is_answered_with_its_code_and_ends_the_reader():
    sock, ws = opened()
    sock.on_ws_frame(ws, frame(PicowsType.CLOSE, b"\x03\xe9bye"))  # 1001
    msg = await sock.receive()
    assert msg.type == WSMsgType.CLOSE and sock.close_code == 1001 and ws.closes == [(1001, b"")]
    await sock.send_frame(b"late", WSMsgType.TEXT)  # nothing goes out after the close
    assert ws.sent == []


async def test_close_waits_for_the_peers_close_frame_then_disconnects(monkeypatch):
    sock, ws = opened()
    closing = asyncio.ensure_future(sock.close(code=4000, message=b"heartbeat"))
    await asyncio.sleep(0.01)
    assert ws.closes == [(4000, b"heartbeat")] and not ws.disconnected
    sock.on_ws_frame(ws, frame(PicowsType.CLOSE, b"\x0f\xa0"))
    assert await closing and ws.disconnected and sock.close_code == 4000
    monkeypatch.setattr(ws_picows, "CLOSE_TIMEOUT_S", 0.05)
    sock, ws = opened()
    assert await sock.close(code=4001, message=b"slow")  # the peer never answers: 1006, as aiohttp says
    assert ws.disconnected and sock.close_code == 1006


async def test_a_reader_that_falls_behind_stops_the_socket_being_read():
    sock, ws = opened()
    for _ in range(ws_picows.READ_PAUSE_MESSAGES):
        sock.on_ws_frame(ws, frame(PicowsType.TEXT, b"x"))
    assert ws.underlying_transport.paused
    for _ in range(ws_picows.READ_PAUSE_MESSAGES // 2 + 1):
        await sock.receive()
    assert not ws.underlying_transport.paused
