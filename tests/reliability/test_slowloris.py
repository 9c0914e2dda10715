"""Slowloris: one address holding many connections with unfinished request headers must not take the server
from anyone else (issue 12, defect 2). Unfinished connections are counted per IP at accept time, closed after
header_timeout_s, and the process keeps file descriptors in reserve, logging what it refuses."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import RunningServer, start_server

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # never finished


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory, header_timeout_s=3, max_pending_connections_per_ip=40,
                       max_open_connections=150, max_connections_per_ip=0, http_requests_per_s=0)
    yield srv
    srv.stop()


def open_partial(srv: RunningServer, src: str, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((src, 0))
        s.connect(("127.0.0.1", srv.port))
        with contextlib.suppress(OSError):  # already refused
            s.sendall(PARTIAL)
        socks.append(s)
    return socks


def closed_by_server(socks: list[socket.socket], wait_s: float) -> int:
    """How many of these the server has closed (EOF or reset), waiting up to wait_s for each."""
    closed = 0
    for s in socks:
        s.settimeout(wait_s)
        try:
            closed += s.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except TimeoutError:
            pass
    return closed


def healthz_ms(srv: RunningServer, src: str = "127.0.0.1") -> float:
    t0 = time.perf_counter()
    with httpx.Client(transport=httpx.HTTPTransport(local_address=src), timeout=5) as http:
        assert http.get(f"{srv.http}/healthz").status_code == 200
    return (time.perf_counter() - t0) * 1000


def test_one_address_with_unfinished_headers_leaves_the_server_to_the_others(guarded):
    socks = open_partial(guarded, "127.0.0.2", 400)
    try:
        assert healthz_ms(guarded) < 1000  # others still get in while the attacker holds its sockets
        refused = closed_by_server(socks[40:], wait_s=0.5)
        assert refused == 360  # past max_pending_connections_per_ip, closed at accept
        started = time.perf_counter()
        assert closed_by_server(socks[:40], wait_s=6) == 40  # and the 40 admitted ones after header_timeout_s
        assert time.perf_counter() - started < 6
        assert healthz_ms(guarded, "127.0.0.2") < 1000  # the address itself may come back with real requests
    finally:
        for s in socks:
            s.close()
    log = guarded.log()
    assert "max_pending_connections_per_ip" in log and "header_timeout_s" in log


def test_finished_requests_on_a_kept_alive_connection_are_under_the_same_clock(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(PARTIAL)  # then the next request never finishes its headers
        t0 = time.perf_counter()
        assert closed_by_server([s], wait_s=8) == 1
        assert 2 < time.perf_counter() - t0 < 6


def test_descriptor_reserve_refuses_past_the_limit_and_keeps_room_for_newcomers(guarded):
    socks = []
    try:
        for i in range(8):  # 8 addresses x 30 unfinished connections: each under its per-IP limit
            socks += open_partial(guarded, f"127.0.0.{20 + i}", 30)
        assert healthz_ms(guarded, "127.0.0.50") < 1000  # a newcomer still gets its fair share
        assert closed_by_server(socks, wait_s=0.2) >= 240 - 150
    finally:
        for s in socks:
            s.close()
    assert "fd_reserve" in guarded.log()
