"""The security layer of the aiohttp app: start-up policy, the request middleware, and the per-WebSocket guard.

Every request outside the public paths (/, /healthz, /readyz, /health, /static) goes through `middleware`, in this
order: client address (trusted proxies) -> Host check (open loopback mode only) -> HTTP request rate per IP
-> browser Origin -> authentication -> route scope -> concurrent connections per IP / token. A refusal is an
HTTP error before any work is done (before the WebSocket upgrade): 400/401/403/429 with the JSON error body,
`WWW-Authenticate: Bearer` on 401 and `Retry-After` on 429, and a log line with the reason and client
address. On an open WebSocket, `WsGuard` checks each message's scopes (refused per message, connection kept),
the message rate (close 1008), token expiry (close 4401 unless a `reauth` renewed it) and `reauth` itself.
docs/security.md is the operator's view of all this.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDictProxy

from seedance.protocol import CloseCode
from seedance.protocol.scopes import SCOPE_ADMIN, SCOPE_GENERATE, generate_scopes
from seedance.protocol.server_connection import ServerConnection
from seedance.server.http.auth import (
    ANONYMOUS,
    ApiKeys,
    AuthError,
    JwtVerifier,
    Principal,
    TicketStore,
    missing_scopes,
    parse_scopes,
)
from seedance.server.http.http_errors import HttpError
from seedance.server.http.limits import ConnectionLimiter, LimitExceeded, RateLimiter, TokenBucket
from seedance.server.http.proxy import ClientAddress, TrustedProxies, split_list
from seedance.server.http.tls import build_server_context, common_name, peer_subject

if TYPE_CHECKING:
    import ssl

    from seedance.server.http.config import ServerConfig

log = logging.getLogger("seedance.security")

SUBPROTOCOL = "seedance.v1"  # the WebSocket subprotocol the server selects when a client offers it
SUBPROTOCOLS = (SUBPROTOCOL,)
TOKEN_PROTOCOL_PREFIX = "bearer."  # a browser's token rides in Sec-WebSocket-Protocol as "bearer.<jwt>"
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/health"})
PRINCIPAL = web.RequestKey("seedance.principal", Principal)  # typed request keys
CLIENT = web.RequestKey("seedance.client", "ClientAddress")
ROUTE_SCOPES = {
    "/stats": SCOPE_ADMIN,
    "/metrics": SCOPE_ADMIN,
    "/v1/completions": SCOPE_GENERATE,
    "/v1/chat/completions": SCOPE_GENERATE,
    "/v1/jobs": SCOPE_GENERATE,
    "/v1/jobs/{job_id}": SCOPE_GENERATE,
    "/v1/embeddings": SCOPE_GENERATE,
    "/tokenize": SCOPE_GENERATE,
    "/detokenize": SCOPE_GENERATE,
    "/v1/realtime": SCOPE_GENERATE,
}


class RequestHead(Protocol):
    """What the accept policy reads of a request: an aiohttp `web.Request` is one, and so is the picows
    stack's view of a WebSocket upgrade (server/http/upgrade_view.py), so both stacks run the same policy."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query(self) -> MultiDictProxy[str] | Mapping[str, str]: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def transport(self) -> asyncio.BaseTransport | None: ...
    @property
    def remote(self) -> str | None: ...


