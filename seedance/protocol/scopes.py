"""Which scopes each client message needs: part of the protocol (docs/security.md), so the sans-I/O
connection can enforce it per message and the HTTP transports share the same rule for a generation."""

from __future__ import annotations

from seedance.protocol.messages import Cancel, ClientMessage, Credit, Generate, Ping, Priority, Reauth

SCOPE_GENERATE = "generate"  # start generations (WebSocket generate, SSE completions, polling jobs)
SCOPE_LOGPROBS = "logprobs"  # ask for logprobs / top logprobs
SCOPE_PRIORITY_HIGH = "priority:high"  # priority below 0 (ahead of the default), at start or by `priority`
SCOPE_ADMIN = "admin"  # /stats
ALL_SCOPES = frozenset({SCOPE_GENERATE, SCOPE_LOGPROBS, SCOPE_PRIORITY_HIGH, SCOPE_ADMIN})


def generate_scopes(logprobs: int | None, priority: int) -> list[str]:
    """Scopes a generation with these options needs (any transport)."""
    needed = [SCOPE_GENERATE]
    if logprobs is not None:
        needed.append(SCOPE_LOGPROBS)
    if priority < 0:
        needed.append(SCOPE_PRIORITY_HIGH)
    return needed


def message_scopes(message: ClientMessage) -> list[str]:
    """Scopes a WebSocket client message needs. Control messages for one's own requests need none;
    message types this table does not know (added later) need `generate` until they are listed."""
    if isinstance(message, Generate):
        return generate_scopes(message.logprobs, message.priority)
    if isinstance(message, Priority):
        return [SCOPE_PRIORITY_HIGH] if message.priority < 0 else []
    if isinstance(message, Cancel | Credit | Ping | Reauth):
        return []
    return [SCOPE_GENERATE]
