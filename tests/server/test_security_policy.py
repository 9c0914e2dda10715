"""Start-up policy, Origin normalisation, trusted proxies and the limit bookkeeping (no server)."""

from __future__ import annotations

import pytest

from seedance.server.http.config import ServerConfig
from seedance.server.http.limits import ConnectionLimiter, LimitExceeded, RateLimiter, TokenBucket
from seedance.server.http.proxy import TrustedProxies
from seedance.server.http.security import NO_AUTH_NOTICE, is_loopback_host, normalize_origin, validate_config
from tests.pki import SECRET


def cfg(**kw) -> ServerConfig:
    return ServerConfig.load(env={}, **kw)


# ---------------------------------------------------------------------------------------------- start-up policy


def test_loopback_without_auth_is_the_default_and_says_so_once():
    """Open loopback runs, with one notice that an Authorization header is not checked (issue #19: an
    `Authorization: Bearer sk-...` used to be accepted without a word)."""
    warnings = validate_config(cfg())
    assert len(warnings) == 1 and "authentication is off" in warnings[0] and "--api-key" in warnings[0]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_non_loopback_without_auth_refuses_to_start(host):
    with pytest.raises(ValueError, match=f"refusing to listen on {host} without authentication.*--insecure-no-auth"):
        validate_config(cfg(host=host))


def test_insecure_no_auth_starts_with_a_warning():
    warnings = validate_config(cfg(host="0.0.0.0", insecure_no_auth=True))
    assert any("authentication is OFF" in w for w in warnings)


def test_a_proxy_in_front_of_an_open_loopback_server_is_refused():
    with pytest.raises(ValueError, match="trusted_proxies is set"):
        validate_config(cfg(trusted_proxies="127.0.0.1"))
    assert validate_config(cfg(trusted_proxies="127.0.0.1", jwt_secret=SECRET)) == []


def test_auth_on_a_public_address_without_tls_warns():
    warnings = validate_config(cfg(host="0.0.0.0", jwt_secret=SECRET))
    assert any("clear text" in w for w in warnings)
    assert validate_config(cfg(host="0.0.0.0", jwt_secret=SECRET, tls_cert="c", tls_key="k")) == []


@pytest.mark.parametrize(("settings", "message"), [
    ({"allowed_origins": "*"}, "insecure_any_origin"),
    ({"allowed_origins": "https://ok.example, null"}, "'null' is not an origin"),
    ({"allowed_origins": "https://ok.example/path"}, "is not an origin"),
    ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
    ({"tls_client_ca": "ca.pem"}, "needs tls_cert"),
    ({"tls_cert": "c", "tls_key": "k", "tls_min_version": "1.1"}, "tls_min_version"),
    ({"jwt_secret": SECRET, "jwt_jwks_file": "k.json"}, "one JWT key source"),
    ({"jwt_audience": "x"}, "need a key"),
    ({"trusted_proxies": "10.0.0.0/8, not-an-ip", "jwt_secret": SECRET}, "not-an-ip"),
    ({"max_connections_per_ip": -1}, "max_connections_per_ip must be >= 0"),
    ({"ws_message_burst": 0}, "ws_message_burst must be >= 1"),
    ({"ticket_ttl_s": 0}, "ticket_ttl_s"),
])
def test_inconsistent_or_unsafe_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        validate_config(cfg(**settings))


def test_any_origin_needs_the_explicit_flag():
    assert validate_config(cfg(allowed_origins="*", insecure_any_origin=True)) == [NO_AUTH_NOTICE]


def test_security_settings_come_from_env_and_toml(tmp_path):
    env = {"SEEDANCE_JWT_SECRET": SECRET, "SEEDANCE_MAX_CONNECTIONS_PER_IP": "7",
           "SEEDANCE_WS_MESSAGES_PER_S": "2.5", "SEEDANCE_INSECURE_NO_AUTH": "true",
           "SEEDANCE_MAX_PROMPT_TOKENS": "100"}
    loaded = ServerConfig.load(env=env)
    assert loaded.jwt_secret == SECRET and loaded.max_connections_per_ip == 7 and loaded.ws_messages_per_s == 2.5
    assert loaded.insecure_no_auth is True and loaded.engine.max_prompt_tokens == 100
    path = tmp_path / "s.toml"
    path.write_text('allowed_origins = ["https://a.example", "https://b.example:8443"]\n')
    assert validate_config(ServerConfig.load(path, env={})) == [NO_AUTH_NOTICE]


def test_loopback_names():
    assert all(map(is_loopback_host, ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback_host, ["0.0.0.0", "::", "10.0.0.1", "localhost.evil.example", "", None]))


