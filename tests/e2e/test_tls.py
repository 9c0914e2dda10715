"""https:// and wss:// with mutual TLS against the real server process, with real sockets.

The server requires client certificates from the test CA (tls_client_ca), lets in CN=alice only
(tls_allowed_client_cns) and grants certificate-only clients the `generate` scope (tls_client_scopes).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import RunningServer, start_server
from tests.e2e.wire import messages_of
from tests.pki import Issued, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory, client_ssl=pki.client_context(pki.alice), tls_cert=pki.server.cert_path,
                       tls_key=pki.server.key_path, tls_client_ca=pki.ca.cert_path, tls_client_scopes="generate",
                       tls_allowed_client_cns="alice")
    yield srv
    srv.stop()


def raw_request(srv: RunningServer, ctx: ssl.SSLContext) -> tuple[str | None, bytes | str]:
    """(negotiated TLS version or None, the first bytes of the HTTP answer, or the error)."""
    version = None
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            version = tls.version()
            tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return version, tls.recv(64)
    except (ssl.SSLError, OSError) as err:
        return version, f"{type(err).__name__}: {err}"


def test_tls13_with_a_good_client_certificate(tls_server, pki):
    version, answer = raw_request(tls_server, pki.client_context(pki.alice))
    assert version == "TLSv1.3" and answer.startswith(b"HTTP/1.1 200")
    me = httpx.get(f"{tls_server.http}/v1/whoami", verify=tls_server.client_ssl, timeout=10).json()
    assert me["auth"] == "mtls" and me["subject"] == "alice" and me["scopes"] == ["generate"]
    assert me["cert_subject"] == "CN=alice,O=Seedance Tests" and me["scheme"] == "https"


def test_a_tls12_client_is_refused(tls_server, pki):
    version, answer = raw_request(tls_server, pki.client_context(pki.alice, max_version=ssl.TLSVersion.TLSv1_2))
    assert version is None and isinstance(answer, str)  # no handshake, no HTTP
    assert "TLS handshake refused: UNSUPPORTED_PROTOCOL" in tls_server.log()


@pytest.mark.parametrize(("who", "logged"), [
    (None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    ("stranger", "unable to get local issuer certificate"),
    ("expired", "certificate has expired"),
], ids=["no-cert", "wrong-ca", "expired"])
def test_client_certificates_that_do_not_verify_are_refused(tls_server, pki, who, logged):
    client: Issued | None = getattr(pki, who) if who else None
    _, answer = raw_request(tls_server, pki.client_context(client))
    # TLS 1.3: the client finishes its side first, then the server drops the connection: never an HTTP answer
    assert answer == b"" or isinstance(answer, str)
    assert f"TLS handshake refused: {logged}" in tls_server.log()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{tls_server.http}/v1/whoami", verify=pki.client_context(client), timeout=10)


def test_a_verified_certificate_with_a_cn_not_let_in_is_403(tls_server, pki):
    r = httpx.get(f"{tls_server.http}/v1/whoami", verify=pki.client_context(pki.mallory), timeout=10)
    assert r.status_code == 403 and "CN=mallory is not in tls_allowed_client_cns" in r.json()["error"]["message"]


def test_plain_http_is_not_served_on_the_tls_port(tls_server):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/readyz", timeout=5)


async def test_wss_streams_and_certificate_scopes_apply_per_message(tls_server, pki):
    async with connect(tls_server.ws, ssl=pki.client_context(pki.alice), proxy=None, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "a", "prompt": "In the beginning", "max_tokens": 4}))
        await ws.send(json.dumps({"type": "generate", "id": "b", "prompt": "Amen", "max_tokens": 4, "logprobs": 0}))
        done, errors = {}, []
        async with asyncio.timeout(30):
            while len(done) < 2:
                for m in messages_of(await ws.recv()):
                    errors += [m] if m["type"] == "error" else []
                    done.update({m["id"]: m["finish_reason"]} if m["type"] == "done" else {})
    assert done["a"] in ("length", "stop") and done["b"] == "error"
    assert [(e["id"], e["code"]) for e in errors] == [("b", "forbidden")]
