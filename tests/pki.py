"""Test PKI and token helpers: a CA, server and client certificates (good, wrong CA, expired), JWT keys.

Made fresh per test session with `cryptography`; nothing here is a real secret.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Seedance Tests")])


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path
    key_path: Path


def _write(directory: Path, stem: str, key, cert: x509.Certificate) -> Issued:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(key, cert, cert_path, key_path)


def make_ca(directory: Path, stem: str, cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _write(directory, stem, key, cert)


def issue(directory: Path, stem: str, ca: Issued, cn: str, *, server: bool = False,
          not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - dt.timedelta(days=1))
               .not_valid_after(not_after or NOW + dt.timedelta(days=10))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return _write(directory, stem, key, builder.sign(ca.key, hashes.SHA256()))


@dataclass
class Pki:
    ca: Issued
    server: Issued  # for 127.0.0.1 / localhost, signed by ca
    alice: Issued  # client, signed by ca
    mallory: Issued  # client, signed by ca, a CN the server does not allow
    stranger: Issued  # client, signed by another CA
    expired: Issued  # client, signed by ca, expired yesterday

    def client_context(self, who: Issued | None = None, *, max_version: ssl.TLSVersion | None = None,
                       ciphers: str | None = None) -> ssl.SSLContext:
        """A client context that trusts ca and presents `who`'s certificate (if any)."""
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_path))
        if who is not None:
            ctx.load_cert_chain(who.cert_path, who.key_path)
        if max_version is not None:
            ctx.maximum_version = max_version
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        return ctx


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory, "ca", "Seedance Test CA")
    other = make_ca(directory, "other-ca", "Some Other CA")
    return Pki(
        ca=ca,
        server=issue(directory, "server", ca, "127.0.0.1", server=True),
        alice=issue(directory, "alice", ca, "alice"),
        mallory=issue(directory, "mallory", ca, "mallory"),
        stranger=issue(directory, "stranger", other, "alice"),
        expired=issue(directory, "expired", ca, "alice", not_before=NOW - dt.timedelta(days=10),
                      not_after=NOW - dt.timedelta(days=1)),
    )


# ---------------------------------------------------------------------------------------------- tokens

SECRET = "test-secret-0123456789abcdef-0123456789abcdef"  # >= 32 bytes
AUDIENCE = "seedance-test"
ISSUER = "https://issuer.test"


def hs256(secret: str = SECRET, *, sub: str = "alice", scope: str | None = "generate", ttl: float = 300,
          **claims: object) -> str:
    now = int(time.time())
    payload: dict[str, object] = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": int(now + ttl)}
    if scope is not None:
        payload["scope"] = scope
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict, alg: str = "none") -> str:
    """alg=none: header.payload. and an empty signature."""
    header = {"alg": alg, "typ": "JWT"}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."


def hmac_token(payload: dict, key: bytes, alg: str = "HS256", kid: object = None) -> str:
    """An HS256 token signed with an arbitrary byte string as the key, e.g. an RSA public key's PEM (the
    algorithm-confusion attack; PyJWT itself refuses to build one)."""
    header: dict[str, object] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def claims(sub: str = "alice", scope: str = "generate", ttl: float = 300, **extra: object) -> dict:
    now = int(time.time())
    return {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "exp": int(now + ttl), "scope": scope, **extra}


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
