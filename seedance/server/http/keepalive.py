"""TCP keepalive presets for client sockets: the kernel notices a peer that vanished without a FIN
(a phone that lost its network, a NAT that dropped the mapping) even while the app is idle.

Dead-peer detection time is idle + interval * count:
- conservative: 60 s idle, then 6 probes 10 s apart -> about 120 s; negligible traffic
- aggressive:   10 s idle, then 3 probes 3 s apart  -> about 19 s; for mobile clients behind NATs
The WebSocket heartbeat (application pings) sits above this and catches stalled peers faster still.
"""

from __future__ import annotations

import socket

PRESETS: dict[str, tuple[int, int, int]] = {  # idle s, interval s, probe count
    "conservative": (60, 10, 6),
    "aggressive": (10, 3, 3),
}


def apply_keepalive(sock: socket.socket | None, preset: str) -> bool:
    """Returns whether keepalive was set (False for 'off' or a non-TCP socket)."""
    if sock is None or preset == "off" or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    idle, interval, count = PRESETS[preset]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    return True
