"""A client's share of the running batch (max_running_per_client), work-conserving.

Each client's `cap` most urgent running sequences are within its share; any more are its extras. The scheduler
admits an extra only while no request within its client's share waits and the batch has room, and an extra is
the first to give way when one does (scheduler.py): a lone client may fill an idle batch, and a second client
still gets its places at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from operator import attrgetter

from seedance.engine.sequence import Sequence

_CLIENT = attrgetter("client")


class ClientShare:
    """One step's count of running sequences by client (requests without a client are never capped)."""

    def __init__(self, cap: int, running: list[Sequence]) -> None:
        """running in the scheduler's order, most urgent first: each client's first `cap` are within its share."""
        self.cap = cap
        self.extras: list[Sequence] = []  # in the running order, most urgent first
        # Counted in C (this runs every step, over every running sequence); the Python pass that picks the extras
        # runs only when some client is beyond its share.
        counts = self.counts = Counter(map(_CLIENT, running))
        counts.pop(None, None)
        if counts and max(counts.values()) > cap:
            seen: dict[str, int] = {}
            for seq in running:
                client = seq.client
                if client is not None:
                    n = seen.get(client, 0)
                    if n >= cap:
                        self.extras.append(seq)
                    seen[client] = n + 1

    def beyond(self, seq: Sequence) -> bool:
        """True when running seq too would put its client beyond its share."""
        return seq.client is not None and self.counts.get(seq.client, 0) >= self.cap

    def admit(self, seq: Sequence) -> None:
        if seq.client is None:
            return
        if self.beyond(seq):
            self.extras.append(seq)
        self.counts[seq.client] = self.counts.get(seq.client, 0) + 1

    def leave(self, seq: Sequence) -> None:
        """seq left the batch (held back, preempted): if it was within the share, the client's most urgent extra
        takes its place in it."""
        if seq.client is None:
            return
        self.counts[seq.client] -= 1
        if seq in self.extras:
            self.extras.remove(seq)
            return
        promoted = next((s for s in self.extras if s.client == seq.client), None)
        if promoted is not None:
            self.extras.remove(promoted)

    def waiting_within(self, waiting: Iterable[Sequence], limit: int) -> int:
        """How many waiting sequences would run within their client's share (counted up to limit)."""
        room: dict[str, int] = {}
        n = 0
        for seq in waiting:
            if n >= limit:
                break
            if seq.client is not None:
                left = room.get(seq.client, self.cap - self.counts.get(seq.client, 0))
                room[seq.client] = left - 1
                if left <= 0:
                    continue
            n += 1
        return n
