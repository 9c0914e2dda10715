"""What every WebSocket endpoint (/v1/stream on either stack, /v1/realtime) does once the upgrade is accepted,
in one place: tune the socket, and refuse the connection while the model loads, while draining, or when the
server holds max_connections WebSockets (a close frame with the reason, not an HTTP error: the upgrade
already succeeded, so browsers can read why)."""

from __future__ import annotations

import asyncio
import socket

from seedance.protocol import CloseCode
from seedance.server.http.config import ServerConfig
from seedance.server.http.state import ServerState


def tune_socket(transport: asyncio.BaseTransport | None, config: ServerConfig) -> None:
    """SO_SNDBUF (the kernel's share of the unread bytes) when configured. The TCP keepalive preset is the
    listening socket's (conn_guard.GuardedSite), which every accepted socket inherits."""
    if not config.socket_send_buffer_bytes or transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.socket_send_buffer_bytes)


def refusal(state: ServerState) -> tuple[int, str] | None:
    """The close code and reason a new WebSocket gets right after its upgrade, or None to serve it."""
    if state.engine is None:
        return CloseCode.TRY_AGAIN_LATER, "model is loading"
    if state.draining:
        return CloseCode.GOING_AWAY, "server is shutting down"
    if len(state.websockets) >= state.config.max_connections:
        return CloseCode.TRY_AGAIN_LATER, "too many connections"
    return None


def accept(transport: asyncio.BaseTransport | None, state: ServerState) -> tuple[int, str] | None:
    """Tune the socket, then say whether to refuse (refusal above)."""
    tune_socket(transport, state.config)
    return refusal(state)
