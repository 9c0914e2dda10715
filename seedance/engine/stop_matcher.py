"""Stop strings matched across token boundaries, without ever leaking stop text to the client.

Text that could still be the start of a stop string is held back; everything before it is released.
A match anywhere in held + new text ends the stream at the match, and the held text is dropped.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, delta: str) -> tuple[str, str | None]:
        """Returns (text safe to emit now, the stop string that matched or None)."""
        if not self.stops:
            return delta, None
        text = self.held + delta
        match_at, matched = -1, None
        for stop in self.stops:
            idx = text.find(stop)
            if idx != -1 and (match_at == -1 or idx < match_at):
                match_at, matched = idx, stop
        if matched is not None:
            self.held = ""
            return text[:match_at], matched
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:k]):
                    keep = k
                    break
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep], None

    def flush(self) -> str:
        """Release held text when the stream ends for another reason (EOS, length)."""
        held, self.held = self.held, ""
        return held
