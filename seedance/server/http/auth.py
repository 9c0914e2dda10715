"""Authentication (JWT bearer tokens, one-time WebSocket tickets) and authorization (scopes).

Pure logic, no aiohttp: security.py applies it to requests and connections. docs/security.md describes the
model.

JWT verification never lets the token choose how it is checked: the accepted algorithms follow from the
configured key (a shared secret: HS256; an RSA public key: RS256; an EC P-256 key: ES256; in a JWKS file,
each key's own algorithm, the key picked by `kid`). `alg: none`, an HS256 token against an RSA key
(algorithm confusion) or any other mismatch is refused before the signature is looked at. `exp` is
required; `exp`, `nbf`, `aud` and `iss` are checked with a small leeway for clock skew.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedance.protocol.scopes import ALL_SCOPES

# jwt and cryptography (~50 ms of start-up) are imported by the JWT verifier, which only a server with --jwt-* builds.

# ---------------------------------------------------------------------------------------------- scopes
# Which scopes a message or a generation needs is the protocol's rule: seedance/protocol/scopes.py.

MAX_TOKEN_BYTES = 8192
MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z: a later exp/nbf/iat is a forgery or a bug
log = logging.getLogger("seedance.security")
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                                   "EdDSA"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and what they may do."""

    id: str  # the key of per-token limits and job ownership
    method: str  # "jwt", "api_key", "mtls" or "none" (auth off: loopback without auth configured)
    scopes: frozenset[str]
    subject: str | None = None  # the token's sub
    expires_at: float | None = None  # unix time after which the credentials are no longer accepted
    cert_subject: str | None = None  # the verified client-certificate subject (mutual TLS)
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def authenticated(self) -> bool:
        return self.method != "none"

    def with_cert(self, cert_subject: str | None) -> Principal:
        return Principal(self.id, self.method, self.scopes, self.subject, self.expires_at, cert_subject, self.claims)


