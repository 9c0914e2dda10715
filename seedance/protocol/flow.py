"""Flow control of one WebSocket connection as plain data (docs/protocol.md, "Flow control"): per-request
credit (/v1/stream), per-connection water marks on the bytes the client has not read yet, and the heartbeat's
clock (both endpoints: /v1/stream and /v1/realtime).

Nothing here sends or sleeps: the sans-I/O connection (`ServerConnection`, `RealtimeConnection`) feeds it what
happened (bytes written, a pong, the time and the socket's buffered bytes), and `Backpressure.tick` answers
with plain actions (ping, pause, resume, close) that each connection turns into its own commands: what is
paused is a /v1/stream connection's requests without credit, or a realtime connection's response.
Back-pressure pauses work in the engine instead of buffering its output, so a slow reader costs neither
compute nor memory.

How far the client has read is measured with probes: after every `low_water_bytes` of output the server
pings with payload "sd:<bytes written>", and the pong to it acknowledges that much. Unacknowledged output
covers the kernel's buffers on both ends (megabytes on loopback), which the transport's own buffer alone
would not show.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from seedance.protocol.errors import CloseCode

PROBE = b"sd:"  # ping payload prefix: "sd:<bytes written>", echoed in the pong, acknowledges that much output


class StreamEvent(Protocol):
    """What flow control needs of an engine event (engine/events.py TokenEvent), structurally."""

    token_id: int  # < 0: an event that carries no token (a final event may carry only text or nothing)
    text_delta: str
    finished: bool


@dataclass(frozen=True, slots=True)
class SendPing:
    """A probe (how far the client has read) or a heartbeat."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseConnection:
    code: int
    reason: str


class Crossing(enum.Enum):
    """The connection crossed a water mark: above high water, PAUSE its streams under the water marks in the
    engine; at low water, RESUME them (what they hold may go out now)."""

    PAUSE = "pause"
    RESUME = "resume"


PAUSE, RESUME = Crossing.PAUSE, Crossing.RESUME
FlowAction = SendPing | CloseConnection | Crossing


@dataclass(frozen=True, slots=True)
class FlowLimits:
    high_water_bytes: int = 256 * 1024  # unread output above this: the connection's streams pause
    low_water_bytes: int = 64 * 1024  # at or below: they resume; also the probe interval
    slow_consumer_timeout_s: float = 30.0  # above high water this long: close with 4001
    heartbeat_interval_s: float = 15.0  # ping this often
    heartbeat_max_missed: int = 2  # unanswered pings before closing with 4000
    recheck_s: float = 0.05  # while above high water, look again this soon


@dataclass(slots=True)
class RequestFlow:
    """One request's flow state on this connection (a resumed request starts afresh: credit is per
    connection)."""

    credit: int | None = None  # None: no explicit flow control, only the connection's water marks
    binary: bool = False  # MTF1: a final event without a token still makes a frame
    session: bool = False  # a session turn outlives its connection (detached, not cancelled)
    cancelled: bool = False  # its end goes out whatever the credit
    paused_for_credit: bool = False

    def may_take(self) -> bool:
        """Whether the engine's events may be taken now (else they wait in the request's stream)."""
        return self.credit is None or self.cancelled or self.credit > 0

    def took(self, events: list) -> bool:
        """One batch was taken (one chunk or frame for all of it): spend its credit. True: the request must
        pause for more."""
        if self.credit is None or not events:
            return False
        final = events[-1].finished
        if (self.binary and final) or any(e.token_id >= 0 or e.text_delta for e in events):
            self.credit -= 1
        return self.credit <= 0 and not final


class Backpressure:
    """The connection's bytes in flight, its water marks and its heartbeat clock."""

    def __init__(self, limits: FlowLimits, now: float) -> None:
        self.limits = limits
        self.bytes_written = 0  # message bytes handed to the socket
        self.bytes_acked = 0  # of those, how many the client has read (a pong to a ping sent after them)
        self.probed_at = 0  # bytes_written when the last probe ping went out
        self.paused = False  # the connection's streams without credit are paused in the engine
        self.above_high_water_since: float | None = None
        self.missed_pongs = 0
        self.next_heartbeat_at = now + limits.heartbeat_interval_s

    def wrote(self, nbytes: int) -> bytes | None:
        """Count a message handed to the socket; the probe to ping with now, if one is due."""
        self.bytes_written += nbytes
        if self.bytes_written - self.probed_at >= self.limits.low_water_bytes:
            return self.probe()
        return None

    def probe(self) -> bytes:
        self.probed_at = self.bytes_written
        return PROBE + str(self.bytes_written).encode()

    def probe_if_unprobed(self) -> bytes | None:
        """A probe if output went out since the last one (so the client's next read of it can be seen)."""
        return self.probe() if self.probed_at < self.bytes_written else None

    def pong(self, payload: bytes) -> bool:
        """A pong arrived: the client is alive. True if it acknowledged output (paused streams may resume)."""
        self.missed_pongs = 0
        digits = payload[len(PROBE):]
        if payload.startswith(PROBE) and digits.isdigit():
            self.bytes_acked = max(self.bytes_acked, int(digits))
            return True
        return False

    def tick(self, now: float, buffered_bytes: int) -> tuple[float | None, Sequence[FlowAction]]:
        """Before writing: the heartbeat if due, and the water marks on the unread output (`buffered_bytes`:
        what the transport itself still holds). Returns how soon to tick again (None: write now; math.inf:
        never, the connection is closing) and what to do, in order."""
        limits = self.limits
        if (now < self.next_heartbeat_at and not self.paused and buffered_bytes <= limits.high_water_bytes
                and self.bytes_written - self.bytes_acked <= limits.high_water_bytes):
            return None, ()  # the common case, every step of every connection: nothing due, under the marks
        actions: list[FlowAction] = []
        if now >= self.next_heartbeat_at:
            self.next_heartbeat_at = now + limits.heartbeat_interval_s
            if self.missed_pongs >= limits.heartbeat_max_missed:
                reason = f"no pong to {self.missed_pongs} pings"
                return math.inf, [CloseConnection(CloseCode.HEARTBEAT_TIMEOUT, reason)]
            self.missed_pongs += 1
            actions.append(SendPing(self.probe()))
        unsent = self.unsent(buffered_bytes)
        if unsent > limits.high_water_bytes:
            if not self.paused:
                self.paused, self.above_high_water_since = True, now
                actions.append(PAUSE)
            elif now - self.above_high_water_since > limits.slow_consumer_timeout_s:
                actions.append(CloseConnection(CloseCode.SLOW_CONSUMER,
                                               "slow consumer: send buffer above high water too long"))
                return math.inf, actions
            self._probe(actions)
            return limits.recheck_s, actions
        if self.paused and unsent <= limits.low_water_bytes:
            self.paused, self.above_high_water_since = False, None
            actions.append(RESUME)
        elif self.paused:
            self._probe(actions)
            return limits.recheck_s, actions
        return None, actions

    def _probe(self, actions: list[FlowAction]) -> None:
        if (payload := self.probe_if_unprobed()) is not None:
            actions.append(SendPing(payload))

    def unsent(self, buffered_bytes: int) -> int:
        """Output the client has not read yet: written after the last probe it answered, and at least what
        is still in the transport's own buffer (a client that answers no ping at all)."""
        return max(buffered_bytes, self.bytes_written - self.bytes_acked)