@pytest.mark.parametrize(("origin", "normal"), [
    ("https://App.Example", "https://app.example:443"),
    ("https://app.example:443", "https://app.example:443"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://[::1]:8000/", "http://[::1]:8000"),
    ("null", None),
    ("", None),
    ("file://", None),
    ("https://user:pw@app.example", None),
    ("https://app.example/x", None),
    ("https://app.example:99999", None),
])
def test_origin_normalisation(origin, normal):
    assert normalize_origin(origin) == normal


# ---------------------------------------------------------------------------------------------- trusted proxies


def test_forwarded_headers_from_an_untrusted_peer_are_ignored():
    proxies = TrustedProxies("127.0.0.1, 10.1.0.0/16")
    seen = proxies.resolve("192.0.2.7", ["203.0.113.9"], ["https"], "http")
    assert (seen.ip, seen.scheme, seen.via_proxy) == ("192.0.2.7", "http", False)


def test_a_trusted_proxy_names_the_client_and_the_scheme():
    proxies = TrustedProxies("127.0.0.1")
    seen = proxies.resolve("127.0.0.1", ["198.51.100.4"], ["https"], "http")
    assert (seen.ip, seen.scheme, seen.peer, seen.via_proxy) == ("198.51.100.4", "https", "127.0.0.1", True)


def test_the_chain_is_read_from_the_right_so_a_spoofed_left_part_is_never_reached():
    proxies = TrustedProxies("127.0.0.1, 10.1.0.0/16")
    # the client wrote "1.2.3.4" itself; the edge proxy 10.1.2.3 appended the real client 198.51.100.4
    seen = proxies.resolve("127.0.0.1", ["1.2.3.4, 198.51.100.4", "10.1.2.3"], [], "http")
    assert seen.ip == "198.51.100.4"
    assert proxies.resolve("127.0.0.1", ["10.1.9.9, 10.1.2.3"], [], "http").ip == "10.1.9.9"  # all trusted
    assert proxies.resolve("127.0.0.1", ["garbage, 10.1.2.3"], [], "http").ip == "10.1.2.3"
    assert proxies.resolve("127.0.0.1", [], ["gopher"], "http").scheme == "http"
    assert proxies.resolve("127.0.0.1", ["[2001:db8::1]:443"], [], "http").ip == "2001:db8::1"
    assert proxies.resolve("::ffff:127.0.0.1", ["198.51.100.4"], [], "http").ip == "198.51.100.4"


def test_no_trusted_proxies_trusts_nobody():
    assert not TrustedProxies("")
    assert TrustedProxies(None).resolve("127.0.0.1", ["1.2.3.4"], ["https"], "http").ip == "127.0.0.1"


# ---------------------------------------------------------------------------------------------- limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # the next token in half a second
    clock.now += 0.5
    assert bucket.take() == 0.0
    assert bucket.take() > 0
    clock.now += 100
    assert bucket.idle()


def test_rate_limiter_is_per_key_and_says_when_to_retry():
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    limiter.check("a", "request")
    limiter.check("a", "request")
    with pytest.raises(LimitExceeded) as info:
        limiter.check("a", "request")
    assert info.value.code == "rate_limited" and info.value.retry_after == "1"
    assert "request rate limit exceeded (1/s, burst 2)" in info.value.reason
    limiter.check("b", "request")  # another client is unaffected
    clock.now += 10
    limiter.prune()
    assert limiter.buckets == {}
    RateLimiter(rate=0, burst=1).check("a", "x")  # 0: no limit


def test_connection_limits_per_ip_and_per_token():
    limiter = ConnectionLimiter(per_ip=2, per_token=3)
    a1, a2 = limiter.acquire("1.1.1.1", "t"), limiter.acquire("1.1.1.1", "t")
    with pytest.raises(LimitExceeded, match=r"from 1\.1\.1\.1 \(limit 2\)"):
        limiter.acquire("1.1.1.1", None)
    limiter.acquire("2.2.2.2", "t")
    with pytest.raises(LimitExceeded, match=r"for this token \(limit 3\)"):
        limiter.acquire("3.3.3.3", "t")
    a1.release()
    a1.release()  # idempotent
    assert limiter.per_ip_count["1.1.1.1"] == 1 and limiter.per_token_count["t"] == 2
    limiter.acquire("1.1.1.1", None)
    a2.release()
    unlimited = ConnectionLimiter(0, 0)
    for _ in range(1000):
        unlimited.acquire("1.1.1.1", "t")
