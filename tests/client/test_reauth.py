"""The client's token renewal: when it renews (pure timing functions), and the reauth flow against a small
in-process WebSocket server that behaves like Seedance's guard (4401 at `exp`, `reauth` -> `authenticated`,
`error unauthorized` for a bad token, 4403 for another subject). The real server: tests/e2e/test_client_reauth.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import jwt
import pytest
from websockets.asyncio.server import ServerConnection, serve

from seedance.client import ReauthError, SeedanceClient
from seedance.client.auth import (
    MIN_REAUTH_INTERVAL_S,
    TokenLifetime,
    fetch_token,
    renew_at,
    renewal_delay,
    retry_delay,
    token_lifetime,
)
from tests.pki import SECRET, hs256

WRONG_SECRET = "not-the-server-secret-0123456789abcdef"


def mint(ttl: float, sub: str = "alice", secret: str = SECRET) -> str:
    """Sub-second expiry (float exp) so a flow test outlives several tokens in a second or two."""
    now = time.time()
    return jwt.encode({"sub": sub, "iat": now, "exp": now + ttl}, secret, algorithm="HS256")


# ---------------------------------------------------------------------------------------------- timing


def test_token_lifetime_is_read_without_verifying():
    token = hs256(WRONG_SECRET, ttl=60)  # signed with a key the client never has: still readable
    claims = jwt.decode(token, options={"verify_signature": False})
    life = token_lifetime(token, received_at=0.0)
    assert life == TokenLifetime(float(claims["exp"]), float(claims["iat"]))


def test_tokens_without_an_expiry_are_never_renewed():
    no_exp = jwt.encode({"sub": "alice", "iat": 1000}, SECRET, algorithm="HS256")
    for token in (None, "", "opaque-api-key", "a.b.c", no_exp):
        life = token_lifetime(token, received_at=5.0)
        assert life.expires_at is None
        assert renew_at(life, 30, 0.1) is None and renewal_delay(life, 0.0, 30, 0.1) is None


def test_a_token_without_iat_counts_its_lifetime_from_when_it_was_received():
    token = jwt.encode({"sub": "alice", "exp": 1000}, SECRET, algorithm="HS256")
    assert token_lifetime(token, received_at=900.0) == TokenLifetime(1000.0, 900.0)
    assert renew_at(token_lifetime(token, received_at=900.0), 30, 0.1) == 990.0  # 10% of 100 s


@pytest.mark.parametrize(("lifetime", "margin", "ratio", "before"), [
    (3600, 30, 0.1, 30),  # long-lived: the fixed margin is the smaller
    (3, 30, 0.1, 0.3),  # short-lived: 10% of its life, so it is not renewed the moment it arrives
    (300, 30, 0.1, 30),
    (200, 30, 0.1, 20),
    (3, 1, 0.5, 1),
    (100, 0, 0.1, 0),  # no margin: at expiry
    (0, 30, 0.1, 0),  # issued already expired
])
def test_renewal_is_the_smaller_of_the_margin_and_a_fraction_of_the_lifetime(lifetime, margin, ratio, before):
    life = TokenLifetime(expires_at=10_000.0 + lifetime, issued_at=10_000.0)
    assert renew_at(life, margin, ratio) == pytest.approx(life.expires_at - before)
    assert renewal_delay(life, 10_000.0, margin, ratio) == pytest.approx(lifetime - before)


def test_renewal_delay_is_never_negative_and_respects_the_floor():
    life = TokenLifetime(expires_at=100.0, issued_at=0.0)  # renew at 90
    assert renewal_delay(life, now=95.0, margin_s=30, margin_ratio=0.1) == 0.0  # overdue: now
    assert renewal_delay(life, now=95.0, margin_s=30, margin_ratio=0.1, floor_s=MIN_REAUTH_INTERVAL_S) == 0.5
    assert renewal_delay(life, now=50.0, margin_s=30, margin_ratio=0.1, floor_s=0.5) == 40.0


@pytest.mark.parametrize(("expires_at", "now", "delay"), [
    (130.0, 100.0, 5.0),  # plenty of time: at most 5 s between tries
    (103.0, 100.0, 1.0),  # a third of what is left
    (100.5, 100.0, 0.5),  # never faster than 0.5 s
    (90.0, 100.0, 0.5),  # past exp (the server's leeway may still take a renewal)
    (None, 100.0, 5.0),
])
def test_retry_delay(expires_at, now, delay):
    assert retry_delay(expires_at, now) == pytest.approx(delay)


async def test_fetch_token_takes_sync_and_async_providers_and_wraps_failures():
    async def async_provider() -> str:
        return "async-token"

    async def slow_provider() -> str:
        await asyncio.sleep(10)
        return "late"

    def broken() -> str:
        raise RuntimeError("identity provider down")

    assert await fetch_token(lambda: "sync-token", 1) == "sync-token"
    assert await fetch_token(async_provider, 1) == "async-token"
    for provider, says in [(broken, "identity provider down"), (slow_provider, "TimeoutError"),
                           (lambda: None, "returned NoneType"), (lambda: "", "returned str")]:
        with pytest.raises(ReauthError) as info:
            await fetch_token(provider, 0.05)
        assert info.value.code == "token_provider" and says in info.value.message


# ---------------------------------------------------------------------------------------------- flow


class GuardServer:
    """Seedance's per-connection token guard in miniature, and a generate that streams one chunk per 50 ms."""

    def __init__(self) -> None:
        self.connections = 0
        self.reauths: list[str] = []
        self.closed_with: list[int] = []
        self.port = 0

    @staticmethod
    def verify(token: str) -> dict | None:
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False,
                                                                              "verify_iat": False})
        except jwt.PyJWTError:
            return None
        return claims if claims["exp"] > time.time() else None

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        claims = self.verify(ws.request.headers.get("Authorization", "").removeprefix("Bearer "))
        if claims is None:
            await self.close(ws, 4401, "token refused")
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(claims["exp"] - time.time(),
                                lambda: loop.create_task(self.close(ws, 4401, "token expired")))
        streams: set[asyncio.Task] = set()
        try:
            async for raw in ws:
                m = json.loads(raw)
                if m["type"] == "reauth":
                    self.reauths.append(m["token"])
                    fresh = self.verify(m["token"])
                    if fresh is None:
                        await ws.send(json.dumps({"type": "error", "id": None, "code": "unauthorized",
                                                  "message": "reauth refused: signature does not verify"}))
                    elif fresh["sub"] != claims["sub"]:
                        await self.close(ws, 4403, "reauth token is for another subject")
                    else:
                        timer.cancel()
                        timer = loop.call_later(fresh["exp"] - time.time(),
                                                lambda: loop.create_task(self.close(ws, 4401, "token expired")))
                        await ws.send(json.dumps({"type": "authenticated", "expires_at": fresh["exp"],
                                                  "scopes": ["generate"]}))
                elif m["type"] == "generate":
                    task = loop.create_task(self.stream(ws, m["id"], m["max_tokens"]))
                    streams.add(task)
                    task.add_done_callback(streams.discard)
        finally:
            timer.cancel()
            for task in streams:
                task.cancel()

    async def close(self, ws: ServerConnection, code: int, reason: str) -> None:
        self.closed_with.append(code)
        await ws.close(code, reason)

    async def stream(self, ws: ServerConnection, request_id: str, n: int) -> None:
        for seq in range(n):
            await ws.send(json.dumps({"type": "chunk", "id": request_id, "seq": seq, "text": f"{seq} ",
                                      "token_ids": [seq]}))
            await asyncio.sleep(0.05)
        await ws.send(json.dumps({"type": "done", "id": request_id, "finish_reason": "length",
                                  "usage": {"prompt_tokens": 1, "completion_tokens": n}}))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"


