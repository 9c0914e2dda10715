"""Protocol errors and WebSocket close codes.

Error codes are stable strings a client can switch on; they travel in `error` messages (connection kept open).
Close codes end the whole connection. docs/protocol.md has the table of which is used when.
"""

from __future__ import annotations

from enum import IntEnum

# The payload is not JSON, or not a JSON object.
INVALID_JSON = "invalid_json"
# A known message with a wrong field type, a missing required field or a violated constraint.
INVALID_MESSAGE = "invalid_message"
# "type" is missing, not a string, or not a message type this server knows.
UNKNOWN_TYPE = "unknown_type"
# The message is larger than the configured maximum; the server closes with 1009.
MESSAGE_TOO_LARGE = "message_too_large"
# A `generate` reused the id of a request still active on this connection.
DUPLICATE_ID = "duplicate_id"
# A cancel/credit/priority named an id that is not active (never was, or already finished).
UNKNOWN_ID = "unknown_id"
# The connection already has the maximum number of concurrent requests.
TOO_MANY_REQUESTS = "too_many_requests"
# Well-formed, but the engine refused it (prompt too long, parameter out of the engine's range...).
INVALID_REQUEST = "invalid_request"
# Server-wide admission bound is full; retry later with back-off.
OVERLOADED = "overloaded"
# Well-formed, but asks for something this server or model cannot do (e.g. embedding input).
UNSUPPORTED = "unsupported"
# The server failed; not the client's fault.
INTERNAL = "internal"
# A `reauth` token was refused (bad signature, expired, wrong audience...); the connection keeps its old token.
UNAUTHORIZED = "unauthorized"
# The connection's token lacks the scope this message or option needs (e.g. logprobs); the connection stays.
FORBIDDEN = "forbidden"
# The connection sent messages faster than its rate limit; the server closes it with 1008 after this error.
RATE_LIMITED = "rate_limited"
# The session store (Redis, SQLite) could not be reached to read the session: this request fails, others go on;
# retry later (readiness reports the store as degraded meanwhile).
STORE_UNAVAILABLE = "store_unavailable"
# A session turn completed (its `done` was sent) but its snapshot could not be written: the turn is not durable
# (it lives in this server's memory only). Written, and acknowledged with a late `snapshot`, once the store is back.
SNAPSHOT_FAILED = "snapshot_failed"

ERROR_CODES: frozenset[str] = frozenset(
    {
        INVALID_JSON,
        INVALID_MESSAGE,
        UNKNOWN_TYPE,
        MESSAGE_TOO_LARGE,
        DUPLICATE_ID,
        UNKNOWN_ID,
        TOO_MANY_REQUESTS,
        INVALID_REQUEST,
        OVERLOADED,
        UNSUPPORTED,
        INTERNAL,
        UNAUTHORIZED,
        FORBIDDEN,
        RATE_LIMITED,
        STORE_UNAVAILABLE,
        SNAPSHOT_FAILED,
    }
)


class ProtocolError(Exception):
    """A peer sent something the protocol does not allow.

    `request_id` is set when the offending payload named a usable request id, so the server can attach the
    `error` message to that request; `message_type` is the payload's "type" when it was a known one, so the
    server can tell a malformed `generate` (which never started) from a malformed control message for a
    request that is still running.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        message_type: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.message_type = message_type

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"request_id={self.request_id!r}, message_type={self.message_type!r})"
        )


class CloseCode(IntEnum):
    """WebSocket close codes the server uses; 4000-4999 are this protocol's own (RFC 6455 §7.4.2)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown; reconnect
    PROTOCOL_ERROR = 1002  # WebSocket-level violation
    UNSUPPORTED_DATA = 1003  # e.g. a binary frame from the client
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # server overloaded / too many connections
    HEARTBEAT_TIMEOUT = 4000  # missed too many WebSocket pongs
    SLOW_CONSUMER = 4001  # send queue stayed above the hard limit
    UNAUTHORIZED = 4401  # the connection's token expired (no reauth in time) or is no longer valid
    FORBIDDEN = 4403  # the connection tried something its credentials never allow (reauth as another subject)
