"""The `reauth` client message and its `authenticated` answer, and the auth error and close codes."""

from __future__ import annotations

import json

import pytest

from seedance.protocol import (
    CLIENT_MESSAGE_TYPES,
    ERROR_CODES,
    SERVER_MESSAGE_TYPES,
    Authenticated,
    CloseCode,
    ProtocolError,
    Reauth,
    decode_client_message,
    decode_server_message,
    decode_server_messages,
    encode_client_message,
    encode_server_message,
)
from seedance.protocol import errors as codes


def test_reauth_round_trip_and_registration():
    msg = decode_client_message('{"type": "reauth", "token": "a.b.c", "extra": 1}', max_size=1 << 20)
    assert msg == Reauth(token="a.b.c")
    assert decode_client_message(encode_client_message(msg), max_size=1 << 20) == msg
    assert CLIENT_MESSAGE_TYPES["reauth"] is Reauth and SERVER_MESSAGE_TYPES["authenticated"] is Authenticated


@pytest.mark.parametrize(("payload", "message"), [
    ({"type": "reauth"}, "reauth.token: required field missing"),
    ({"type": "reauth", "token": ""}, "reauth.token: expected str of length >= 1"),
    ({"type": "reauth", "token": 5}, "reauth.token: expected str, got int"),
    ({"type": "reauth", "token": "x" * 8193}, "reauth.token: expected str of length <= 8192"),
])
def test_bad_reauth_is_invalid_message(payload, message):
    with pytest.raises(ProtocolError) as info:
        decode_client_message(json.dumps(payload), max_size=1 << 20)
    assert info.value.code == "invalid_message" and info.value.message == message


def test_authenticated_always_carries_both_fields():
    data = encode_server_message(Authenticated(expires_at=None))
    assert json.loads(data) == {"type": "authenticated", "expires_at": None, "scopes": []}
    msg = Authenticated(expires_at=1718003610.0, scopes=["generate"])
    assert decode_server_message(encode_server_message(msg)) == msg
    assert decode_server_messages(b'[{"type":"authenticated","expires_at":1.0,"scopes":["admin"]}]') == [
        Authenticated(expires_at=1.0, scopes=["admin"])]


def test_auth_error_and_close_codes_are_pinned():
    assert (codes.UNAUTHORIZED, codes.FORBIDDEN, codes.RATE_LIMITED) == ("unauthorized", "forbidden", "rate_limited")
    assert {"unauthorized", "forbidden", "rate_limited"} <= ERROR_CODES
    assert (CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN, CloseCode.POLICY_VIOLATION) == (4401, 4403, 1008)