ANONYMOUS = Principal("anonymous", "none", ALL_SCOPES)


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """OAuth-style `scope` (space-separated string), or a `scp` / `scopes` list (or string)."""
    found: set[str] = set()
    for name in ("scope", "scp", "scopes"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(str(v) for v in value if isinstance(v, str))
    return frozenset(found)


def parse_scopes(value: str | Iterable[str] | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    return frozenset(s.strip() for s in items if s.strip())


def missing_scopes(principal: Principal, needed: Iterable[str]) -> list[str]:
    return [s for s in needed if s not in principal.scopes]


# ---------------------------------------------------------------------------------------------- errors


class AuthError(Exception):
    """Credentials missing or not acceptable: HTTP 401 / close 4401 / error `unauthorized`."""

    def __init__(self, reason: str, code: str = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code  # RFC 6750 error: invalid_request (missing/malformed header) or invalid_token


# ---------------------------------------------------------------------------------------------- JWT


def _algorithm_for_key(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"RSA key of {key.key_size} bits: at least 2048 are required")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name not in by_curve:
            raise ValueError(f"EC curve {key.curve.name} is not supported (P-256, P-384, P-521)")
        return by_curve[key.curve.name]
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"unsupported public key type {type(key).__name__}")


@dataclass(slots=True)
class _Key:
    key: Any
    algorithm: str


class JwtVerifier:
    """Checks bearer tokens against exactly one key source: a shared secret, a PEM public key, or a JWKS file."""

    def __init__(self, *, secret: str | bytes | None = None, public_key_file: str | None = None,
                 jwks_file: str | None = None, audience: str | Iterable[str] | None = None,
                 issuer: str | None = None, leeway_s: float = 10.0) -> None:
        sources = [s for s in (secret, public_key_file, jwks_file) if s]
        if len(sources) != 1:
            raise ValueError("configure exactly one of jwt_secret, jwt_public_key, jwt_jwks_file")
        self.audience = [a for a in ([audience] if isinstance(audience, str) else audience or []) if a] or None
        self.issuer = issuer or None
        self.leeway_s = leeway_s
        self.jwks_file = jwks_file
        self._jwks_mtime: float | None = None
        self._jwks_checked = 0.0
        self.keys: dict[str | None, _Key] = {}  # by kid; None: the one key for tokens without kid
        if secret:
            raw = secret.encode() if isinstance(secret, str) else secret
            if len(raw) < 32:
                raise ValueError("jwt_secret must be at least 32 bytes (256 bits) for HS256")
            self.keys[None] = _Key(raw, "HS256")
        elif public_key_file:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                key = load_pem_public_key(Path(public_key_file).read_bytes())
            except (OSError, ValueError) as err:
                raise ValueError(f"jwt_public_key: no PEM public key in {public_key_file}: {err}") from None
            self.keys[None] = _Key(key, _algorithm_for_key(key))
        else:
            self._load_jwks()

    @property
    def algorithms(self) -> list[str]:
        return sorted({k.algorithm for k in self.keys.values()})

    def _load_jwks(self) -> None:
        import jwt

        assert self.jwks_file is not None
        try:
            data = json.loads(Path(self.jwks_file).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"jwt_jwks_file: cannot load {self.jwks_file}: {err}") from None
        for entry in data.get("keys", []) if isinstance(data, dict) else []:
            if isinstance(entry, dict) and entry.get("kty") == "oct":
                raise ValueError("jwt_jwks_file: symmetric (oct) keys are not allowed; use jwt_secret for HS256")
            if isinstance(entry, dict) and "alg" in entry and entry["alg"] not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"jwt_jwks_file: key {entry.get('kid')!r} has algorithm {entry['alg']!r}; "
                                 f"accepted: {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}")
        try:
            keyset = jwt.PyJWKSet.from_dict(data)
        except Exception as err:  # PyJWKSetError, InvalidKeyError, and whatever a malformed key raises
            raise ValueError(f"jwt_jwks_file: cannot load {self.jwks_file}: {err!r}") from None
        keys: dict[str | None, _Key] = {}
        for jwk in keyset.keys:
            if jwk.public_key_use not in (None, "sig"):
                continue
            if jwk.algorithm_name not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"jwt_jwks_file: key {jwk.key_id!r} has algorithm {jwk.algorithm_name!r}; "
                                 f"accepted: {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}")
            keys[jwk.key_id] = _Key(jwk.key, jwk.algorithm_name)
        if not keys:
            raise ValueError(f"jwt_jwks_file: {self.jwks_file} has no signing keys")
        if len(keys) == 1:
            keys[None] = next(iter(keys.values()))
        self.keys = keys
        self._jwks_mtime = os.stat(self.jwks_file).st_mtime

    def _maybe_reload(self) -> None:
        """Key rotation: the JWKS file is re-read when it changes (checked at most once a second)."""
        if self.jwks_file is None or time.monotonic() - self._jwks_checked < 1.0:
            return
        self._jwks_checked = time.monotonic()
        try:
            if os.stat(self.jwks_file).st_mtime != self._jwks_mtime:
                self._load_jwks()
        except (OSError, ValueError):
            pass  # keep the keys we have; a broken rotation must not lock everyone out

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; AuthError for anything else. Fails closed: whatever a forged token
        makes the JWT library raise (a non-string kid, an exp too large for a float...) is a refusal, not a 500."""
        try:
            return self._verify(token)
        except AuthError:
            raise
        except Exception as err:
            log.warning("unexpected error verifying a token (refused): %r", err)
            raise AuthError("malformed token") from None

    def _verify(self, token: str) -> Principal:
        import jwt

        if not token:
            raise AuthError("no token", "invalid_request")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError(f"token longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as err:  # DecodeError, and a header that is not what RFC 7515 says
            raise AuthError(f"malformed token: {err}") from None
        alg = header.get("alg")
        self._maybe_reload()
        kid = header.get("kid")
        if self.jwks_file is None:
            key = self.keys.get(None)  # one configured key: a kid carries no meaning
        else:
            key = self.keys.get(kid) if isinstance(kid, str) else self.keys.get(None) if kid is None else None
        if key is None:
            raise AuthError(f"unknown key id {kid!r}" if kid is not None else "token has no kid and the JWKS has "
                            "several keys")
        if alg != key.algorithm:
            raise AuthError(f"token algorithm {alg!r} is not accepted (this key takes {key.algorithm})")
        try:
            claims = jwt.decode(token, key.key, algorithms=[key.algorithm], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway_s, options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid (nbf)") from None
        except jwt.InvalidAudienceError:
            if self.audience is None:
                raise AuthError("token has an aud claim but this server has no jwt_audience to match") from None
            raise AuthError(f"token audience is not {' or '.join(self.audience)}") from None
        except jwt.InvalidIssuerError:
            raise AuthError(f"token issuer is not {self.issuer}") from None
        except jwt.MissingRequiredClaimError as err:
            raise AuthError(f"token has no {err.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not verify") from None
        except jwt.InvalidTokenError as err:  # DecodeError, bad claim types, InvalidAlgorithmError...
            raise AuthError(f"invalid token: {err}") from None
        _check_times(claims)
        subject = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        ident = f"{claims.get('iss', '')}|{subject}" if subject else f"jti|{claims.get('jti') or token[-16:]}"
        return Principal(ident, "jwt", scopes_of(claims), subject, float(claims["exp"]) + self.leeway_s,
                         claims=claims)


def _check_times(claims: dict[str, Any]) -> None:
    """RFC 7519 NumericDate: `exp`, `nbf` and `iat` are JSON numbers. PyJWT converts with int(), so it takes
    "1700000000" and 10**400 (which no float holds); both are refused here, as is anything past year 9999."""
    for name in ("exp", "nbf", "iat"):
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AuthError(f"token claim {name} must be a number (NumericDate)")
        if not 0 <= value <= MAX_NUMERIC_DATE:  # NaN fails this too; inf and 10**400 compare exactly
            raise AuthError(f"token claim {name} is out of range")


# ---------------------------------------------------------------------------------------------- API keys


class ApiKeys:
    """Shared bearer keys (`--api-key`, `SEEDANCE_API_KEY`), as vLLM and llama-server take them: a token equal to
    one of them is let in with every scope. The comparison is constant-time and runs over every key, so neither
    timing nor the number of keys tried tells a caller how close a guess was."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = [k.encode() for k in keys if k]
        # A principal id that names the key without carrying it (ids reach logs and per-token limits).
        self.ids = [f"api_key|{hashlib.sha256(k).hexdigest()[:12]}" for k in self.keys]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def match(self, token: str) -> Principal | None:
        """The key's principal when `token` is one of the keys, else None."""
        raw = token.encode()
        found = -1
        for i, key in enumerate(self.keys):
            if hmac.compare_digest(raw, key):
                found = i
        if found < 0:
            return None
        return Principal(self.ids[found], "api_key", ALL_SCOPES, subject=self.ids[found])


