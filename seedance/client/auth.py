"""When the client renews its token, and where fresh tokens come from.

The server closes a WebSocket with 4401 when the connection's token expires unless a `reauth` brought a fresh
one first (docs/protocol.md). The client reads the token's own `exp` (without verifying it: the server
does that; the client only needs to know when) and renews a margin ahead of it. The timing functions are
pure, so they are unit-tested without a server or a clock.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jwt

from seedance.client.errors import SeedanceError

# A callable returning a bearer token (JWT), sync or async. It is called on every (re)connect and before each
# expiry, so a provider that fetches from an identity provider should cache and refresh near expiry itself.
TokenProvider = Callable[[], str | Awaitable[str]]

MIN_REAUTH_INTERVAL_S = 0.5  # never renew more often: a clock that runs ahead of the issuer's would spin
MAX_RETRY_DELAY_S = 5.0


class ReauthError(SeedanceError):
    """The connection's token could not be renewed, or the server ended the connection over its token.

    `code`: `unauthorized` (the server refused the fresh token; the connection keeps its current one),
    `token_provider` (the provider failed, or returned a token no fresher than the current one), `timeout`
    (no answer to `reauth`), `unsupported` (the server uses no bearer tokens: nothing to renew),
    `token_expired` (closed with 4401), `forbidden` (closed with 4403: a token for another subject).
    """


@dataclass(frozen=True, slots=True)
class TokenLifetime:
    expires_at: float | None  # unix seconds: the token's `exp`; None when it has none (nothing to renew)
    issued_at: float  # its `iat`, or when the client got it: the start of the lifetime the margin is taken of


def token_lifetime(token: str | None, received_at: float) -> TokenLifetime:
    """`exp` and `iat` of a JWT, read without verifying the signature; an opaque or malformed token has none."""
    if not token:
        return TokenLifetime(None, received_at)
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False, "verify_nbf": False,
                                            "verify_iat": False, "verify_aud": False, "verify_iss": False})
    except jwt.PyJWTError:
        return TokenLifetime(None, received_at)
    exp, iat = claims.get("exp"), claims.get("iat")
    expires_at = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    issued_at = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else received_at
    return TokenLifetime(expires_at, min(issued_at, expires_at) if expires_at is not None else issued_at)


def renew_at(life: TokenLifetime, margin_s: float, margin_ratio: float) -> float | None:
    """When to send `reauth`: `min(margin_s, margin_ratio * lifetime)` before expiry, so a long-lived token is
    renewed a fixed time ahead and a short-lived one still has most of its life. None: nothing to renew."""
    if life.expires_at is None:
        return None
    lifetime = max(0.0, life.expires_at - life.issued_at)
    return life.expires_at - max(0.0, min(margin_s, margin_ratio * lifetime))


def renewal_delay(life: TokenLifetime, now: float, margin_s: float, margin_ratio: float,
                  floor_s: float = 0.0) -> float | None:
    """Seconds from `now` until the next `reauth` (at least `floor_s`); None when the token has no expiry."""
    at = renew_at(life, margin_s, margin_ratio)
    return None if at is None else max(floor_s, at - now)


def retry_delay(expires_at: float | None, now: float) -> float:
    """After a failed renewal: try again a third of the remaining time later, within [0.5 s, 5 s]; the server
    may still accept a renewal in its leeway after `exp`, and at worst closes with 4401 (then the client
    reconnects with a fresh token)."""
    if expires_at is None:
        return MAX_RETRY_DELAY_S
    return min(MAX_RETRY_DELAY_S, max(MIN_REAUTH_INTERVAL_S, (expires_at - now) / 3))


async def fetch_token(provider: TokenProvider, timeout_s: float) -> str:
    """A token from the provider; any failure becomes ReauthError(`token_provider`). A sync provider runs on
    the event loop, so it should be quick (return a cached token); one that does I/O should be async."""
    try:
        token = provider()
        if inspect.isawaitable(token):
            token = await asyncio.wait_for(token, timeout_s)
    except Exception as err:
        raise ReauthError("token_provider", f"the token provider failed: {err!r}") from err
    if not isinstance(token, str) or not token:
        raise ReauthError("token_provider", f"the token provider returned {type(token).__name__}, not a token")
    return token