class Refusal(Exception):
    def __init__(self, status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.headers = headers or {}


# ---------------------------------------------------------------------------------------------- start-up policy


@functools.lru_cache(maxsize=256)
def _is_ip_literal(name: str) -> bool:
    """Whether a Host name is an IP address. Cached: ipaddress parses in Python (~20 µs), and every upgrade
    and request of a loopback server asks, almost always with the same one or two names."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_origin(origin: str) -> str | None:
    """"https://App.example" -> "https://app.example:443"; None for anything that is not a plain http(s) origin
    (including the opaque "null" a sandboxed frame or a file:// page sends)."""
    try:
        parts = urllib.parse.urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port or (443 if parts.scheme == 'https' else 80)}"


def auth_configured(cfg: ServerConfig) -> bool:
    return bool(cfg.jwt_secret or cfg.jwt_public_key or cfg.jwt_jwks_file or cfg.tls_client_ca
                or split_list(cfg.api_key))


NO_AUTH_NOTICE = ("authentication is off (loopback only): any Authorization header, API key or token is accepted "
                  "unchecked; set --api-key (or SEEDANCE_API_KEY) or --jwt-* to require one")


def validate_config(cfg: ServerConfig) -> list[str]:
    """Refuse (ValueError with the reason) a configuration that is unsafe or inconsistent; return warnings."""
    warnings: list[str] = []
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ValueError("tls_cert and tls_key go together: give both to serve https:// and wss://")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
    if cfg.tls_min_version not in ("1.2", "1.3"):
        raise ValueError(f"tls_min_version must be 1.3 (default) or 1.2, got {cfg.tls_min_version!r}")
    sources = [n for n in ("jwt_secret", "jwt_public_key", "jwt_jwks_file") if getattr(cfg, n)]
    if len(sources) > 1:
        raise ValueError(f"configure one JWT key source, not {' and '.join(sources)}")
    if (cfg.jwt_audience or cfg.jwt_issuer) and not sources:
        raise ValueError("jwt_audience / jwt_issuer need a key: jwt_secret, jwt_public_key or jwt_jwks_file")
    origins = split_list(cfg.allowed_origins)
    if "*" in origins and not cfg.insecure_any_origin:
        raise ValueError("allowed_origins '*' lets every web page drive this server from its visitors' browsers; "
                         "list the exact origins (https://app.example.com), or set insecure_any_origin")
    for origin in origins:
        if origin != "*" and normalize_origin(origin) is None:
            raise ValueError(f"allowed_origins: {origin!r} is not an origin like https://app.example.com[:port]")
    TrustedProxies(cfg.trusted_proxies)  # raises on a bad entry
    for name in ("max_connections_per_ip", "max_connections_per_token", "ws_messages_per_s", "http_requests_per_s",
                 "jwt_leeway_s"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0")
    for name in ("ws_message_burst", "http_request_burst"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1")
    if cfg.ticket_ttl_s <= 0:
        raise ValueError("ticket_ttl_s must be > 0")
    if not auth_configured(cfg):
        if not cfg.insecure_no_auth:
            if not is_loopback_host(cfg.host):
                raise ValueError(
                    f"refusing to listen on {cfg.host} without authentication: configure --api-key, --jwt-secret, "
                    "--jwt-public-key, --jwt-jwks-file or --tls-client-ca, or pass --insecure-no-auth to run open")
            if cfg.trusted_proxies:
                raise ValueError(
                    "trusted_proxies is set, so clients reach this loopback server through a proxy: configure "
                    "authentication (--api-key, --jwt-*, --tls-client-ca), or pass --insecure-no-auth to run open")
            warnings.append(NO_AUTH_NOTICE)
        else:
            warnings.append("authentication is OFF (insecure_no_auth): anyone who can reach this server can use it; "
                            "an Authorization header is not checked")
    elif not cfg.tls_cert and not is_loopback_host(cfg.host) and not cfg.trusted_proxies:
        warnings.append(f"listening on {cfg.host} without TLS: bearer tokens cross the network in clear text; "
                        "set tls_cert/tls_key, or terminate TLS at a proxy listed in trusted_proxies")
    return warnings


def preflight(cfg: ServerConfig) -> Security:
    """Everything start-up can refuse (policy, key and certificate files), before the server binds."""
    return Security(cfg)


# ---------------------------------------------------------------------------------------------- the layer


class Security:
    def __init__(self, cfg: ServerConfig) -> None:
        self.config = cfg
        self.warnings = validate_config(cfg)
        self.verifier: JwtVerifier | None = None
        if cfg.jwt_secret or cfg.jwt_public_key or cfg.jwt_jwks_file:
            self.verifier = JwtVerifier(secret=cfg.jwt_secret, public_key_file=cfg.jwt_public_key,
                                        jwks_file=cfg.jwt_jwks_file, audience=split_list(cfg.jwt_audience),
                                        issuer=cfg.jwt_issuer, leeway_s=cfg.jwt_leeway_s)
        self.ssl_context: ssl.SSLContext | None = None
        if cfg.tls_cert and cfg.tls_key:
            self.ssl_context = build_server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca, cfg.tls_min_version)
        self.api_keys = ApiKeys(split_list(cfg.api_key))
        self.mtls = bool(cfg.tls_client_ca)
        self.bearer_auth = self.verifier is not None or bool(self.api_keys)  # Authorization: Bearer is checked
        self.auth_enabled = self.bearer_auth or self.mtls
        self.loopback_open = not self.auth_enabled and is_loopback_host(cfg.host)
        self.proxies = TrustedProxies(cfg.trusted_proxies)
        origins = split_list(cfg.allowed_origins)
        self.any_origin = "*" in origins
        self.origins = {o for o in (normalize_origin(x) for x in origins if x != "*") if o}
        self.tls_client_scopes = parse_scopes(cfg.tls_client_scopes)
        self.tls_allowed_cns = set(split_list(cfg.tls_allowed_client_cns))
        self.tickets = TicketStore(cfg.ticket_ttl_s)
        self.connections = ConnectionLimiter(cfg.max_connections_per_ip, cfg.max_connections_per_token)
        self.http_rate = RateLimiter(cfg.http_requests_per_s, cfg.http_request_burst)

    def describe(self) -> str:
        parts = ["TLS " + (f"{self.config.tls_min_version}+" if self.ssl_context else "off")]
        if self.mtls:
            parts.append("mutual TLS")
        if self.api_keys:
            parts.append(f"API key ({len(self.api_keys.keys)})")
        if self.verifier is not None:
            parts.append(f"JWT ({', '.join(self.verifier.algorithms)})")
        if not self.auth_enabled:
            parts.append("no authentication (" + ("loopback only" if self.loopback_open else "INSECURE") + ")")
        if self.proxies:
            parts.append(f"trusted proxies {self.config.trusted_proxies}")
        return ", ".join(parts)

    # ---- per request ------------------------------------------------------------------------------
    def client_address(self, request: RequestHead) -> ClientAddress:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        peer_ip = peer[0] if isinstance(peer, tuple) and peer else request.remote
        scheme = "https" if transport is not None and transport.get_extra_info("sslcontext") else "http"
        return self.proxies.resolve(peer_ip, request.headers.getall("X-Forwarded-For", []),
                                    request.headers.getall("X-Forwarded-Proto", []), scheme)

    def check_host(self, request: RequestHead) -> None:
        """Open loopback mode refuses Host names from DNS: a web page whose domain an attacker re-resolves to
        127.0.0.1 (DNS rebinding) reaches the socket but still sends that domain in Host. IP literals,
        localhost (and *.localhost) and single-label names cannot be rebound from outside."""
        if not self.loopback_open:
            return
        host = request.headers.get("Host", "")
        if host.startswith("["):  # [::1]:8000
            name = host[1:host.find("]")] if "]" in host else host
        else:
            name = host.split(":")[0] if host.count(":") <= 1 else host
        name = name.rstrip(".").lower()
        if _is_ip_literal(name):
            return
        if "." in name and name != "localhost" and not name.endswith(".localhost"):
            raise Refusal(403, "host_not_allowed",
                          f"Host {host!r} is a DNS name; this server runs without authentication and answers "
                          "only localhost or IP addresses (DNS rebinding protection)")

    def own_origins(self, request: RequestHead) -> set[str]:
        """The origins of this server as a browser on this machine reaches it (the demo page at /)."""
        transport = request.transport
        sock = transport.get_extra_info("sockname") if transport is not None else None
        if not isinstance(sock, tuple) or len(sock) < 2:
            return set()
        ip, port = sock[0], sock[1]
        scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        hosts = {ip if ":" not in ip else f"[{ip}]"}
        if is_loopback_host(ip):
            hosts |= {"127.0.0.1", "localhost", "[::1]"}
        return {f"{scheme}://{h}:{port}" for h in hosts}

    def check_origin(self, request: RequestHead) -> None:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser; browsers send Origin on every WebSocket upgrade and cross-site POST
            return
        if not is_websocket_upgrade(request) and request.method in ("GET", "HEAD", "OPTIONS"):
            return
        if self.origin_allowed(request, origin):
            return
        if normalize_origin(origin) is None:
            raise Refusal(403, "origin_not_allowed", f"Origin {origin!r} is refused (opaque or malformed origin)")
        raise Refusal(403, "origin_not_allowed", f"Origin {origin} is not in allowed_origins")

    def origin_allowed(self, request: RequestHead, origin: str) -> bool:
        """The one Origin decision, for the check above and for CORS: opaque (`null`) and malformed origins are
        refused unless any origin is allowed."""
        if self.any_origin:
            return True
        normal = normalize_origin(origin)
        return normal is not None and (normal in self.origins or normal in self.own_origins(request))

    def authenticate(self, request: RequestHead, client: ClientAddress) -> Principal:
        cert_subject = None
        if self.mtls:
            cert_subject = peer_subject(request.transport)
            if cert_subject is None:
                raise AuthError("no verified client certificate", "invalid_request")
            cn = common_name(cert_subject)
            if self.tls_allowed_cns and cn not in self.tls_allowed_cns:
                raise Refusal(403, "forbidden", f"client certificate CN={cn} is not in tls_allowed_client_cns")
        if not self.bearer_auth:
            if self.mtls:
                return Principal(f"cert|{cert_subject}", "mtls", self.tls_client_scopes, common_name(cert_subject),
                                 cert_subject=cert_subject)
            return ANONYMOUS
        token, source = self._credentials(request)
        principal = self.tickets.redeem(token, client.ip) if source == "ticket" else self.verify_bearer(token)
        return principal.with_cert(cert_subject)

    def verify_bearer(self, token: str) -> Principal:
        """An API key, else a JWT when a JWT key is configured; AuthError otherwise."""
        principal = self.api_keys.match(token) if self.api_keys else None
        if principal is not None:
            return principal
        if self.verifier is None:
            raise AuthError("invalid API key")
        return self.verifier.verify(token)

    def _credentials(self, request: RequestHead) -> tuple[str, str]:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthError("the Authorization header must be 'Bearer <token>'", "invalid_request")
            return value.strip(), "header"
        if is_websocket_upgrade(request):
            offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
            tokens = [p[len(TOKEN_PROTOCOL_PREFIX):] for p in offered if p.startswith(TOKEN_PROTOCOL_PREFIX)]
            if tokens:
                if SUBPROTOCOL not in offered:
                    raise Refusal(400, "invalid_request", f"offer the {SUBPROTOCOL!r} subprotocol next to "
                                  f"'{TOKEN_PROTOCOL_PREFIX}<token>' (the server must select one and never echoes "
                                  "the token)")
                return tokens[0], "subprotocol"
            ticket = request.query.get("ticket")
            if ticket:
                return ticket, "ticket"
            raise AuthError("no credentials: send 'Authorization: Bearer <token>', offer the subprotocols "
                            f"'{SUBPROTOCOL}, {TOKEN_PROTOCOL_PREFIX}<token>', or add ?ticket= from POST /v1/tickets",
                            "")
        raise AuthError("no credentials: send 'Authorization: Bearer <token>'", "")

    def refuse(self, request: RequestHead, client: ClientAddress, err: Exception) -> HttpError:
        if isinstance(err, AuthError):
            challenge = 'Bearer realm="seedance"'
            if err.code:
                challenge += f', error="{err.code}", error_description="{err.reason.replace(chr(34), chr(39))}"'
            status, code, reason, headers = 401, "unauthorized", err.reason, {"WWW-Authenticate": challenge}
        elif isinstance(err, LimitExceeded):
            status, code, reason, headers = 429, err.code, err.reason, {"Retry-After": err.retry_after}
        else:
            assert isinstance(err, Refusal)
            status, code, reason, headers = err.status, err.code, err.reason, err.headers
        level = logging.INFO if status == 429 else logging.WARNING
        log.log(level, "refused %s %s from %s: %d %s: %s", request.method, request.path, client.ip, status, code,
                reason)
        return HttpError(status, code, reason, headers=headers)


def is_websocket_upgrade(request: RequestHead) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def _route_scopes(request: web.Request) -> list[str]:
    resource = request.match_info.route.resource
    scope = ROUTE_SCOPES.get(resource.canonical) if resource is not None else None
    return [scope] if scope else []


def _insufficient(missing: list[str], what: str) -> Refusal:
    return Refusal(403, "forbidden", f"{what} needs scope {missing[0]!r}, which this token does not have",
                   {"WWW-Authenticate": f'Bearer realm="seedance", error="insufficient_scope", scope="{missing[0]}"'})


SECURITY = web.AppKey("security", Security)


def admit(sec: Security, request: RequestHead, scopes: list[str]) -> tuple[ClientAddress, Principal, Any]:
    """The accept policy of a non-public request, for both stacks: client address (trusted proxies) -> Host ->
    request rate -> Origin -> authentication -> scopes -> connections per IP / token. Returns the client, the
    principal and the connection slot (release it when the request or WebSocket ends); raises the HttpError."""
    client = sec.client_address(request)
    try:
        sec.check_host(request)
        sec.http_rate.check(client.ip, "request")
        sec.check_origin(request)
        principal = sec.authenticate(request, client)
        missing = missing_scopes(principal, scopes)
        if missing:
            raise _insufficient(missing, f"{request.method} {request.path}")
        slot = sec.connections.acquire(client.ip, principal.id if principal.authenticated else None)
    except (AuthError, Refusal, LimitExceeded) as err:
        raise sec.refuse(request, client, err) from None
    return client, principal, slot


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


@web.middleware
async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    sec = request.app[SECURITY]
    if is_public(request.path):
        request[CLIENT] = sec.client_address(request)
        return await handler(request)
    request[CLIENT], request[PRINCIPAL], slot = admit(sec, request, _route_scopes(request))
    try:
        return await handler(request)
    finally:
        slot.release()


# ---------------------------------------------------------------------------------------------- for handlers


def principal_of(request: web.Request) -> Principal:
    principal = request.get(PRINCIPAL)
    if principal is None:  # the middleware did not run for this request: only acceptable with auth off
        if request.app[SECURITY].auth_enabled:
            raise HttpError(401, "unauthorized", "not authenticated")
        return ANONYMOUS
    return principal


def authorize_generate(request: web.Request, logprobs: int | None, priority: int) -> None:
    """Per-option scopes of an HTTP generation (SSE completions, polling jobs): 403 naming the missing one."""
    missing = missing_scopes(principal_of(request), generate_scopes(logprobs, priority))
    if missing:
        client = request.get(CLIENT) or request.app[SECURITY].client_address(request)
        what = {"logprobs": "logprobs", "priority:high": "priority < 0"}.get(missing[0], "generation")
        raise request.app[SECURITY].refuse(request, client, _insufficient(missing, what))


async def whoami(request: web.Request) -> web.Response:
    """GET /v1/whoami: what the server makes of this client (identity, scopes, address as seen via proxies)."""
    principal = principal_of(request)
    client: ClientAddress = request[CLIENT]
    return web.json_response({
        "auth": principal.method, "subject": principal.subject, "scopes": sorted(principal.scopes),
        "expires_at": principal.expires_at, "cert_subject": principal.cert_subject,
        "client_ip": client.ip, "scheme": client.scheme, "peer": client.peer,
    })


async def issue_ticket(request: web.Request) -> web.Response:
    """POST /v1/tickets: a one-time ticket for `GET /v1/stream?ticket=...` (browsers cannot set headers)."""
    sec = request.app[SECURITY]
    if not sec.bearer_auth:
        raise HttpError(400, "unsupported", "tickets exist for bearer-token auth, which this server does not use")
    client: ClientAddress = request[CLIENT]
    try:
        ticket, ttl = sec.tickets.issue(principal_of(request), client.ip)
    except AuthError as err:
        raise HttpError(429, "rate_limited", err.reason, headers={"Retry-After": "1"}) from None
    return web.json_response({"ticket": ticket, "expires_in": round(ttl, 3),
                              "url": f"/v1/stream?ticket={ticket}"}, status=201)


def install(app: web.Application, config: ServerConfig) -> Security:
    """Build the layer (raises ValueError for a refused configuration) and add its routes."""
    sec = app[SECURITY] = Security(config)
    for warning in sec.warnings:
        log.warning("%s", warning)
    app.add_routes([web.get("/v1/whoami", whoami), web.post("/v1/tickets", issue_ticket)])
    return sec


# ---------------------------------------------------------------------------------------------- WebSocket guard


class GuardedConnection(Protocol):
    """What the guard needs of the WebSocket connection it guards (server/transports/ws.py WsConnection): a structural
    type so this module does not import ws.py back."""

    async def close(self, code: int, reason: str) -> None: ...


class WsGuard:
    """One per WebSocket connection: scopes per message, message rate, token expiry, reauth."""

    def __init__(self, sec: Security, principal: Principal, client: ClientAddress, conn: GuardedConnection) -> None:
        self.sec = sec
        self.conn = conn
        self.principal = principal
        self.client = client
        cfg = sec.config
        self.rate = TokenBucket(cfg.ws_messages_per_s, cfg.ws_message_burst) if cfg.ws_messages_per_s > 0 else None
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task | None = None
        self._schedule_expiry()
        log.info("websocket open: client=%s%s auth=%s subject=%s", self.client.ip,
                 f" (via {self.client.peer})" if self.client.via_proxy else "", self.principal.method,
                 self.principal.subject)

    @classmethod
    def of(cls, request: web.Request, conn: GuardedConnection) -> WsGuard:
        """The guard of an aiohttp WebSocket handler's connection (the middleware admitted the request)."""
        return cls(request.app[SECURITY], principal_of(request), request[CLIENT], conn)

    def _schedule_expiry(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.principal.expires_at is not None:
            delay = max(0.0, self.principal.expires_at - time.time())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        log.info("websocket token expired: client=%s subject=%s: closing with 4401", self.client.ip,
                 self.principal.subject)
        self._closing = asyncio.ensure_future(self.conn.close(CloseCode.UNAUTHORIZED, "token expired"))

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def rate_exceeded(self) -> str | None:
        """Why this message is one too many (the client sends too fast), or None."""
        if self.rate is None or self.rate.take() == 0.0:
            return None
        cfg = self.sec.config
        reason = f"message rate limit exceeded ({cfg.ws_messages_per_s:g}/s, burst {cfg.ws_message_burst})"
        log.info("websocket refused: client=%s: %s: closing with 1008", self.client.ip, reason)
        return reason

    @property
    def log_context(self) -> str:
        return f"client={self.client.ip} subject={self.principal.subject}"

    def reauth(self, token: str, protocol: ServerConnection) -> None:
        """Verify a renewed token and tell the connection's protocol the outcome (docs/security.md)."""
        assert self.sec.bearer_auth  # the protocol answers reauth itself without bearer tokens
        try:
            fresh = self.sec.verify_bearer(token)
        except AuthError as err:
            log.warning("websocket reauth refused: client=%s subject=%s: %s", self.client.ip, self.principal.subject,
                        err.reason)
            protocol.reauth_refused(err.reason)
            return
        if fresh.id != self.principal.id:
            log.warning("websocket reauth as another subject: client=%s %s -> %s: closing with 4403",
                        self.client.ip, self.principal.subject, fresh.subject)
            protocol.close(CloseCode.FORBIDDEN, "reauth token is for another subject")
            return
        self.principal = fresh.with_cert(self.principal.cert_subject)
        self._schedule_expiry()
        log.info("websocket reauth: client=%s subject=%s until %.0f", self.client.ip, fresh.subject,
                 fresh.expires_at or 0)
        protocol.log_context = self.log_context
        protocol.reauthenticated(fresh.scopes, fresh.expires_at)
