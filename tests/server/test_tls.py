"""The server's TLS context with real handshakes on loopback: versions, ciphers, client certificates.

(tests/e2e/test_tls.py repeats the central cases against the real server process.)
"""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from seedance.server.http.tls import build_server_context, common_name, subject_of
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[dict | str, bytes | str]:
    """One connection on loopback: (what the server saw, or its handshake error; what the client read, or
    its error)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    server_side: list[dict | str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                server_side.append({"version": tls.version(), "cipher": tls.cipher()[0],
                                    "subject": subject_of(tls.getpeercert())})
                tls.sendall(b"hello")
        except (ssl.SSLError, OSError) as err:
            server_side.append(f"{type(err).__name__}: {err}")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            client: bytes | str = tls.recv(5)
    except (ssl.SSLError, OSError) as err:
        client = f"{type(err).__name__}: {err}"
    thread.join(10)
    listener.close()
    return server_side[0], client


def ctx(pki: Pki, client_ca: bool = False, min_version: str = "1.3") -> ssl.SSLContext:
    return build_server_context(str(pki.server.cert_path), str(pki.server.key_path),
                                str(pki.ca.cert_path) if client_ca else None, min_version)


def test_tls13_is_negotiated_by_default(pki):
    server, client = handshake(ctx(pki), pki.client_context())
    assert client == b"hello" and server["version"] == "TLSv1.3" and server["subject"] is None


def test_a_tls12_client_is_refused_by_default(pki):
    server, client = handshake(ctx(pki), pki.client_context(max_version=ssl.TLSVersion.TLSv1_2))
    assert "UNSUPPORTED_PROTOCOL" in server and "ALERT_PROTOCOL_VERSION" in client


def test_tls12_when_explicitly_allowed_uses_forward_secret_aead_only(pki):
    server, client = handshake(ctx(pki, min_version="1.2"), pki.client_context(max_version=ssl.TLSVersion.TLSv1_2))
    assert client == b"hello" and server["version"] == "TLSv1.2"
    assert server["cipher"].startswith("ECDHE-") and ("GCM" in server["cipher"] or "CHACHA20" in server["cipher"])
    # a client offering only CBC suites (which TLS 1.2 servers used to accept) finds nothing in common
    cbc = pki.client_context(max_version=ssl.TLSVersion.TLSv1_2,
                             ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    server, client = handshake(ctx(pki, min_version="1.2"), cbc)
    assert "NO_SHARED_CIPHER" in server and "HANDSHAKE_FAILURE" in client


def test_mutual_tls_accepts_a_good_client_certificate_and_names_its_subject(pki):
    server, client = handshake(ctx(pki, client_ca=True), pki.client_context(pki.alice))
    assert client == b"hello" and server["subject"] == "CN=alice,O=Seedance Tests"
    assert common_name(server["subject"]) == "alice"


@pytest.mark.parametrize(("who", "server_error", "client_alert"), [
    (None, "PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"),
    ("stranger", "unable to get local issuer certificate", "UNKNOWN_CA"),
    ("expired", "certificate has expired", "CERTIFICATE_EXPIRED"),
])
def test_mutual_tls_refuses_no_certificate_a_wrong_ca_and_an_expired_one(pki, who, server_error, client_alert):
    server, client = handshake(ctx(pki, client_ca=True), pki.client_context(getattr(pki, who) if who else None))
    assert isinstance(server, str) and server_error in server
    assert isinstance(client, str) and client_alert in client


def test_bad_tls_settings_are_refused(pki, tmp_path):
    with pytest.raises(ValueError, match="tls_min_version"):
        ctx(pki, min_version="1.0")
    with pytest.raises(ValueError, match="cannot load"):
        build_server_context(str(tmp_path / "none.crt"), str(tmp_path / "none.key"))
    with pytest.raises(ValueError, match="tls_client_ca"):
        build_server_context(str(pki.server.cert_path), str(pki.server.key_path), str(tmp_path / "none.pem"))
