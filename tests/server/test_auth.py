"""JWT verification (every refusal the issue names), JWKS key selection, ES256, scopes, one-time tickets."""

from __future__ import annotations

import json
import os
import time

import jwt
import pytest
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from seedance.protocol import Cancel, Credit, Generate, Ping, Priority, Reauth, Resume
from seedance.protocol.scopes import generate_scopes, message_scopes
from seedance.server.http.auth import (
    ANONYMOUS,
    AuthError,
    JwtVerifier,
    Principal,
    TicketStore,
    missing_scopes,
    scopes_of,
)
from tests.pki import (
    AUDIENCE,
    ISSUER,
    SECRET,
    claims,
    ec_key,
    hmac_token,
    hs256,
    public_pem,
    rsa_key,
    unsigned_token,
)


@pytest.fixture(scope="module")
def rsa():
    return rsa_key()


@pytest.fixture(scope="module")
def ec():
    return ec_key()


def hs_verifier(**kw) -> JwtVerifier:
    return JwtVerifier(secret=SECRET, audience=AUDIENCE, issuer=ISSUER, leeway_s=kw.pop("leeway_s", 5), **kw)


def pem_verifier(tmp_path, key, name="pub.pem") -> JwtVerifier:
    path = tmp_path / name
    path.write_bytes(public_pem(key))
    return JwtVerifier(public_key_file=str(path), audience=AUDIENCE, issuer=ISSUER, leeway_s=5)


