"""A tool call's text, `{"name": ..., "arguments": ...}`, read as it grows: once the name is known the call is
announced, then its arguments go out as the model writes them, so a streamed call's `function.arguments`
arrives in fragments as OpenAI's does (vLLM's tool parsers do the same). The arguments are the model's own text,
not re-serialized, so the fragments joined equal the non-streamed answer's `arguments` exactly.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

# The call's opening up to its arguments' value: name comes first (call_schema lists it first, and the
# constrained decoder keeps the schema's property order).
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
_SCALAR_END = frozenset(",}] \t\r\n")


@dataclass(slots=True)
class CallParser:
    """Feed it the reply's text piece by piece; it says what of the call can go out now."""

    names: frozenset[str]
    text: str = ""
    name: str | None = None  # set once the header is complete and names a declared function
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    start: int = -1  # where the arguments' value begins in text
    end: int | None = None  # just past its last character, once it is closed
    sent: int = 0  # how far into text the arguments went out
    _pos: int = 0  # scanner: next character to look at
    _depth: int = 0
    _in_string: bool = False
    _escape: bool = False

    def feed(self, piece: str) -> list[dict]:
        """The tool_calls delta entries this piece makes sendable: first the call's index, id, type, name (and
        what arguments there are), then index + an arguments fragment."""
        self.text += piece
        announce = False
        if self.name is None:
            match = _HEADER.match(self.text)
            if match is None or match.end() == len(self.text):  # still open (its value may not have begun)
                return []
            name = json.loads(match.group(1))
            if name not in self.names:
                return []
            self.name, self.start, self.sent, self._pos, announce = name, match.end(), match.end(), match.end(), True
        self._scan()
        upto = self.end if self.end is not None else len(self.text)
        fragment, self.sent = self.text[self.sent:upto], max(self.sent, upto)
        if announce:
            return [{"index": 0, "id": self.id, "type": "function",
                     "function": {"name": self.name, "arguments": fragment}}]
        return [{"index": 0, "function": {"arguments": fragment}}] if fragment else []

    def _scan(self) -> None:
        """Find where the arguments' JSON value ends (strings, nesting and escapes tracked)."""
        text = self.text
        while self.end is None and self._pos < len(text):
            c, i = text[self._pos], self._pos
            self._pos += 1
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == '"':
                    self._in_string = False
                    if self._depth == 0:
                        self.end = i + 1
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif self._depth > 0 and c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self.end = i + 1
            elif self._depth == 0 and c in _SCALAR_END:
                self.end = i

    @property
    def started(self) -> bool:
        return self.name is not None

    @property
    def complete(self) -> bool:
        """The whole text is one valid call (not cut short by max_tokens)."""
        if self.end is None:
            return False
        try:
            call = json.loads(self.text)
        except ValueError:
            return False
        return isinstance(call, dict) and call.get("name") == self.name

    @property
    def arguments(self) -> str:
        return self.text[self.start:self.end]


def parse_call(text: str, names: frozenset[str]) -> dict | None:
    """A whole reply as one OpenAI tool call, or None when it is not a complete call. A call whose arguments
    come before its name (no streaming possible) still parses, its arguments re-serialized."""
    parser = CallParser(names)
    parser.feed(text)
    if parser.complete:
        name, arguments = parser.name, parser.arguments
    else:
        try:
            call = json.loads(text)
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in names or "arguments" not in call:
            return None
        name, arguments = call["name"], json.dumps(call["arguments"])
    return {"id": parser.id, "type": "function", "function": {"name": name, "arguments": arguments}}
