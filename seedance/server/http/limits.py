"""Abuse limits: concurrent connections per client IP and per token, and token-bucket rates.

Pure bookkeeping, no I/O: the caller turns a refusal into HTTP 429 (with Retry-After) or a WebSocket close
1008. A limit of 0 disables it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


class LimitExceeded(Exception):
    def __init__(self, code: str, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        """Retry-After header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full."""

    __slots__ = ("burst", "clock", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self.clock = clock
        self.tokens = self.burst
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self) -> float:
        """0.0 when a token was taken; otherwise the seconds until one will be available."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def available(self) -> float:
        """Tokens in the bucket now (it refills as time passes)."""
        self._refill()
        return self.tokens

    def idle(self) -> bool:
        """Full again: forgetting this bucket changes nothing."""
        self._refill()
        return self.tokens >= self.burst


class RateLimiter:
    """One token bucket per key (a client IP), forgotten once full again so the table stays small."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}

    def check(self, key: str, what: str) -> None:
        if self.rate <= 0:
            return
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self.prune()
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, self.clock)
        wait = bucket.take()
        if wait:
            raise LimitExceeded("rate_limited", f"{what} rate limit exceeded ({self.rate:g}/s, burst {self.burst})",
                                wait)

    def prune(self) -> None:
        for key in [k for k, b in self.buckets.items() if b.idle()]:
            del self.buckets[key]


@dataclass(slots=True)
class Slot:
    """One held connection; release() is idempotent."""

    limiter: ConnectionLimiter
    ip: str
    token: str | None
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter._drop(self.limiter.per_ip_count, self.ip)
            if self.token is not None:
                self.limiter._drop(self.limiter.per_token_count, self.token)


class ConnectionLimiter:
    """Concurrent connections (open WebSockets and in-flight HTTP requests) per client IP and per token."""

    def __init__(self, per_ip: int, per_token: int) -> None:
        self.per_ip = per_ip
        self.per_token = per_token
        self.per_ip_count: dict[str, int] = {}
        self.per_token_count: dict[str, int] = {}

    def acquire(self, ip: str, token: str | None) -> Slot:
        if self.per_ip and self.per_ip_count.get(ip, 0) >= self.per_ip:
            raise LimitExceeded("too_many_connections",
                                f"too many concurrent connections from {ip} (limit {self.per_ip})")
        if token is not None and self.per_token and self.per_token_count.get(token, 0) >= self.per_token:
            raise LimitExceeded("too_many_connections",
                                f"too many concurrent connections for this token (limit {self.per_token})")
        self.per_ip_count[ip] = self.per_ip_count.get(ip, 0) + 1
        if token is not None:
            self.per_token_count[token] = self.per_token_count.get(token, 0) + 1
        return Slot(self, ip, token)

    @staticmethod
    def _drop(counts: dict[str, int], key: str) -> None:
        left = counts.get(key, 0) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)
