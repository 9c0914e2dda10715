"""docs/deploy/nginx.conf, run by a real nginx on loopback in front of the real server.

The documented site config is used as written, with the listen ports, the upstream port and the
certificate paths substituted (each substitution must match exactly once, so the doc cannot drift from
what is tested) and the WebSocket read timeout shortened so that a test can outwait it. nginx runs as a
subprocess with a generated main config in a temporary directory (tests/e2e/nginx.py).
Clients connect from 127.0.0.2 / 127.0.0.3, nginx reaches the server from 127.0.0.1, which the server
trusts as a proxy: the server must see the clients' own addresses.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from seedance.server.http.config import ServerConfig
from tests.e2e.conftest import RunningServer, free_port, start_server
from tests.e2e.nginx import DEPLOY, Nginx, render, requires_nginx, running_nginx
from tests.e2e.wire import messages_of, until
from tests.pki import AUDIENCE, ISSUER, SECRET, Pki, hs256, make_pki

DOC = DEPLOY / "nginx.conf"
pytestmark = requires_nginx
WS_READ_TIMEOUT_S = 3  # replaces the documented 120 s; the server pings every 0.5 s here


def render_site(port: int, redirect_port: int, upstream: int, pki: Pki) -> str:
    return render(DOC, [
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{redirect_port};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};"),
        ("ssl_certificate     /etc/ssl/seedance/fullchain.pem;", f"ssl_certificate     {pki.server.cert_path};"),
        ("ssl_certificate_key /etc/ssl/seedance/privkey.pem;", f"ssl_certificate_key {pki.server.key_path};"),
        ("proxy_read_timeout 120s;", f"proxy_read_timeout {WS_READ_TIMEOUT_S}s;"),
    ])


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory, jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER,
                       trusted_proxies="127.0.0.1", heartbeat_interval_s=0.5, max_connections_per_ip=1)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def redirect_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory, backend, pki, redirect_port) -> Iterator[Nginx]:
    port = free_port()
    with running_nginx(tmp_path_factory.mktemp("nginx"), render_site(port, redirect_port, backend.port, pki),
                       port) as proxy:
        yield proxy


def client(pki: Pki, src: str, base_url: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=src, verify=pki.client_context())
    return httpx.Client(base_url=base_url, transport=transport, timeout=30)


def https(nginx: Nginx) -> str:
    return f"https://127.0.0.1:{nginx.port}"


def ws_through(nginx: Nginx, pki: Pki, src: str, token: str, **kw):
    return connect(f"wss://127.0.0.1:{nginx.port}/v1/stream", ssl=pki.client_context(), local_addr=(src, 0),
                   proxy=None, open_timeout=10, additional_headers={"Authorization": f"Bearer {token}"}, **kw)


def test_documented_timeouts_outlast_the_heartbeat_and_the_long_poll():
    text = DOC.read_text()
    websocket = re.search(r"location = /v1/stream \{(.*?)\n    \}", text, re.S).group(1)
    streaming = re.search(r"location /v1/ \{(.*?)\n    \}", text, re.S).group(1)
    defaults = ServerConfig()
    ws_read = int(re.search(r"proxy_read_timeout (\d+)s;", websocket).group(1))
    assert ws_read > 2 * defaults.heartbeat_interval_s  # an idle stream sees a ping well within it
    assert "proxy_set_header Upgrade $http_upgrade;" in websocket
    assert "proxy_set_header Connection $connection_upgrade;" in websocket
    assert int(re.search(r"proxy_read_timeout (\d+)s;", streaming).group(1)) > defaults.poll_max_wait_ms / 1000
    assert "proxy_buffering off;" in streaming
    for block in (websocket, streaming):  # a location with its own proxy_set_header inherits none
        assert "X-Forwarded-For $remote_addr;" in block and "X-Forwarded-Proto $scheme;" in block


async def test_websocket_through_nginx_streams_and_the_server_sees_the_client_ip(nginx, backend, pki):
    async with ws_through(nginx, pki, "127.0.0.2", hs256(sub="web"), ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "a", "prompt": "In the beginning", "max_tokens": 8}))
        *before, done = await until(ws, lambda m: m["type"] == "done")
        text = "".join(m["text"] for m in before if m["type"] == "chunk")
        assert done["finish_reason"] in ("length", "stop") and text
        assert "websocket open: client=127.0.0.2 (via 127.0.0.1) auth=jwt subject=web" in backend.log()
        # max_connections_per_ip is 1: it counts the real clients, not nginx's one address
        with pytest.raises(InvalidStatus) as info:
            async with ws_through(nginx, pki, "127.0.0.2", hs256(sub="web2")):
                pass
        assert info.value.response.status_code == 429
        async with ws_through(nginx, pki, "127.0.0.3", hs256(sub="web3")) as other:
            await other.send(json.dumps({"type": "ping", "ts": 7}))
            assert messages_of(await asyncio.wait_for(other.recv(), 10))[0] == {"type": "pong", "ts": 7}
        # idle for longer than nginx's read timeout: the server's heartbeat pings keep the tunnel open
        await asyncio.sleep(WS_READ_TIMEOUT_S + 1.5)
        await ws.send(json.dumps({"type": "ping", "ts": 8}))
        assert messages_of(await asyncio.wait_for(ws.recv(), 10))[0] == {"type": "pong", "ts": 8}


def test_sse_through_nginx_is_unbuffered_and_the_server_sees_the_client_ip(nginx, pki):
    body = {"prompt": "And God said", "max_tokens": 400, "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {hs256(sub='sse')}"}
    with client(pki, "127.0.0.2", https(nginx)) as sse, client(pki, "127.0.0.3", https(nginx)) as other:
        with sse.stream("POST", "/v1/completions", json=body, headers=headers) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["object"] == "text_completion"
            # the first event is here while the generation runs: nothing sat in a proxy buffer. Meanwhile the
            # stream holds 127.0.0.2's one connection slot, and only 127.0.0.2's:
            assert sse.get("/v1/whoami", headers=headers).status_code == 429
            me = other.get("/v1/whoami", headers=headers).json()
            assert (me["client_ip"], me["scheme"], me["peer"]) == ("127.0.0.3", "https", "127.0.0.1")
            count = 1 + sum(1 for line in lines if line.startswith("data: ") and line != "data: [DONE]")
        assert count > 10  # many events, one per engine step, not one buffered blob
        me = sse.get("/v1/whoami", headers=headers).json()
        assert me["client_ip"] == "127.0.0.2"


def test_spoofed_forwarded_headers_are_ignored(nginx, backend, pki):
    spoof = {"Authorization": f"Bearer {hs256(sub='spoof')}", "X-Forwarded-For": "203.0.113.7",
             "X-Forwarded-Proto": "https"}
    with client(pki, "127.0.0.4", backend.http) as direct:  # straight to the server: an untrusted peer
        me = direct.get("/v1/whoami", headers=spoof).json()
    assert (me["client_ip"], me["scheme"]) == ("127.0.0.4", "http")
    with client(pki, "127.0.0.4", https(nginx)) as proxied:  # through nginx: it overwrites the header
        me = proxied.get("/v1/whoami", headers=spoof).json()
    assert (me["client_ip"], me["scheme"]) == ("127.0.0.4", "https")


def test_plain_http_redirects_to_https(nginx, pki, redirect_port):
    with client(pki, "127.0.0.5", f"http://127.0.0.1:{redirect_port}") as plain:
        r = plain.get("/v1/models")
    assert r.status_code == 301 and r.headers["Location"].startswith("https://127.0.0.1")
