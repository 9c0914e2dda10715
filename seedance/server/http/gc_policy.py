"""Full garbage collections wait while connections arrive in a burst, and run once it is over.

Each WebSocket connection is ~90 objects the collector tracks (tasks, coroutines, futures, the protocol's
state: scripts/accept_watch.py's notes in docs/server-stack.md), so a gateway holding 10,000 is ~1M of them,
and a full (generation 2) collection walks them all. CPython starts one each time the long-lived objects grew
by a quarter, which a ramp of new connections does again and again: 12 full collections, 13 s of a 60 s level
at 10,000 clients on a loaded box (~1 s each), the event loop stopped through every one while handshakes
waited. `GcPolicy` samples the accept count once a second; while more than `burst_accepts_per_s` arrive, the
automatic full collection is off (generation 2's threshold out of reach; the young generations are collected as
usual), and it is back as soon as a second passes under the rate, or after `MAX_DEFER_S` in any case, so
cyclic garbage waits at most that long: a burst that outlasts it defers again only once a full collection has
run since (CPython's own rule decides when, as without the policy).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

log = logging.getLogger("seedance.server")

MAX_DEFER_S = 60.0  # a burst longer than this gets its full collection anyway
_OUT_OF_REACH = 1 << 30


class GcPolicy:
    def __init__(self, accepted: Callable[[], int], burst_accepts_per_s: int, interval_s: float = 1.0) -> None:
        self.accepted = accepted
        self.burst = burst_accepts_per_s
        self.interval_s = interval_s
        self.deferring_since: float | None = None
        self.deferred_total_s = 0.0
        self._last = accepted()
        self._owed_after: int | None = None  # full collections counted when MAX_DEFER_S ran out; None: nothing owed
        self._threshold2 = gc.get_threshold()[2]
        self._handle: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        if self.burst > 0:
            self._handle = self.loop.call_later(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._resume()

    def _tick(self) -> None:
        now = self.loop.time()
        count = self.accepted()
        rate = (count - self._last) / self.interval_s
        self._last = count
        if self._owed_after is not None and _full_collections() > self._owed_after:
            self._owed_after = None  # the full collection the last long burst owed has run
        if rate <= self.burst:
            self._resume()
            self._owed_after = None
        elif self.deferring_since is None:
            if self._owed_after is None:
                self.deferring_since = now
                t0, t1, self._threshold2 = gc.get_threshold()
                gc.set_threshold(t0, t1, _OUT_OF_REACH)
        elif now - self.deferring_since >= MAX_DEFER_S:
            self._resume()
            self._owed_after = _full_collections()
        self._handle = self.loop.call_later(self.interval_s, self._tick)

    def _resume(self) -> None:
        """Automatic full collections back at their usual threshold."""
        if self.deferring_since is None:
            return
        self.deferred_total_s += self.loop.time() - self.deferring_since
        self.deferring_since = None
        t0, t1, _ = gc.get_threshold()
        gc.set_threshold(t0, t1, self._threshold2)


def _full_collections() -> int:
    return gc.get_stats()[2]["collections"]
