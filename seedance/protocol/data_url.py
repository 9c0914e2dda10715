"""Images arrive as data: URLs (OpenAI's image_url / input_image): the server fetches nothing on a client's
behalf, so only `data:image/<type>;base64,<data>` is taken. Shared by the chat paths and /v1/realtime, which
checks an item's image when it is created (the bytes are decoded later, on the engine's vision thread)."""

from __future__ import annotations

import re

_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,")


def image_base64(url: str) -> str | None:
    """The base64 payload of an image data: URL, or None for any other URL."""
    head = _DATA_URL.match(url[:128])
    return None if head is None else url[head.end():]
