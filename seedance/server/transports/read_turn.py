"""A connection's reader gives the event loop back after READ_TURN_S of handling messages in a row.

A socket's receive() returns a message already buffered without suspending (aiohttp's reader queue, picows's
deque), so a client that sends a burst (the fuzz harness's 50 messages between pings) had its whole burst handled
in one task step: every other connection's messages, the engine's step deliveries and the canary's tokens waited
behind it. After each message, once the turn has lasted READ_TURN_S, the reader yields (asyncio.sleep(0)): the
callbacks already queued, and the I/O that arrived, run before its next message.
"""

from __future__ import annotations

import asyncio
import time

# Seconds of message handling one connection's reader may take before the loop's other work gets a turn: a few
# fuzzed messages' worth (0.1-0.5 ms each), so a burst costs a yield per millisecond, not one per message.
READ_TURN_S = 0.001


class ReadTurn:
    """Call `handled()` after each message: it yields once the turn since the last yield is READ_TURN_S long."""

    __slots__ = ("began",)

    def __init__(self) -> None:
        self.began = time.perf_counter()

    async def handled(self) -> None:
        if time.perf_counter() - self.began >= READ_TURN_S:
            await asyncio.sleep(0)
            self.began = time.perf_counter()