def refusal(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    return info.value.reason


# ---------------------------------------------------------------------------------------------- accepted


def test_hs256_token_gives_its_subject_scopes_and_expiry():
    token = hs256(scope="generate logprobs", ttl=120)
    principal = hs_verifier().verify(token)
    assert principal.method == "jwt" and principal.subject == "alice"
    assert principal.scopes == {"generate", "logprobs"}
    assert principal.id == f"{ISSUER}|alice"
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert principal.expires_at == exp + 5  # exp plus the leeway


def test_rs256_with_a_public_key_file(tmp_path, rsa):
    token = jwt.encode(claims(scope="admin"), rsa, algorithm="RS256")
    assert pem_verifier(tmp_path, rsa).verify(token).scopes == {"admin"}


def test_es256_with_a_public_key_file(tmp_path, ec):
    token = jwt.encode(claims(), ec, algorithm="ES256")
    verifier = pem_verifier(tmp_path, ec)
    assert verifier.algorithms == ["ES256"]
    assert verifier.verify(token).subject == "alice"
    assert "signature" in refusal(verifier, jwt.encode(claims(), ec_key(), algorithm="ES256"))


def test_exp_within_the_leeway_is_accepted():
    assert hs_verifier(leeway_s=30).verify(hs256(ttl=-10)).subject == "alice"


# ---------------------------------------------------------------------------------------------- refused


def test_alg_none_is_refused():
    assert "'none' is not accepted" in refusal(hs_verifier(), unsigned_token(claims()))


def test_hs256_signed_with_the_rsa_public_key_is_refused_when_rs256_is_configured(tmp_path, rsa):
    """Algorithm confusion: a verifier that took the token's alg would HMAC with the public key's PEM."""
    verifier = pem_verifier(tmp_path, rsa)
    forged = hmac_token(claims(scope="admin"), public_pem(rsa))
    assert "'HS256' is not accepted" in refusal(verifier, forged)


def test_rs256_token_is_refused_when_hs256_is_configured(rsa):
    assert "'RS256' is not accepted" in refusal(hs_verifier(), jwt.encode(claims(), rsa, algorithm="RS256"))


def test_expired_token_is_refused():
    assert refusal(hs_verifier(), hs256(ttl=-60)) == "token expired"


def test_nbf_in_the_future_is_refused():
    assert refusal(hs_verifier(), hs256(nbf=int(time.time()) + 120)) == "token not yet valid (nbf)"


def test_wrong_audience_is_refused():
    assert "audience" in refusal(hs_verifier(), hs256(aud="someone-else"))


def test_missing_audience_is_refused_when_one_is_configured():
    assert refusal(hs_verifier(), hs256(aud=None)) == "token has no aud claim"


def test_an_audience_is_refused_when_none_is_configured():
    assert "no jwt_audience" in refusal(JwtVerifier(secret=SECRET, issuer=ISSUER), hs256())


def test_wrong_issuer_is_refused():
    assert "issuer" in refusal(hs_verifier(), hs256(iss="https://evil.test"))


def test_wrong_key_is_refused(tmp_path, rsa):
    assert refusal(hs_verifier(), hs256("another-secret-of-32-bytes-or-more!!")) == "token signature does not verify"
    other = jwt.encode(claims(), rsa_key(), algorithm="RS256")
    assert refusal(pem_verifier(tmp_path, rsa), other) == "token signature does not verify"


def test_token_without_exp_is_refused():
    assert refusal(hs_verifier(), hs256(exp=None)) == "token has no exp claim"


@pytest.mark.parametrize("token", ["abc", "a.b.c", "a.b", "eyJhbGciOiJIUzI1NiJ9.%%%.sig", "Bearer x"])
def test_malformed_tokens_are_refused(token):
    assert refusal(hs_verifier(), token).startswith("malformed token")


def test_garbage_payload_is_refused():
    token = hmac_token({"exp": "tomorrow"}, SECRET.encode())
    assert "invalid token" in refusal(JwtVerifier(secret=SECRET), token)


def test_missing_and_oversized_tokens_are_refused():
    with pytest.raises(AuthError) as info:
        hs_verifier().verify("")
    assert info.value.code == "invalid_request"
    assert "longer than" in refusal(hs_verifier(), "x" * 10_000)


# ---------------------------------------------------------------------------------------------- JWKS


def write_jwks(path, *keys):
    path.write_text(json.dumps({"keys": list(keys)}))


def jwk(algorithm, key, kid, alg_name=None):
    entry = json.loads(algorithm.to_jwk(key.public_key()))
    entry.update(kid=kid, use="sig")
    if alg_name:
        entry["alg"] = alg_name
    return entry


def test_jwks_picks_the_key_by_kid(tmp_path, rsa, ec):
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk(RSAAlgorithm, rsa, "r1", "RS256"), jwk(ECAlgorithm, ec, "e1"))
    verifier = JwtVerifier(jwks_file=str(path), audience=AUDIENCE, issuer=ISSUER)
    assert verifier.algorithms == ["ES256", "RS256"]
    assert verifier.verify(jwt.encode(claims(sub="r"), rsa, "RS256", headers={"kid": "r1"})).subject == "r"
    assert verifier.verify(jwt.encode(claims(sub="e"), ec, "ES256", headers={"kid": "e1"})).subject == "e"
    # the right key under the wrong kid, an unknown kid, no kid among several keys: all refused
    assert "not accepted" in refusal(verifier, jwt.encode(claims(), rsa, "RS256", headers={"kid": "e1"}))
    assert refusal(verifier, jwt.encode(claims(), rsa, "RS256", headers={"kid": "r9"})) == "unknown key id 'r9'"
    assert "no kid" in refusal(verifier, jwt.encode(claims(), rsa, "RS256"))
    # HS256 signed with the RSA key's PEM, naming its kid: confusion again
    assert "'HS256' is not accepted" in refusal(verifier, hmac_token(claims(), public_pem(rsa), kid="r1"))


def test_jwks_file_is_reread_after_key_rotation(tmp_path, rsa):
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk(RSAAlgorithm, rsa, "old"))
    verifier = JwtVerifier(jwks_file=str(path))
    fresh = rsa_key()
    token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, fresh, "RS256", headers={"kid": "new"})
    assert refusal(verifier, token) == "unknown key id 'new'"
    write_jwks(path, jwk(RSAAlgorithm, fresh, "new"))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a different mtime even on coarse clocks
    verifier._jwks_checked = 0.0  # skip the once-a-second throttle
    assert verifier.verify(token).subject == "a"


