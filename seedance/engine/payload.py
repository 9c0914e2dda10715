"""Binary payloads of a request (embedding rows, image files) as raw bytes, bounded before they are decoded."""

from __future__ import annotations

import base64
import binascii

from seedance.engine.errors import InvalidRequest


def payload_bytes(data: bytes | str, limit: int, what: str) -> bytes:
    """data itself, or its standard base64 decoded; InvalidRequest when it is not base64 or is over limit bytes
    (checked on the base64 length first, so an oversized payload is never decoded)."""
    if isinstance(data, str):
        if len(data) > limit * 4 // 3 + 4:
            raise InvalidRequest(f"{what} is over the limit of {limit} bytes")
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{what} is not valid base64") from None
    if len(data) > limit:
        raise InvalidRequest(f"{what} has {len(data)} bytes, over the limit of {limit}")
    return data
