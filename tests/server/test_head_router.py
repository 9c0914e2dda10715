"""The head router's decision (server/http/head_router.py route_head): only a complete, well-formed /v1/stream
WebSocket upgrade goes to picows; everything else, and anything odd, to aiohttp, whose parser answers it."""

from __future__ import annotations

import pytest

from seedance.server.http.head_router import MAX_HEAD_BYTES, for_picows, route_head

KEY = "MDEyMzQ1Njc4OWFiY2RlZg=="  # base64 of 16 bytes


def upgrade(path: str = "/v1/stream", version: str = "HTTP/1.1", extra: str = "", drop: str = "") -> bytes:
    headers = {"Host": "127.0.0.1:8000", "Upgrade": "websocket", "Connection": "keep-alive, Upgrade",
               "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}
    lines = [f"GET {path} {version}"] + [f"{k}: {v}" for k, v in headers.items() if k != drop]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def test_a_well_formed_stream_upgrade_goes_to_picows_with_or_without_a_query():
    assert route_head(upgrade()) is True
    assert route_head(upgrade("/v1/stream?ticket=abc")) is True
    assert route_head(upgrade() + b"\x81\x85....frame") is True  # a frame pipelined behind the head


def test_other_requests_go_to_aiohttp_as_soon_as_the_first_bytes_say_so():
    assert route_head(b"GET /healthz HTTP/1.1\r\n") is False
    assert route_head(b"POST /v1/stream HTTP/1.1\r\n") is False
    assert route_head(b"G") is None and route_head(b"GET /v1/st") is None
    assert route_head(upgrade("/v1/streams")) is False
    assert route_head(upgrade("/v1/stream/x")) is False
    assert route_head(upgrade("/v1/realtime")) is False


def test_an_unfinished_head_waits_but_never_past_the_bound():
    head = upgrade()
    assert route_head(head[:-2]) is None
    long = b"GET /v1/stream HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEAD_BYTES
    assert route_head(long) is False  # aiohttp's limits answer it
    assert route_head(upgrade(extra="X-Pad: " + "a" * MAX_HEAD_BYTES + "\r\n")) is False


@pytest.mark.parametrize("head", [
    upgrade(version="HTTP/1.0"),
    upgrade(drop="Upgrade"),
    upgrade(drop="Sec-WebSocket-Key"),
    upgrade(drop="Connection"),
    upgrade(extra="Sec-WebSocket-Version: 8\r\n", drop="Sec-WebSocket-Version"),
    upgrade(extra="Sec-WebSocket-Key: bm90IDE2IGJ5dGVz\r\n", drop="Sec-WebSocket-Key"),  # not 16 bytes
    upgrade(extra="Transfer-Encoding: chunked\r\n"),
    upgrade(extra="Content-Length: 5\r\n"),
    upgrade(extra="Upgrade: h2c\r\n"),  # a second Upgrade
    upgrade(extra=" folded continuation\r\n"),
    upgrade(extra="no colon here\r\n"),
    upgrade(extra="Bad Name : x\r\n"),
    upgrade(extra="X-Ctl: a\x01b\r\n"),
    upgrade(extra="".join(f"X-{i}: a\r\n" for i in range(130))),
])
def test_anything_odd_goes_to_aiohttp(head):
    assert route_head(head) is False


def test_picows_gets_the_connection_header_its_handshake_takes():
    """Firefox sends `Connection: keep-alive, Upgrade`; picows' handshake wants `Upgrade` alone."""
    head = upgrade() + b"tail"
    fixed = for_picows(head)
    assert b"Connection: Upgrade\r\n" in fixed and b"keep-alive" not in fixed and fixed.endswith(b"\r\n\r\ntail")
    assert route_head(fixed) is True


def test_a_plain_connection_header_is_taken_as_it_is_and_a_second_one_rewritten_too():
    plain = upgrade().replace(b"keep-alive, Upgrade", b"Upgrade")
    assert for_picows(plain) is plain  # the common case: no copy
    doubled = upgrade(extra="connection: Upgrade\r\n")
    fixed = for_picows(doubled)
    assert fixed.count(b"Connection: Upgrade\r\n") == 2 and b"keep-alive" not in fixed
