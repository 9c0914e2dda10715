"""The waiting queue: priority first, FIFO within a priority, with aging so low priority cannot starve.

A request's effective priority improves by one level for every `aging_interval_s` it has waited. Aging
is linear in wait time, so within one priority level the oldest request always leads; the best request
overall is therefore the best of the level heads, found in O(number of levels) without re-sorting.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from seedance.engine.sequence import Sequence


class WaitQueue:
    def __init__(self, aging_interval_s: float) -> None:
        self.aging_interval_s = aging_interval_s
        self._levels: dict[int, list[Sequence]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self):
        for level in self._levels.values():
            yield from level

    def __contains__(self, seq: Sequence) -> bool:
        level = self._levels.get(seq.priority)
        return level is not None and seq in level

    def effective_priority(self, seq: Sequence, now: float) -> float:
        if self.aging_interval_s <= 0:
            return seq.priority
        return seq.priority - math.floor(max(0.0, now - seq.arrival_time) / self.aging_interval_s)

    def push(self, seq: Sequence) -> None:
        """Insert by arrival order, so a preempted request returns ahead of later arrivals."""
        level = self._levels.setdefault(seq.priority, [])
        bisect.insort(level, seq, key=lambda s: s.arrival)
        self._size += 1

    def remove(self, seq: Sequence) -> None:
        level = self._levels[seq.priority]
        level.remove(seq)
        self._size -= 1
        if not level:
            del self._levels[seq.priority]

    def peek(self, now: float, skip: Callable[[Sequence], bool] | None = None) -> Sequence | None:
        """The most urgent waiting sequence; with skip, the most urgent one skip does not exclude (a client at
        its running cap is passed over, not waited on)."""
        best, best_key = None, None
        for level in self._levels.values():
            head = level[0] if skip is None else next((s for s in level if not skip(s)), None)
            if head is None:
                continue
            key = (self.effective_priority(head, now), head.arrival)
            if best_key is None or key < best_key:
                best, best_key = head, key
        return best
