"""A circuit breaker per endpoint, with the seed design's states (pure: a clock is injected, no I/O).

- CLOSED: all traffic. 3 consecutive connection failures (timeouts or refusals) -> HALF_OPEN.
- HALF_OPEN: traffic allowed and measured over a sliding window; a failure rate above 80% (once the window
  has enough calls) -> OPEN; 5 consecutive successes -> CLOSED.
- OPEN: no traffic but recovery probes, spaced by exponential back-off (0.5 s, 1 s, 2 s ... capped);
  a probe that succeeds -> HALF_OPEN, one that fails doubles the wait.

Every transition is recorded and passed to `on_transition`, so callers can export it as metrics or events.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Transition:
    endpoint: str
    old: BreakerState
    new: BreakerState
    reason: str
    at: float


class CircuitBreaker:
    def __init__(
        self,
        endpoint: str,
        *,
        failures_to_half_open: int = 3,
        window: int = 10,
        min_calls: int = 5,
        open_failure_rate: float = 0.8,
        successes_to_close: int = 5,
        probe_base_s: float = 0.5,
        probe_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.failures_to_half_open = failures_to_half_open
        self.min_calls = min_calls
        self.open_failure_rate = open_failure_rate
        self.successes_to_close = successes_to_close
        self.probe_base_s = probe_base_s
        self.probe_max_s = probe_max_s
        self.clock = clock
        self.on_transition = on_transition
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.outcomes: deque[bool] = deque(maxlen=window)  # True = failure, in HALF_OPEN
        self.probe_attempt = 0
        self.next_probe_at = 0.0
        self.transitions: list[Transition] = []
        self.calls = {"success": 0, "failure": 0, "rejected": 0}

    def probe_due(self) -> bool:
        return self.state is BreakerState.OPEN and self.clock() >= self.next_probe_at

    def allow(self) -> bool:
        """May a connection be attempted now? In OPEN, only when a recovery probe is due."""
        if self.state is not BreakerState.OPEN or self.clock() >= self.next_probe_at:
            return True
        self.calls["rejected"] += 1
        return False

    def record_success(self) -> None:
        self.calls["success"] += 1
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        if self.state is BreakerState.OPEN:
            self._move(BreakerState.HALF_OPEN, "recovery probe succeeded")
        elif self.state is BreakerState.HALF_OPEN:
            self.outcomes.append(False)
            if self.consecutive_successes >= self.successes_to_close:
                self._move(BreakerState.CLOSED, f"{self.consecutive_successes} consecutive successes")

    def record_failure(self, reason: str = "connection failed") -> None:
        self.calls["failure"] += 1
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        if self.state is BreakerState.CLOSED:
            if self.consecutive_failures >= self.failures_to_half_open:
                self._move(BreakerState.HALF_OPEN, f"{self.consecutive_failures} consecutive failures ({reason})")
        elif self.state is BreakerState.HALF_OPEN:
            self.outcomes.append(True)
            rate = sum(self.outcomes) / len(self.outcomes)
            if len(self.outcomes) >= self.min_calls and rate > self.open_failure_rate:
                self._move(BreakerState.OPEN, f"half-open failure rate {rate:.0%}")
        else:  # a recovery probe failed: wait twice as long for the next
            self.probe_attempt += 1
            self._schedule_probe()

    def _schedule_probe(self) -> None:
        delay = min(self.probe_max_s, self.probe_base_s * 2**self.probe_attempt)
        self.next_probe_at = self.clock() + delay

    def _move(self, new: BreakerState, reason: str) -> None:
        old, self.state = self.state, new
        self.outcomes.clear()
        self.consecutive_successes = 0 if new is not BreakerState.CLOSED else self.consecutive_successes
        if new is BreakerState.OPEN:
            self.probe_attempt = 0
            self._schedule_probe()
        transition = Transition(self.endpoint, old, new, reason, self.clock())
        self.transitions.append(transition)
        if self.on_transition is not None:
            self.on_transition(transition)