@pytest.fixture
async def guard() -> AsyncIterator[GuardServer]:
    fake = GuardServer()
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        fake.port = server.sockets[0].getsockname()[1]
        yield fake


async def test_reauth_keeps_the_connection_and_the_stream_across_several_expiries(guard):
    errors: list[ReauthError] = []
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return mint(0.8)

    async with SeedanceClient(guard.url, token_provider=provider, on_auth_error=errors.append) as client:
        first_expiry = client.expires_at
        stream = client.generate("x", max_tokens=40, resumable=False)  # 2 s: past two and a half tokens
        text = await asyncio.wait_for(stream.collect(), 10)
    assert text == "".join(f"{i} " for i in range(40)) and stream.done.finish_reason == "length"
    assert errors == [] and guard.closed_with == [] and guard.connections == 1 and client.reconnects == 0
    # every token asked for was sent; the last may still be unanswered when the stream ends and the client closes
    assert calls == 1 + len(guard.reauths) and len(guard.reauths) - 1 <= client.reauths <= len(guard.reauths)
    assert client.reauths >= 2
    assert client.expires_at > first_expiry


async def test_a_static_token_with_a_provider_is_used_first(guard):
    first = mint(30)
    async with SeedanceClient(guard.url, token=first, token_provider=lambda: mint(60)) as client:
        assert client.token == first and client.reauths == 0
        assert await asyncio.wait_for(client.generate("x", max_tokens=2).collect(), 5) == "0 1 "


