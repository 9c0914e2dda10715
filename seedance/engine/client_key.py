"""Whose request it is: the client key the scheduler shares the batch by (max_running_per_client).

The server sets it once per connection (server/http/client_identity.py) and every request submitted while
handling that connection carries it, whatever the transport, without each request builder passing it on.
"""

from __future__ import annotations

from contextvars import ContextVar

CURRENT_CLIENT: ContextVar[str | None] = ContextVar("seedance_client", default=None)


def client_of(request) -> str | None:
    """The request's client: its own field, else the submitting context's."""
    return request.client if request.client is not None else CURRENT_CLIENT.get()
