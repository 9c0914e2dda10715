"""Authentication, scopes, Origin, limits and the start-up policy against the real server process.

One JWT-protected server (HS256, audience, issuer, no leeway, small limits) serves this module; each test
talks from its own loopback source address (127.0.0.x) so per-IP limits and rates do not mix. The open
loopback default is checked on the shared `server` fixture.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from seedance.protocol import CloseCode
from tests.e2e.conftest import RunningServer, free_port, start_server
from tests.e2e.wire import messages_of, until
from tests.pki import AUDIENCE, ISSUER, SECRET, claims, hmac_token, hs256, unsigned_token

TIMEOUT = 30
ALL = "generate logprobs priority:high admin"


@pytest.fixture(scope="module")
def secured(tmp_path_factory, ws_stack) -> Iterator[RunningServer]:
    """Every test on it runs on both /v1/stream stacks (tests/e2e/conftest.py WS_STACKS)."""
    srv = start_server(tmp_path_factory, ws_stack=ws_stack, jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER,
                       jwt_leeway_s=0, allowed_origins="https://app.example", max_connections_per_ip=3,
                       max_connections_per_token=2, ws_messages_per_s=5, ws_message_burst=10,
                       http_requests_per_s=20, http_request_burst=30, ticket_ttl_s=5, max_prompt_tokens=32,
                       max_tokens_limit=64, num_kv_blocks=512)
    yield srv
    srv.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ws_connect(srv: RunningServer, src: str, token: str | None = None, query: str = "", **kw):
    headers = {**bearer(token)} if token else {}
    headers.update(kw.pop("headers", {}))
    return connect(srv.ws + query, additional_headers=headers, local_addr=(src, 0), proxy=None, open_timeout=10,
                   **kw)


def http(srv: RunningServer, src: str) -> httpx.Client:
    return httpx.Client(base_url=srv.http, transport=httpx.HTTPTransport(local_address=src), timeout=TIMEOUT)


async def upgrade_refusal(srv: RunningServer, src: str, **kw) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(srv, src, **kw):
            pass
    return info.value


def body_of(err: InvalidStatus) -> dict:
    return json.loads(err.response.body)["error"]


async def ping_pong(ws, ts: float = 1.0) -> None:
    await ws.send(json.dumps({"type": "ping", "ts": ts}))
    got = await until(ws, lambda m: m["type"] == "pong")
    assert got[-1]["ts"] == ts


# ---------------------------------------------------------------------------------------------- WebSocket auth


def auth_refusals(srv: RunningServer, src: str) -> float:
    """seedance_auth_refusals_total summed over its codes, read with an admin token."""
    text = http(srv, src).get("/metrics", headers=bearer(hs256(scope="admin"))).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("seedance_auth_refusals_total{"))


@pytest.mark.parametrize("token", [
    hmac_token(claims(), b"no key is needed for this one", kid=1),
    hmac_token(claims(), SECRET.encode(), kid={"nested": [1]}),
    hmac_token(claims(exp=10**400), SECRET.encode()),
    hmac_token(claims(exp=str(int(time.time()) + 3600)), SECRET.encode()),
], ids=["kid-int", "kid-object", "exp-10^400", "exp-numeric-string"])
def test_forged_tokens_get_the_documented_401_and_are_counted(secured, token):
    src = "127.0.0.25"
    before = auth_refusals(secured, src)
    reply = http(secured, src).post("/v1/completions", json={"prompt": "In", "max_tokens": 1}, headers=bearer(token))
    assert reply.status_code == 401 and reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"]["code"] == "unauthorized"
    assert reply.headers["WWW-Authenticate"].startswith('Bearer realm="seedance", error="invalid_token"')
    assert auth_refusals(secured, src) == before + 1
    assert "Traceback" not in secured.log()


async def test_websocket_upgrade_without_credentials_is_401(secured):
    err = await upgrade_refusal(secured, "127.0.0.11")
    assert err.response.status_code == 401
    assert err.response.headers["WWW-Authenticate"].startswith('Bearer realm="seedance"')
    assert body_of(err)["code"] == "unauthorized" and "no credentials" in body_of(err)["message"]


@pytest.mark.parametrize(("token", "reason"), [
    (hs256(ttl=-30), "token expired"),
    (hs256(aud="another-service", ttl=3600), "audience"),
    (hs256(iss="https://evil.test", ttl=3600), "issuer"),
    (hs256("a-completely-different-secret-32-bytes!", ttl=3600), "signature does not verify"),
    (unsigned_token(claims()), "'none' is not accepted"),
    ("not-a-jwt", "malformed token"),
    (hs256(nbf=int(time.time()) + 3600), "not yet valid"),
], ids=["expired", "audience", "issuer", "wrong-key", "alg-none", "malformed", "nbf"])
async def test_bad_tokens_are_refused_before_the_upgrade(secured, token, reason):
    err = await upgrade_refusal(secured, "127.0.0.12", token=token)
    assert err.response.status_code == 401
    assert reason in body_of(err)["message"]
    assert 'error="invalid_token"' in err.response.headers["WWW-Authenticate"]
    assert f"from 127.0.0.12: 401 unauthorized: {body_of(err)['message']}" in secured.log()  # logged, with reason


async def test_bearer_header_streams_and_whoami_reports_the_principal(secured):
    token = hs256(sub="carol", scope="generate")
    async with ws_connect(secured, "127.0.0.13", token) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "a", "prompt": "And God said", "max_tokens": 5}))
        got = await until(ws, lambda m: m["type"] == "done")
        assert got[-1]["finish_reason"] in ("length", "stop") and not [m for m in got if m["type"] == "error"]
    with http(secured, "127.0.0.13") as client:
        me = client.get("/v1/whoami", headers={**bearer(token), "X-Forwarded-For": "203.0.113.9"}).json()
    assert me["auth"] == "jwt" and me["subject"] == "carol" and me["scopes"] == ["generate"]
    assert me["client_ip"] == "127.0.0.13"  # no trusted proxies: X-Forwarded-For is ignored
    assert "websocket open: client=127.0.0.13 auth=jwt subject=carol" in secured.log()


async def test_token_in_the_websocket_subprotocol(secured):
    """The browser path: new WebSocket(url, ["seedance.v1", "bearer." + jwt])."""
    token = hs256(sub="dave")
    async with ws_connect(secured, "127.0.0.14", subprotocols=["seedance.v1", f"bearer.{token}"]) as ws:
        assert ws.subprotocol == "seedance.v1"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "seedance.v1"  # the token is never echoed
        await ping_pong(ws)
    err = await upgrade_refusal(secured, "127.0.0.14", subprotocols=[f"bearer.{token}"])
    assert err.response.status_code == 400 and "seedance.v1" in body_of(err)["message"]
    err = await upgrade_refusal(secured, "127.0.0.14", subprotocols=["seedance.v1", f"bearer.{hs256(ttl=-5)}"])
    assert err.response.status_code == 401 and body_of(err)["message"] == "token expired"


async def test_one_time_query_ticket(secured):
    token = hs256(sub="erin")
    with http(secured, "127.0.0.15") as client:
        assert client.post("/v1/tickets").status_code == 401
        issued = client.post("/v1/tickets", headers=bearer(token))
        assert issued.status_code == 201
        ticket = issued.json()["ticket"]
        assert issued.json()["expires_in"] == 5 and issued.json()["url"] == f"/v1/stream?ticket={ticket}"
        stolen = client.post("/v1/tickets", headers=bearer(token)).json()["ticket"]
    async with ws_connect(secured, "127.0.0.15", query=f"?ticket={ticket}") as ws:
        await ping_pong(ws)
    err = await upgrade_refusal(secured, "127.0.0.15", query=f"?ticket={ticket}")
    assert err.response.status_code == 401 and "unknown, used or expired" in body_of(err)["message"]
    err = await upgrade_refusal(secured, "127.0.0.16", query=f"?ticket={stolen}")
    assert err.response.status_code == 401 and "another client address" in body_of(err)["message"]


async def test_origin_allow_list(secured):
    token = hs256()
    async with ws_connect(secured, "127.0.0.17", token, origin="https://app.example") as ws:
        await ping_pong(ws)
    async with ws_connect(secured, "127.0.0.17", token, origin=f"http://127.0.0.1:{secured.port}") as ws:
        await ping_pong(ws)  # the server's own origin (its demo page)
    for origin in ("https://evil.example", "http://app.example", "null"):
        err = await upgrade_refusal(secured, "127.0.0.17", token=token, headers={"Origin": origin})
        assert err.response.status_code == 403 and body_of(err)["code"] == "origin_not_allowed", origin
    with http(secured, "127.0.0.17") as client:  # a cross-site POST is refused the same way
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                        headers={**bearer(token), "Origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"


# ---------------------------------------------------------------------------------------------- scopes


async def test_scopes_are_checked_per_message_and_the_connection_stays(secured):
    async with ws_connect(secured, "127.0.0.18", hs256(sub="frank", scope="generate")) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "lp", "prompt": "And", "max_tokens": 3, "logprobs": 1}))
        got = await until(ws, lambda m: m["type"] == "done")
        assert [(m["type"], m.get("code")) for m in got] == [("error", "forbidden"), ("done", None)]
        assert "'logprobs'" in got[0]["message"] and got[1]["finish_reason"] == "error"
        await ws.send(json.dumps({"type": "generate", "id": "hi", "prompt": "And", "max_tokens": 3, "priority": -1}))
        got = await until(ws, lambda m: m["type"] == "done")
        assert got[0]["code"] == "forbidden" and "'priority:high'" in got[0]["message"]
        await ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "And", "max_tokens": 60,
                                  "ignore_eos": True}))
        await ws.send(json.dumps({"type": "priority", "id": "long", "priority": -5}))
        await ws.send(json.dumps({"type": "cancel", "id": "long"}))
        got = await until(ws, lambda m: m["type"] == "done" and m["id"] == "long")
        errors = [m for m in got if m["type"] == "error"]
        assert errors == [{"type": "error", "id": "long", "code": "forbidden",
                           "message": "priority needs scope 'priority:high', which this connection's token does "
                                      "not have"}]
        assert got[-1]["finish_reason"] == "cancelled"  # the connection kept working throughout


async def test_http_routes_and_options_need_their_scopes(secured):
    with http(secured, "127.0.0.19") as client:
        r = client.post("/v1/completions", json={"prompt": "And", "max_tokens": 2})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        r = client.post("/v1/completions", json={"prompt": "And", "max_tokens": 2}, headers=bearer(hs256(ttl=-1)))
        assert r.status_code == 401 and r.json()["error"]["message"] == "token expired"
        r = client.post("/v1/completions", json={"prompt": "And", "max_tokens": 2},
                        headers=bearer(hs256(scope="logprobs")))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert 'error="insufficient_scope", scope="generate"' in r.headers["WWW-Authenticate"]
        r = client.post("/v1/chat/completions", headers=bearer(hs256(scope="generate")),
                        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "logprobs": True})
        assert r.status_code == 403 and "logprobs needs scope 'logprobs'" in r.json()["error"]["message"]
        r = client.post("/v1/jobs", headers=bearer(hs256()), json={"prompt": "And", "priority": -1})
        assert r.status_code == 403 and "'priority:high'" in r.json()["error"]["message"]
        assert client.get("/stats", headers=bearer(hs256(scope="generate"))).status_code == 403
        assert client.get("/stats", headers=bearer(hs256(scope="admin"))).json()["num_kv_blocks"] == 512
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200  # public


def test_sse_streams_with_a_bearer_token(secured):
    body = {"prompt": "In the beginning", "max_tokens": 6, "stream": True, "temperature": 0, "ignore_eos": True,
            "logprobs": 1}
    events = []
    with http(secured, "127.0.0.20") as client, \
            client.stream("POST", "/v1/completions", json=body, headers=bearer(hs256(scope=ALL))) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert sum(len(c["choices"][0]["logprobs"]["tokens"]) for c in chunks if c["choices"][0]["logprobs"]) == 6


def test_polling_jobs_belong_to_their_creator(secured):
    alice, bob = bearer(hs256(sub="alice")), bearer(hs256(sub="bob"))
    with http(secured, "127.0.0.21") as client:
        assert client.post("/v1/jobs", json={"prompt": "And", "max_tokens": 2}).status_code == 401
        created = client.post("/v1/jobs", json={"prompt": "And", "max_tokens": 4}, headers=alice)
        assert created.status_code == 202
        job = created.json()["id"]
        assert client.get(f"/v1/jobs/{job}", headers=bob).status_code == 404
        assert client.delete(f"/v1/jobs/{job}", headers=bob).status_code == 404
        reply = client.get(f"/v1/jobs/{job}", params={"wait_ms": 5000, "after": -1}, headers=alice)
        assert reply.status_code == 200 and reply.json()["id"] == job


# ---------------------------------------------------------------------------------------------- expiry and reauth


async def test_a_token_that_expires_closes_the_connection_with_4401(secured):
    token = hs256(sub="gina", ttl=2)
    exp = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "==="))["exp"]
    async with ws_connect(secured, "127.0.0.22", token) as ws:
        await ping_pong(ws)
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        closed_at = time.time()
    assert info.value.rcvd.code == CloseCode.UNAUTHORIZED and info.value.rcvd.reason == "token expired"
    assert exp - 0.5 <= closed_at <= exp + 3  # at expiry, not before


async def test_reauth_renews_the_token_scopes_and_deadline(secured):
    async with ws_connect(secured, "127.0.0.23", hs256(sub="hank", ttl=2, scope="generate")) as ws:
        await ws.send(json.dumps({"type": "reauth", "token": hs256(sub="hank", ttl=60, scope="generate logprobs")}))
        got = await until(ws, lambda m: m["type"] in ("authenticated", "error"))
        assert got[-1]["type"] == "authenticated" and got[-1]["scopes"] == ["generate", "logprobs"]
        assert got[-1]["expires_at"] > time.time() + 50
        await asyncio.sleep(3)  # past the first token's expiry
        await ping_pong(ws, 2.0)  # still open
        await ws.send(json.dumps({"type": "generate", "id": "lp", "prompt": "And", "max_tokens": 2, "logprobs": 0}))
        got = await until(ws, lambda m: m["type"] == "done")
        assert got[-1]["finish_reason"] != "error"  # the new scope applies
        # a bad token is refused in-band and the connection keeps its current one
        await ws.send(json.dumps({"type": "reauth", "token": hs256("wrong-secret-wrong-secret-wrong-secret")}))
        got = await until(ws, lambda m: m["type"] == "error")
        assert got[-1]["code"] == "unauthorized" and "signature" in got[-1]["message"]
        await ping_pong(ws, 3.0)
        # another subject's token: this connection is not theirs to take over
        await ws.send(json.dumps({"type": "reauth", "token": hs256(sub="mallory", ttl=60)}))
        with pytest.raises(ConnectionClosed) as info:
            await until(ws, lambda m: False, timeout=10)
    assert info.value.rcvd.code == CloseCode.FORBIDDEN


# ---------------------------------------------------------------------------------------------- limits


async def test_connections_per_ip_limit_gives_429_before_the_upgrade(secured):
    token = hs256(sub="ivan", scope="generate")
    src = "127.0.0.24"
    async with ws_connect(secured, src, token), ws_connect(secured, src, token):
        async with ws_connect(secured, src, hs256(sub="ivan2")) as third:
            err = await upgrade_refusal(secured, src, token=hs256(sub="ivan3"))
            assert err.response.status_code == 429 and body_of(err)["code"] == "too_many_connections"
            assert int(err.response.headers["Retry-After"]) >= 1
            assert "from 127.0.0.24 (limit 3)" in body_of(err)["message"]
            await third.close()
        await asyncio.sleep(0.3)
        async with ws_connect(secured, src, hs256(sub="ivan3")) as again:  # a slot came free
            await ping_pong(again)


async def test_connections_per_token_limit(secured):
    token = hs256(sub="judy")
    async with ws_connect(secured, "127.0.0.25", token), ws_connect(secured, "127.0.0.26", token):
        err = await upgrade_refusal(secured, "127.0.0.27", token=hs256(sub="judy"))  # same subject, new token
        assert err.response.status_code == 429 and "for this token (limit 2)" in body_of(err)["message"]


async def test_message_rate_limit_closes_with_1008(secured):
    async with ws_connect(secured, "127.0.0.28", hs256(sub="ken")) as ws:
        for i in range(30):
            await ws.send(json.dumps({"type": "ping", "ts": i}))
        seen = []
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    seen += messages_of(await ws.recv())
    assert info.value.rcvd.code == CloseCode.POLICY_VIOLATION
    assert "message rate limit exceeded (5/s, burst 10)" in info.value.rcvd.reason
    assert 10 <= sum(m["type"] == "pong" for m in seen) < 30
    assert seen[-1]["type"] == "error" and seen[-1]["code"] == "rate_limited"


def test_http_request_rate_limit_gives_429_with_retry_after(secured):
    token = bearer(hs256(sub="liz"))
    with http(secured, "127.0.0.29") as client:
        codes = [client.get("/v1/models", headers=token) for _ in range(60)]
    refused = [r for r in codes if r.status_code == 429]
    assert codes[0].status_code == 200 and refused
    assert refused[0].json()["error"]["code"] == "rate_limited" and int(refused[0].headers["Retry-After"]) >= 1


async def test_prompt_and_max_tokens_limits(secured):
    async with ws_connect(secured, "127.0.0.30", hs256(sub="mo")) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "big", "prompt": "And God said " * 40, "max_tokens": 2}))
        got = await until(ws, lambda m: m["type"] == "done")
        assert got[0]["code"] == "invalid_request" and "the limit is 32" in got[0]["message"]
    with http(secured, "127.0.0.30") as client:
        r = client.post("/v1/completions", json={"prompt": "And", "max_tokens": 65}, headers=bearer(hs256()))
        assert r.status_code == 400 and "exceeds the limit 64" in r.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------- defaults


async def test_open_loopback_default_checks_origin_and_host(stack_server):
    """No auth configured, loopback: the demo page's own origin works; other origins and DNS-rebinding Host
    names do not (on both /v1/stream stacks)."""
    server = stack_server
    async with connect(server.ws, origin=f"http://localhost:{server.port}", proxy=None) as ws:
        await ping_pong(ws)
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.ws, origin="https://evil.example", proxy=None):
            pass
    assert info.value.response.status_code == 403
    r = httpx.get(f"{server.http}/v1/models", headers={"Host": f"rebound.evil.example:{server.port}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    for host in ("localhost", "app.localhost", "127.0.0.1", "[::1]", "myhost"):
        assert httpx.get(f"{server.http}/v1/models", headers={"Host": f"{host}:{server.port}"}).status_code == 200


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without authentication"),
    (["--jwt-secret", "short"], "at least 32 bytes"),
    (["--jwt-secret", SECRET, "--allowed-origins", "*"], "insecure_any_origin"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "cannot load"),
])
def test_unsafe_start_is_refused_with_a_clear_message(args, message):
    proc = subprocess.run([sys.executable, "-m", "seedance.cli", "serve", "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_sessions_belong_to_their_caller(secured):
    """Knowing another user's session name gives nothing: the same name is a different session per caller."""
    turn = {"type": "generate", "id": "t0", "session": "shared-name", "prompt": "And God said", "max_tokens": 8,
            "temperature": 0}

    async def run(src: str, sub: str, message: dict) -> list[dict]:
        async with ws_connect(secured, src, hs256(sub=sub)) as ws:
            await ws.send(json.dumps(message))
            out = []
            async with asyncio.timeout(30):
                while not any(m["type"] in ("done", "error") for m in out):
                    out += messages_of(await ws.recv())
            return out

    alice = await run("127.0.0.20", "alice-s", turn)
    assert any(m["type"] == "done" and m["finish_reason"] == "length" for m in alice)
    # bob asks to replay alice's turn by its session name: it does not exist for him
    bob = await run("127.0.0.21", "bob-s", {"type": "resume", "session": "shared-name", "id": "t0"})
    assert [m["code"] for m in bob if m["type"] == "error"] == ["unknown_id"]
    # and his first turn in a session of the same name starts from an empty history
    bob_turn = await run("127.0.0.21", "bob-s", turn)
    done = next(m for m in bob_turn if m["type"] == "done")
    alice_done = next(m for m in alice if m["type"] == "done")
    assert done["usage"]["prompt_tokens"] == alice_done["usage"]["prompt_tokens"]
    # while alice's own resume works
    again = await run("127.0.0.20", "alice-s", {"type": "resume", "session": "shared-name", "id": "t0"})
    assert any(m["type"] == "done" for m in again)


async def test_realtime_endpoint_takes_the_same_auth_and_scopes(secured):
    """/v1/realtime: the openai SDK's bearer api_key authenticates it; no token is 401, no `generate` scope 403,
    both before the upgrade."""
    from openai import AsyncOpenAI

    src = "127.0.0.61"
    with http(secured, src) as client:
        assert client.get("/v1/realtime").status_code == 401
        assert client.get("/v1/realtime", headers=bearer(hs256(scope="logprobs"))).status_code == 403
    sdk = AsyncOpenAI(base_url=f"{secured.http}/v1", api_key=hs256(sub="rt-user"))
    async with sdk.realtime.connect(model="seedance-tiny",
                                    websocket_connection_options={"local_addr": (src, 0)}) as conn:
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Amen"}]})
        await conn.response.create(response={"max_output_tokens": 4})
        async with asyncio.timeout(TIMEOUT):
            async for event in conn:
                if event.type == "response.done":
                    break
    assert event.response.status in ("completed", "incomplete") and event.response.usage.output_tokens >= 1
    assert f"client={src} auth=jwt subject=rt-user" in secured.log()
