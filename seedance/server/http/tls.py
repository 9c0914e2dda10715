"""TLS for https:// and wss://: the server's ssl.SSLContext and the verified client-certificate subject.

TLS 1.3 is the minimum unless `tls_min_version = "1.2"` is set explicitly; with 1.2, only forward-secret
AEAD suites are offered (ECDHE with AES-GCM or ChaCha20-Poly1305: no CBC, no RSA key exchange, no SHA-1
MACs). TLS 1.3's own suites are all AEAD. Compression and renegotiation are off. With `tls_client_ca` the
handshake requires a client certificate that chains to that CA and is within its validity dates (mutual
TLS); its subject is then available to the auth rules.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

log = logging.getLogger("seedance.security")

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
                "localityName": "L", "stateOrProvinceName": "ST", "domainComponent": "DC",
                "emailAddress": "emailAddress", "serialNumber": "serialNumber"}


class _LoggedHandshake(ssl.SSLObject):
    """Logs why a TLS handshake was refused (wrong protocol version, no shared cipher, no / untrusted /
    expired client certificate): the event loop drops such connections silently."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as err:
            reason = getattr(err, "verify_message", None) or err.reason or str(err)
            log.warning("TLS handshake refused: %s", reason)
            raise


def build_server_context(cert: str, key: str, client_ca: str | None = None, min_version: str = "1.3") -> ssl.SSLContext:
    if min_version not in MIN_VERSIONS:
        raise ValueError(f"tls_min_version must be 1.3 or 1.2, got {min_version!r}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    ctx.set_ciphers(TLS12_CIPHERS)  # TLS 1.2 suites; TLS 1.3 suites are fixed and all strong
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.sslobject_class = _LoggedHandshake
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ValueError(f"tls_cert/tls_key: cannot load {cert} / {key}: {err}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"tls_client_ca: cannot load {client_ca}: {err}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def subject_of(peercert: dict[str, Any] | None) -> str | None:
    """getpeercert()'s subject as "CN=alice,O=Example" (the certificate's own RDN order)."""
    if not peercert or "subject" not in peercert:
        return None
    parts = [f"{_SHORT_NAMES.get(name, name)}={value}" for rdn in peercert["subject"] for name, value in rdn]
    return ",".join(parts) or None


def common_name(subject: str | None) -> str | None:
    for part in (subject or "").split(","):
        if part.startswith("CN="):
            return part[3:]
    return None


def peer_subject(transport: Any) -> str | None:
    """The verified client-certificate subject of a TLS connection, or None (no TLS, no client cert)."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return subject_of(ssl_object.getpeercert())
