"""Reading the WebSocket protocol's JSON text frames in e2e tests, as plain dicts.

The SDK's typed decoder (seedance.protocol.decode_server_messages) gives msgspec structs; these tests compare
and index raw messages, so they want the dicts the server actually put on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from collections.abc import Callable, Iterator


def messages_of(raw: str | bytes) -> list[dict]:
    """A text frame holds one message, or an array of them when the server batched an engine step."""
    parsed = json.loads(raw)
    return parsed if isinstance(parsed, list) else [parsed]


async def until(ws, predicate: Callable[[dict], bool], timeout: float = 30) -> list[dict]:
    """Messages received until one satisfies predicate (inclusive: it is the last one)."""
    seen: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            for m in messages_of(await ws.recv()):
                seen.append(m)
                if predicate(m):
                    return seen


def raw_handshake(port: int, rcvbuf: int | None = None, path: str = "/v1/stream") -> socket.socket:
    """A WebSocket client that never answers pings and reads only when told: a stalled peer."""
    sock = socket.socket()
    if rcvbuf:  # before connect, so the advertised window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head
    return sock


def send_masked_text(sock: socket.socket, text: str, opcode: int = 0x1) -> None:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    header = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", len(payload)) if len(payload) > 125 else \
        bytes([0x80 | opcode, 0x80 | len(payload)])
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def server_frames(sock: socket.socket, timeout: float) -> Iterator[tuple[int, bytes]]:
    """The server's (unmasked) frames as (opcode, payload), until the socket ends."""
    buf = b""
    sock.settimeout(timeout)
    while True:
        while len(buf) < 2 or len(buf) < _frame_end(buf):
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
        end = _frame_end(buf)
        yield buf[0] & 0x0F, buf[end - _payload_len(buf):end]
        buf = buf[end:]


def read_text_frames(sock: socket.socket, stop: Callable[[dict], bool], timeout: float = 30) -> list[dict]:
    """A raw client reading again: the JSON text frames up to the first `stop` accepts, answering pings (so
    the heartbeat keeps it); AssertionError if the connection closes first."""
    seen = []
    for opcode, payload in server_frames(sock, timeout):
        if opcode == 0x9:
            send_masked_text(sock, payload.decode("latin-1"), opcode=0xA)
        elif opcode == 0x8:
            raise AssertionError(f"closed: {payload!r}")
        elif opcode == 0x1:
            seen.append(json.loads(payload))
            if stop(seen[-1]):
                return seen
    raise AssertionError("connection closed")


def frames_until_close(sock: socket.socket, timeout: float = 10) -> tuple[list[dict], int | None]:
    """A raw client reading at last, answering nothing: the JSON text frames it had not read, and the close
    frame's code (None if the socket ended without one)."""
    seen = []
    for opcode, payload in server_frames(sock, timeout):
        if opcode == 0x8:
            return seen, struct.unpack(">H", payload[:2])[0]
        if opcode == 0x1:
            seen.append(json.loads(payload))
    return seen, None


def _payload_len(buf: bytes) -> int:
    n = buf[1] & 0x7F
    return n if n < 126 else struct.unpack(">H", buf[2:4])[0] if n == 126 else struct.unpack(">Q", buf[2:10])[0]


def _frame_end(buf: bytes) -> int:
    """Where the unmasked server frame at the start of buf ends (at least the bytes needed to know it)."""
    n = buf[1] & 0x7F
    head = 2 if n < 126 else 4 if n == 126 else 10
    if len(buf) < head:
        return head
    return head + _payload_len(buf)
