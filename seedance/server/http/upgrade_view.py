"""A WebSocket upgrade request as the accept policy reads it (security.RequestHead), built from picows' parsed
request head, so the picows stack runs the very policy functions the aiohttp middleware runs."""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy


@dataclass(slots=True)
class UpgradeView:
    method: str
    path: str
    query: MultiDictProxy[str]
    headers: CIMultiDictProxy[str]
    transport: asyncio.BaseTransport | None

    @classmethod
    def of(cls, method: bytes, target: bytes, headers: CIMultiDict[str],
           transport: asyncio.BaseTransport | None) -> UpgradeView:
        """From the request line's method and target (path?query, percent-encoded) and the parsed headers."""
        raw_path, _, raw_query = target.decode("latin-1").partition("?")
        query = MultiDict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
        return cls(method.decode("latin-1"), urllib.parse.unquote(raw_path), MultiDictProxy(query),
                   CIMultiDictProxy(headers), transport)

    @property
    def remote(self) -> str | None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return peer[0] if isinstance(peer, tuple) and peer else None
