"""Reading the WebSocket protocol's JSON text frames in e2e tests, as plain dicts.

The SDK's typed decoder (seedance.protocol.decode_server_messages) gives msgspec structs; these tests compare
and index raw messages, so they want the dicts the server actually put on the wire.
"""

from __future__ import annotations

import asyncio
import json
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