async def test_a_refused_token_is_reported_and_at_expiry_the_client_reconnects_with_a_fresh_one(guard):
    errors: list[ReauthError] = []
    tokens = iter([mint(0.6), mint(5, secret=WRONG_SECRET)])
    provider = lambda: next(tokens, None) or mint(30)  # noqa: E731
    async with SeedanceClient(guard.url, token_provider=provider, on_auth_error=errors.append,
                              backoff_base=0.01) as client:
        for _ in range(200):
            if client.reconnects:
                break
            await asyncio.sleep(0.02)
        assert [e.code for e in errors] == ["unauthorized", "token_expired"]  # it expired before a retry was due
        assert "signature does not verify" in errors[0].message and "reconnecting" in errors[1].message
        assert guard.closed_with == [4401]
        assert client.reconnects == 1 and guard.connections == 2 and client.last_auth_error is errors[-1]
        assert await asyncio.wait_for(client.generate("x", max_tokens=2).collect(), 5) == "0 1 "


async def test_a_provider_that_returns_the_same_token_is_reported_not_sent(guard):
    errors: list[ReauthError] = []
    token = mint(0.6)
    async with SeedanceClient(guard.url, token_provider=lambda: token, on_auth_error=errors.append,
                              reconnect=False):
        await asyncio.sleep(0.7)
    assert errors and errors[0].code == "token_provider" and "no later than" in errors[0].message
    assert guard.reauths == []


async def test_without_a_provider_4401_ends_the_streams_with_token_expired(guard):
    errors: list[ReauthError] = []
    async with SeedanceClient(guard.url, token=mint(0.5), on_auth_error=errors.append) as client:
        stream = client.generate("x", max_tokens=100)
        with pytest.raises(ReauthError) as info:
            await asyncio.wait_for(stream.collect(), 10)
    assert info.value.code == "token_expired" and "no token_provider" in info.value.message
    assert errors == [info.value] and guard.closed_with == [4401] and guard.connections == 1
    assert client.reconnects == 0 and guard.reauths == []


async def test_a_token_for_another_subject_ends_the_streams_with_forbidden(guard):
    tokens = iter([mint(0.6, sub="alice"), mint(30, sub="mallory")])
    async with SeedanceClient(guard.url, token_provider=lambda: next(tokens)) as client:
        stream = client.generate("x", max_tokens=100)
        with pytest.raises(ReauthError) as info:
            await asyncio.wait_for(stream.collect(), 10)
    assert info.value.code == "forbidden" and guard.closed_with == [4403] and client.reconnects == 0
