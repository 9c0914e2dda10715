"""Codes are wire constants: a change here breaks deployed clients, so the values are pinned."""

from __future__ import annotations

from seedance.protocol import ERROR_CODES, CloseCode, ProtocolError


def test_error_codes_are_the_documented_set() -> None:
    assert {
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "message_too_large",
        "duplicate_id",
        "unknown_id",
        "too_many_requests",
        "invalid_request",
        "overloaded",
        "unsupported",
        "internal",
        "unauthorized",
        "forbidden",
        "rate_limited",
        "store_unavailable",
        "snapshot_failed",
    } == ERROR_CODES


def test_close_code_values() -> None:
    assert {c.name: int(c) for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "UNSUPPORTED_DATA": 1003,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "TRY_AGAIN_LATER": 1013,
        "HEARTBEAT_TIMEOUT": 4000,
        "SLOW_CONSUMER": 4001,
        "UNAUTHORIZED": 4401,
        "FORBIDDEN": 4403,
    }


def test_protocol_error_carries_its_fields() -> None:
    err = ProtocolError("duplicate_id", "id 'a' is active", request_id="a", message_type="generate")
    assert (err.code, err.message, err.request_id, err.message_type) == (
        "duplicate_id",
        "id 'a' is active",
        "a",
        "generate",
    )
    assert str(err) == "duplicate_id: id 'a' is active"
    assert ProtocolError("internal", "x").request_id is None
