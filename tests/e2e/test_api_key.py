"""`--api-key` / SEEDANCE_API_KEY against the real server: a shared bearer key on HTTP (also through the real
`openai` SDK) and on the WebSocket (header and subprotocol), beside JWT; `/health`; the auth-off notice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import RunningServer, start_server
from tests.e2e.wire import until
from tests.pki import AUDIENCE, ISSUER, SECRET, hs256

KEYS = ("sk-seedance-first-key", "sk-seedance-second-key")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[RunningServer]:
    """Two API keys (the env var's comma form) and a JWT secret on one server; one embedding request at a time."""
    srv = start_server(tmp_path_factory, api_key=",".join(KEYS), jwt_secret=SECRET, jwt_audience=AUDIENCE,
                       jwt_issuer=ISSUER, num_kv_blocks=256, max_pending_embeddings=1)
    yield srv
    srv.stop()


def sdk(srv: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.http}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.mark.parametrize("key", KEYS)
def test_each_key_works_through_the_openai_sdk(keyed, key):
    with sdk(keyed, key) as client:
        reply = client.chat.completions.create(model="seedance-tiny", max_tokens=4,
                                               messages=[{"role": "user", "content": "Blessed are"}])
        assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.completion_tokens >= 1
        assert [m.id for m in client.models.list().data]


def test_a_wrong_key_is_refused_with_401(keyed):
    with sdk(keyed, "sk-not-the-key") as client, pytest.raises(Exception) as info:  # the status is asserted
        client.completions.create(model="seedance-tiny", prompt="In", max_tokens=2)
    assert getattr(info.value, "status_code", None) == 401
    reply = httpx.post(f"{keyed.http}/v1/completions", json={"prompt": "In", "max_tokens": 2},
                       headers={"Authorization": f"Bearer {KEYS[0]}x"}, timeout=30)
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "unauthorized"
    assert reply.headers["WWW-Authenticate"].startswith('Bearer realm="seedance"')
    assert httpx.post(f"{keyed.http}/v1/completions", json={"prompt": "In"}, timeout=30).status_code == 401
    assert KEYS[0] not in keyed.log()  # a key never reaches the log


def test_jwt_still_works_beside_the_keys(keyed):
    me = httpx.get(f"{keyed.http}/v1/whoami", headers={"Authorization": f"Bearer {hs256(sub='zoe')}"}, timeout=30)
    assert me.status_code == 200 and me.json()["auth"] == "jwt" and me.json()["subject"] == "zoe"
    me = httpx.get(f"{keyed.http}/v1/whoami", headers={"Authorization": f"Bearer {KEYS[1]}"}, timeout=30).json()
    assert me["auth"] == "api_key" and "admin" in me["scopes"] and KEYS[1] not in json.dumps(me)


async def _stream_one(ws) -> None:
    await ws.send(json.dumps({"type": "generate", "id": "a", "prompt": "And God said", "max_tokens": 3}))
    got = await until(ws, lambda m: m["type"] == "done")
    assert not [m for m in got if m["type"] == "error"] and got[-1]["usage"]["completion_tokens"] >= 1


async def test_websocket_takes_the_key_in_the_header_and_the_subprotocol(keyed):
    async with connect(keyed.ws, additional_headers={"Authorization": f"Bearer {KEYS[0]}"}, proxy=None) as ws:
        await _stream_one(ws)
    async with connect(keyed.ws, subprotocols=["seedance.v1", f"bearer.{KEYS[1]}"], proxy=None) as ws:
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "seedance.v1"  # the key is never echoed
        await _stream_one(ws)


@pytest.mark.parametrize("how", ["header", "subprotocol", "none"])
async def test_websocket_refuses_a_wrong_or_missing_key_before_the_upgrade(keyed, how):
    kw = {"header": {"additional_headers": {"Authorization": "Bearer sk-wrong"}},
          "subprotocol": {"subprotocols": ["seedance.v1", "bearer.sk-wrong"]}, "none": {}}[how]
    with pytest.raises(InvalidStatus) as info:
        async with connect(keyed.ws, proxy=None, **kw):
            pass
    assert info.value.response.status_code == 401
    assert json.loads(info.value.response.body)["error"]["code"] == "unauthorized"


def test_health_is_readiness_and_public(keyed, server):
    for srv in (keyed, server):
        reply = httpx.get(f"{srv.http}/health", timeout=30)
        assert reply.status_code == 200 and reply.json()["status"] == "ready"


def test_auth_off_says_so_at_start_up_and_the_key_turns_it_on(server, keyed):
    notice = "authentication is off (loopback only): any Authorization header"
    assert sum(notice in line for line in server.log().splitlines()) == 1
    assert notice not in keyed.log() and "API key (2)" in keyed.log()


async def test_reauth_takes_an_api_key(keyed):
    async with connect(keyed.ws, additional_headers={"Authorization": f"Bearer {KEYS[0]}"}, proxy=None) as ws:
        await ws.send(json.dumps({"type": "reauth", "token": "sk-wrong"}))
        got = await until(ws, lambda m: m["type"] == "error")
        assert got[-1]["code"] == "unauthorized"
        await ws.send(json.dumps({"type": "reauth", "token": KEYS[0]}))
        got = await until(ws, lambda m: m["type"] == "authenticated")
        assert got[-1]["expires_at"] is None and "admin" in got[-1]["scopes"]
        await _stream_one(ws)


async def test_embeddings_beyond_max_pending_get_429_and_need_the_key(keyed):
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    body = {"input": ["And God said, Let there be light: and there was light. " * 8] * 64}
    async with httpx.AsyncClient(base_url=keyed.http, timeout=120) as client:
        assert (await client.post("/v1/embeddings", json={"input": "a"})).status_code == 401
        replies = await asyncio.gather(*(client.post("/v1/embeddings", json=body, headers=headers) for _ in range(3)))
    codes = sorted(r.status_code for r in replies)
    assert codes[0] == 200 and 429 in codes, codes
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1" and refused.json()["error"]["code"] == "overloaded"
    assert len(next(r for r in replies if r.status_code == 200).json()["data"]) == 64
