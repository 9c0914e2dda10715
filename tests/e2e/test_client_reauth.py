"""The SDK keeps a long-lived connection past its token's expiry against the real server (JWT on, no leeway).

Tokens live 3 s. A stream is read slowly under credit flow control, so the server-side request is still
running when the first token expires: with a token provider the SDK renews in-band (`reauth`) and the same
connection carries the stream to its end; when a renewal is refused, the server closes with 4401 at expiry
and the SDK reconnects with a fresh token and resumes; without a provider the server closes with 4401 as
it always did, and the stream ends with the SDK's `token_expired` error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from seedance.client import ChunkOut, GenerationStream, ReauthError, SeedanceClient
from tests.e2e.conftest import RunningServer, start_server
from tests.pki import AUDIENCE, ISSUER, SECRET, hs256

TTL_S = 3
CHUNKS = 50
PACE_S = 0.08  # per chunk read: 50 chunks take 4 s, past the first token's expiry
WRONG_SECRET = "not-the-server-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory, jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER,
                       jwt_leeway_s=0, num_kv_blocks=512, resume_grace_s=2)
    yield srv
    srv.stop()


class Provider:
    """Mints a fresh 3-s token per call; signed with the wrong key (so refused) until `refuse_until`."""

    def __init__(self, sub: str) -> None:
        self.sub = sub
        self.calls = 0
        self.refuse_until = 0.0

    def __call__(self) -> str:
        self.calls += 1
        return hs256(WRONG_SECRET if time.time() < self.refuse_until else SECRET, sub=self.sub, ttl=TTL_S)


def client_for(srv: RunningServer, errors: list[ReauthError], **options) -> SeedanceClient:
    # renew 1.2 s ahead rather than the default 10% (0.3 s): room for a busy two-core machine
    return SeedanceClient(srv.ws, credit_window=2, reauth_margin_ratio=0.4, on_auth_error=errors.append,
                          backoff_base=0.02, **options)


async def read_slowly(stream: GenerationStream) -> list[ChunkOut]:
    chunks = []
    async with asyncio.timeout(30):
        async for chunk in stream:
            chunks.append(chunk)
            await asyncio.sleep(PACE_S)
    return chunks


def generate(client: SeedanceClient) -> GenerationStream:
    return client.generate("In the beginning", max_tokens=CHUNKS, ignore_eos=True, temperature=0)


def every_token(chunks: list[ChunkOut]) -> bool:
    """All CHUNKS tokens, in chunks numbered without a gap (a chunk may carry two tokens: with the engine in its
    own process, two steps' frames can arrive in one read and go out in one chunk)."""
    return [c.seq for c in chunks] == list(range(len(chunks))) and sum(len(c.token_ids) for c in chunks) == CHUNKS


def opened(srv: RunningServer, sub: str) -> int:
    return srv.log().count(f"auth=jwt subject={sub}\n")


async def test_reauth_carries_a_stream_on_the_same_connection_past_expiry(secured):
    errors: list[ReauthError] = []
    provider = Provider("rita")
    async with client_for(secured, errors, token_provider=provider) as client:
        first_expiry = client.expires_at
        stream = generate(client)
        chunks = await read_slowly(stream)
        assert time.time() > first_expiry + 0.5  # the stream outlived the token it started under
        assert client.expires_at > first_expiry
    assert every_token(chunks) and stream.done.finish_reason == "length"
    assert errors == [] and client.reconnects == 0 and client.reauths >= 1
    assert provider.calls == 1 + client.reauths
    log = secured.log()
    assert opened(secured, "rita") == 1  # one connection
    assert "websocket reauth: client=127.0.0.1 subject=rita" in log
    assert "subject=rita: closing with 4401" not in log


async def test_a_refused_renewal_ends_in_4401_and_a_reconnect_with_a_fresh_token(secured):
    errors: list[ReauthError] = []
    provider = Provider("sam")
    async with client_for(secured, errors, token_provider=provider) as client:
        provider.refuse_until = client.expires_at  # every renewal of the first token is refused
        stream = generate(client)
        chunks = await read_slowly(stream)
    assert every_token(chunks) and stream.done.finish_reason == "length"
    codes = [e.code for e in errors]
    assert codes[0] == "unauthorized" and "signature" in errors[0].message
    assert codes[-1] == "token_expired" and set(codes) == {"unauthorized", "token_expired"}
    assert client.reconnects == 1 and opened(secured, "sam") == 2
    assert "websocket token expired: client=127.0.0.1 subject=sam: closing with 4401" in secured.log()


async def test_without_a_provider_the_server_closes_with_4401_as_before(secured):
    errors: list[ReauthError] = []
    async with client_for(secured, errors, token=hs256(sub="tess", ttl=TTL_S)) as client:
        expires_at = client.expires_at
        stream = generate(client)
        with pytest.raises(ReauthError) as info:
            await read_slowly(stream)
    assert info.value.code == "token_expired" and "4401 (token expired)" in info.value.message
    assert time.time() >= expires_at - 0.5 and errors == [info.value] and client.reconnects == 0
    assert "websocket token expired: client=127.0.0.1 subject=tess: closing with 4401" in secured.log()
    assert "subject=tess until" not in secured.log()  # no reauth was sent
