"""The listener pre-check `seedance serve` runs before importing the server and loading the model, so a port in
use is one line within a second, not after the whole start-up."""

from __future__ import annotations

import socket


def check_can_listen(host: str, port: int) -> None:
    """Raise the OSError a listener on host:port would meet (EADDRINUSE...), binding and closing a probe socket the
    way the site binds (SO_REUSEADDR). A port taken between this and the real bind still fails there."""
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)
