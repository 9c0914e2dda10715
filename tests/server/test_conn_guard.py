"""The connection guard's bookkeeping: pending per IP, proxies exempt, the descriptor reserve's fair share."""

from __future__ import annotations

import asyncio

from seedance.server.http.conn_guard import FAIR_SHARE, ConnectionGuard


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


async def test_pending_connections_are_limited_per_ip_except_for_trusted_proxies():
    guard = ConnectionGuard(header_timeout_s=60, max_pending_per_ip=2, exempt=lambda ip: ip == "10.0.0.1")
    assert [guard.admit(FakeTransport(), "1.2.3.4") for _ in range(3)] == [True, True, False]
    assert all(guard.admit(FakeTransport(), "10.0.0.1") for _ in range(10))  # a proxy's idle upstream pool
    assert guard.refused["pending_per_ip"] == 1


async def test_a_request_in_progress_is_not_pending_and_keep_alive_pends_again():
    guard = ConnectionGuard(header_timeout_s=60, max_pending_per_ip=1)
    busy = FakeTransport()
    assert guard.admit(busy, "1.2.3.4")
    guard.request_started(busy)
    assert guard.admit(FakeTransport(), "1.2.3.4")  # the first one's headers are in
    guard.request_finished(busy)
    assert guard.pending_per_ip["1.2.3.4"] == 2
    assert guard.forget(busy) and guard.pending_per_ip["1.2.3.4"] == 1


async def test_past_the_reserve_only_addresses_with_few_connections_get_in():
    guard = ConnectionGuard(header_timeout_s=60, max_pending_per_ip=0, max_open=10)
    hog = [t for t in (FakeTransport() for _ in range(10)) if guard.admit(t, "6.6.6.6")]
    assert len(hog) == 10 and not guard.admit(FakeTransport(), "6.6.6.6")
    assert all(guard.admit(FakeTransport(), "7.7.7.7") for _ in range(FAIR_SHARE))  # a newcomer
    assert not guard.admit(FakeTransport(), "7.7.7.7")


async def test_an_unfinished_connection_is_closed_after_the_header_timeout():
    guard = ConnectionGuard(header_timeout_s=0.05, max_pending_per_ip=0)
    slow, fast = FakeTransport(), FakeTransport()
    guard.admit(slow, "1.2.3.4")
    guard.admit(fast, "1.2.3.4")
    guard.request_started(fast)
    await asyncio.sleep(0.15)
    assert slow.aborted and not fast.aborted and guard.refused["header_timeout"] == 1


async def test_accepted_sockets_inherit_the_listeners_keepalive_preset():
    """GuardedSite sets the preset once on the listening socket; every accepted socket has it (Linux copies
    the options at accept), so no connection pays setsockopt calls for it."""
    import socket

    from aiohttp import web

    from seedance.server.http.conn_guard import GuardedSite
    from seedance.server.http.keepalive import PRESETS

    runner = web.AppRunner(web.Application())
    await runner.setup()
    guard = ConnectionGuard(header_timeout_s=60)
    site = GuardedSite(runner, guard, "127.0.0.1", 0, keepalive="aggressive")
    await site.start()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", site._bound_port)
        for _ in range(100):
            if guard.conns:
                break
            await asyncio.sleep(0.01)
        (transport,) = guard.conns
        sock = transport.get_extra_info("socket")
        idle, interval, count = PRESETS["aggressive"]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == count
        writer.close()
    finally:
        await runner.cleanup()
