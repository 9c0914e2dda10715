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
from collections.abc import Callable


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


def raw_handshake(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A WebSocket client that never answers pings and reads only when told: a stalled peer."""
    sock = socket.socket()
    if rcvbuf:  # before connect, so the advertised window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall((f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head
    return sock


def send_masked_text(sock: socket.socket, text: str) -> None:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    header = bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(payload)) if len(payload) > 125 else \
        bytes([0x81, 0x80 | len(payload)])
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
