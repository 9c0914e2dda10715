"""Each request's client key for the engine's per-client fairness: its TCP connection (peer address and port).

A WebSocket's requests are one client for as long as it is open; HTTP requests on one kept-alive connection are one
client. A client that opens more connections to get a larger share of the batch is bounded by the per-address
connection limits (max_connections_per_ip, max_pending_connections_per_ip).
"""

from __future__ import annotations

from aiohttp import web

from seedance.engine.client_key import CURRENT_CLIENT


def client_key(request: web.Request) -> str:
    return transport_key(request.transport)


def transport_key(transport) -> str:
    """The key of one TCP connection (an asyncio transport): its peer's address and port."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return f"conn-{id(transport):x}"


@web.middleware
async def middleware(request: web.Request, handler):
    token = CURRENT_CLIENT.set(client_key(request))
    try:
        return await handler(request)
    finally:
        CURRENT_CLIENT.reset(token)