# ---------------------------------------------------------------------------------------------- tickets


@dataclass(slots=True)
class _Ticket:
    principal: Principal
    ip: str
    expires_at: float  # monotonic


class TicketStore:
    """One-time, short-lived WebSocket tickets for browsers: `POST /v1/tickets` with a bearer token returns
    one; `GET /v1/stream?ticket=...` redeems it once, from the same client IP, within `ttl_s`."""

    def __init__(self, ttl_s: float = 30.0, max_outstanding: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_outstanding = max_outstanding
        self.tickets: dict[str, _Ticket] = {}

    def issue(self, principal: Principal, ip: str) -> tuple[str, float]:
        now = time.monotonic()
        self._expire(now)
        if len(self.tickets) >= self.max_outstanding:
            raise AuthError("too many outstanding tickets; retry shortly")
        ttl = self.ttl_s
        if principal.expires_at is not None:
            ttl = min(ttl, principal.expires_at - time.time())
        ticket = secrets.token_urlsafe(32)
        self.tickets[ticket] = _Ticket(principal, ip, now + ttl)
        return ticket, ttl

    def redeem(self, ticket: str, ip: str) -> Principal:
        entry = self.tickets.pop(ticket, None)  # single use, whatever happens next
        if entry is None:
            raise AuthError("unknown, used or expired ticket")
        if time.monotonic() > entry.expires_at:
            raise AuthError("ticket expired")
        if entry.ip != ip:
            raise AuthError("ticket was issued to another client address")
        return entry.principal

    def _expire(self, now: float) -> None:
        for key in [k for k, t in self.tickets.items() if t.expires_at < now]:
            del self.tickets[key]