def test_jwks_with_symmetric_or_unsigned_keys_is_refused(tmp_path, rsa):
    path = tmp_path / "jwks.json"
    write_jwks(path, {"kty": "oct", "k": "c2VjcmV0", "kid": "h"})
    with pytest.raises(ValueError, match="symmetric"):
        JwtVerifier(jwks_file=str(path))
    write_jwks(path, jwk(RSAAlgorithm, rsa, "n", "none"))
    with pytest.raises(ValueError, match="algorithm 'none'"):
        JwtVerifier(jwks_file=str(path))


def test_bad_key_configurations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JwtVerifier(secret="short")
    with pytest.raises(ValueError, match="exactly one"):
        JwtVerifier(secret=SECRET, jwks_file="x.json")
    with pytest.raises(ValueError, match="exactly one"):
        JwtVerifier()
    weak = tmp_path / "weak.pem"
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_mod

    weak.write_bytes(public_pem(rsa_mod.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(ValueError, match="at least 2048"):
        JwtVerifier(public_key_file=str(weak))
    with pytest.raises(ValueError, match="jwt_public_key"):
        JwtVerifier(public_key_file=str(tmp_path / "missing.pem"))


# ---------------------------------------------------------------------------------------------- scopes


def test_scope_claim_forms():
    assert scopes_of({"scope": "generate  logprobs"}) == {"generate", "logprobs"}
    assert scopes_of({"scp": ["admin", 3]}) == {"admin"}
    assert scopes_of({"scopes": "priority:high"}) == {"priority:high"}
    assert scopes_of({}) == frozenset()


def test_each_message_and_option_needs_its_scope():
    assert message_scopes(Generate(id="a", prompt="x")) == ["generate"]
    assert message_scopes(Generate(id="a", prompt="x", logprobs=0)) == ["generate", "logprobs"]
    assert message_scopes(Generate(id="a", prompt="x", priority=-1, logprobs=2)) == [
        "generate", "logprobs", "priority:high"]
    assert message_scopes(Generate(id="a", prompt="x", priority=5)) == ["generate"]  # lower urgency is free
    assert message_scopes(Priority(id="a", priority=-2)) == ["priority:high"]
    assert message_scopes(Priority(id="a", priority=3)) == []
    for control in (Cancel(id="a"), Credit(id="a", n=1), Ping(), Reauth(token="t")):
        assert message_scopes(control) == []
    assert message_scopes(Resume(session="s", id="a")) == ["generate"]  # not listed: generate
    assert generate_scopes(None, 0) == ["generate"]


def test_missing_scopes_and_the_anonymous_principal():
    reader = Principal("p", "jwt", frozenset({"generate"}))
    assert missing_scopes(reader, ["generate", "logprobs"]) == ["logprobs"]
    assert missing_scopes(ANONYMOUS, ["generate", "logprobs", "priority:high", "admin"]) == []
    assert not ANONYMOUS.authenticated and reader.authenticated


# ---------------------------------------------------------------------------------------------- tickets


def test_tickets_are_single_use_bound_to_the_ip_and_short_lived(monkeypatch):
    store = TicketStore(ttl_s=30)
    alice = Principal("alice", "jwt", frozenset({"generate"}), "alice", time.time() + 300)
    ticket, ttl = store.issue(alice, "10.0.0.1")
    assert ttl == 30 and len(ticket) >= 40
    assert store.redeem(ticket, "10.0.0.1") is alice
    with pytest.raises(AuthError, match="unknown, used or expired"):
        store.redeem(ticket, "10.0.0.1")
    other, _ = store.issue(alice, "10.0.0.1")
    with pytest.raises(AuthError, match="another client address"):
        store.redeem(other, "10.0.0.2")
    with pytest.raises(AuthError, match="unknown"):
        store.redeem(other, "10.0.0.1")  # a failed redemption used it up too
    late, _ = store.issue(alice, "10.0.0.1")
    real = time.monotonic
    monkeypatch.setattr("seedance.server.http.auth.time.monotonic", lambda: real() + 31)
    with pytest.raises(AuthError, match="expired"):
        store.redeem(late, "10.0.0.1")


def test_a_ticket_never_outlives_its_token():
    store = TicketStore(ttl_s=30)
    soon = Principal("a", "jwt", frozenset(), "a", time.time() + 5)
    _, ttl = store.issue(soon, "10.0.0.1")
    assert 4 < ttl <= 5


# ---------------------------------------------------------------------------------------------- forged tokens


def forged_kid_token() -> str:
    """A header whose kid is not a string: no key is needed to send one."""
    return hmac_token(claims(), b"any-key-at-all", kid=1)


@pytest.mark.parametrize("exp", [10**400, "1999999999", 1e308 * 10, True, -5, 2**63],
                         ids=["10^400", "numeric-string", "infinity", "bool", "negative", "2^63"])
def test_an_exp_that_is_not_a_number_in_range_is_refused(exp):
    reason = refusal(hs_verifier(), hmac_token(claims(exp=exp), SECRET.encode()))
    assert "exp" in reason or "Expiration" in reason or "expired" in reason


def test_signed_nbf_and_iat_must_be_numbers_too():
    assert "nbf" in refusal(hs_verifier(), hmac_token(claims(nbf=10**400), SECRET.encode()))
    assert "iat" in refusal(hs_verifier(), hmac_token(claims(iat="123"), SECRET.encode()))


def test_a_non_string_kid_is_refused_in_every_key_mode(tmp_path, rsa):
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk(RSAAlgorithm, rsa, "r1", "RS256"))
    for verifier in (hs_verifier(), pem_verifier(tmp_path, rsa), JwtVerifier(jwks_file=str(path))):
        assert refusal(verifier, forged_kid_token())


def test_anything_the_jwt_library_raises_is_a_refusal(monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in a dependency")

    monkeypatch.setattr(jwt, "decode", broken)
    assert refusal(hs_verifier(), hs256()) == "malformed token"


# ---------------------------------------------------------------------------------------------- API keys


def test_api_keys_match_exactly_and_name_the_key_without_carrying_it():
    from seedance.server.http.auth import ApiKeys

    keys = ApiKeys(["sk-one", "sk-two", ""])
    assert len(keys.keys) == 2
    one, two = keys.match("sk-one"), keys.match("sk-two")
    assert one is not None and two is not None and one.method == "api_key" and one.id != two.id
    assert "sk-one" not in one.id and one.authenticated and "admin" in one.scopes
    for wrong in ("sk-on", "sk-one ", "SK-ONE", "", "sk-one\x00"):
        assert keys.match(wrong) is None
    assert not ApiKeys([])


def test_seedance_api_key_takes_several_keys_and_turns_auth_on():
    from seedance.server.http.config import ServerConfig
    from seedance.server.http.security import NO_AUTH_NOTICE, Security, validate_config

    cfg = ServerConfig.load(env={"SEEDANCE_API_KEY": "sk-a,sk-b"})
    sec = Security(cfg)
    assert sec.auth_enabled and sec.bearer_auth and not sec.loopback_open and sec.verifier is None
    assert sec.verify_bearer("sk-b").method == "api_key"
    with pytest.raises(AuthError):
        sec.verify_bearer("sk-c")
    assert NO_AUTH_NOTICE not in validate_config(cfg)
    assert NO_AUTH_NOTICE in validate_config(ServerConfig.load(env={}))
    assert "API key (2)" in sec.describe()
    # Off loopback the key is authentication enough: no refusal, no insecure warning.
    assert not any("OFF" in w for w in validate_config(ServerConfig.load(env={"SEEDANCE_HOST": "0.0.0.0",
                                                                            "SEEDANCE_API_KEY": "k"})))
