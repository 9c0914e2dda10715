"""Who is the client: the peer address, or what a trusted reverse proxy says it is.

X-Forwarded-For and X-Forwarded-Proto are believed only when the TCP peer is a trusted proxy
(`trusted_proxies`: addresses or CIDR networks). The X-Forwarded-For chain is read right to left (the
right end was written by the proxy nearest to us), skipping trusted proxies; the first address that is
not one is the client. Anything a client writes into the header itself sits to the left of that and is
never reached, so a spoofed X-Forwarded-For gets nowhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ClientAddress:
    ip: str  # the client as far as we can tell: the peer, or the proxy-reported address
    scheme: str  # "http" or "https", as the client used it
    peer: str  # the TCP peer (the proxy, when there is one)
    via_proxy: bool  # ip/scheme came from trusted X-Forwarded-* headers


def split_list(value: str | Iterable[str] | None) -> list[str]:
    """A setting given as "a, b c" (env, flag) or as a list (TOML) -> ["a", "b", "c"]."""
    if value is None:
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else [str(v) for v in value]
    return [i.strip() for i in items if i.strip()]


def parse_ip(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:443" as some proxies write it
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:5678"
        text = text.split(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class TrustedProxies:
    def __init__(self, entries: str | Iterable[str] | None) -> None:
        self.networks: list[IPNetwork] = []
        for entry in split_list(entries):
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or CIDR network") from None

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, ip: str | IPAddress | None) -> bool:
        if not self.networks:  # the usual case, asked at every accept and request: no address parsing
            return False
        addr = parse_ip(ip) if isinstance(ip, str) else ip
        return addr is not None and any(addr in net for net in self.networks)

    def resolve(self, peer: str | None, forwarded_for: list[str], forwarded_proto: list[str],
                scheme: str) -> ClientAddress:
        """peer: the socket's remote address; forwarded_*: every X-Forwarded-For / -Proto header value in
        order; scheme: the scheme of our own socket."""
        peer = peer or "unknown"
        if not self.trusts(peer):
            return ClientAddress(peer, scheme, peer, False)
        hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
        client = peer
        for hop in reversed(hops):
            addr = parse_ip(hop)
            if addr is None:  # garbage in the chain: stop at the last hop we could vouch for
                break
            client = str(addr)
            if not self.trusts(addr):
                break
        protos = [p.strip().lower() for value in forwarded_proto for p in value.split(",") if p.strip()]
        proto = protos[-1] if protos and protos[-1] in ("http", "https") else scheme
        return ClientAddress(client, proto, peer, client != peer or proto != scheme)
