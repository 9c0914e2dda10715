"""Server configuration: defaults, then a TOML file, then SEEDANCE_* environment variables, then flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedance.engine.config import EngineConfig
from seedance.protocol.flow import FlowLimits

ENV_PREFIX = "SEEDANCE_"
# SEEDANCE_* names that are not server settings: read by the client CLI (URL, TOKEN), the benchmarks (WRK) and
# the test suite (CHROMIUM, UPDATE_SCREENSHOT). Any other SEEDANCE_ name is a typo and refused at start-up.
OTHER_ENV_NAMES = frozenset({"URL", "TOKEN", "WRK", "CHROMIUM", "UPDATE_SCREENSHOT"})


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    listen_backlog: int = 2048  # listen(2) queue for connection bursts; the kernel caps it at net.core.somaxconn
    # connections accepted per readable event of the listening socket (server/http/batch_accept.py): libuv's
    # own accept takes one per loop turn, which a loop busy streaming turns into tens per second
    accept_batch: int = 1024
    # while more connections than this arrive per second, automatic full garbage collections wait (at most 60 s):
    # each walks every connection's objects, and a ramp of new ones set off one after another (gc_policy.py); 0: off
    gc_burst_accepts_per_s: int = 50
    engine: EngineConfig = field(default_factory=EngineConfig)
    # Where the engine core runs (docs/server-stack.md): "process" (its own process, vLLM v1's EngineCore shape:
    # no GIL shared with the event loop; faster on docs/benchmarks.md's issue #16 matrix; images too, the vision
    # tower in the engine process; the gateway imports no torch) or "thread" (a thread of the server process:
    # one process, for embedding the engine and tests that reach into it).
    engine_mode: str = "process"
    # Gateway processes sharing the port in front of one engine process (server/workers.py); > 1 implies
    # engine_mode "process" and needs a fixed port.
    workers: int = 1
    # /v1/stream's WebSocket stack on the one port (docs/server-stack.md): "picows" (the head router hands
    # /v1/stream upgrades to picows, everything else to aiohttp) or "aiohttp" (aiohttp serves all of it)
    ws_stack: str = "picows"
    model_name: str | None = None  # the id /v1/models reports and clients pass as "model"; None: the model's own
    # WebSocket limits
    max_message_bytes: int = 1 << 20  # larger client messages close the socket with 1009
    max_connections: int = 1024  # beyond it new WebSockets are closed with 1013
    max_requests_per_connection: int = 32  # beyond it generate gets error too_many_requests
    realtime_max_items: int = 1000  # conversation items per /v1/realtime connection; beyond: error too_many_items
    heartbeat_interval_s: float = 15.0  # server pings this often
    heartbeat_max_missed: int = 2  # unanswered pings before closing with 4000
    keepalive: str = "conservative"  # TCP keepalive preset: conservative | aggressive | off
    # Send-side flow control (requests without explicit credit)
    send_high_water_bytes: int = 256 * 1024  # above: the connection's streams are paused in the engine
    send_low_water_bytes: int = 64 * 1024  # below: they resume
    slow_consumer_timeout_s: float = 30.0  # above high water this long: close with 4001
    socket_send_buffer_bytes: int | None = None  # SO_SNDBUF for client sockets; None: the kernel's autotuning
    # HTTP polling
    job_ttl_s: float = 300.0  # finished jobs are kept this long for late readers
    max_jobs: int = 1024  # beyond it POST /v1/jobs gets 429
    poll_max_wait_ms: int = 30_000
    # /v1/embeddings (each input also within the prompt limit, max_prompt_tokens)
    max_embedding_inputs: int = 128  # inputs per request
    max_embedding_tokens: int = 16_384  # tokens per request, all inputs together
    max_pending_embeddings: int = 16  # requests computing or waiting at once; beyond: 429
    # Sessions (multi-turn state, resume after a dropped connection)
    state_dir: str | None = None  # files of the server's own; None: $XDG_STATE_HOME/seedance (seedance/paths.py)
    session_store: str | None = None  # None: sqlite://<state_dir>/sessions.db; or sqlite:///path.db, redis://...
    max_sessions: int = 10_000  # in memory; idle ones beyond it are evicted LRU (their snapshots remain)
    session_idle_ttl_s: float = 3600.0  # idle sessions leave memory after this (restored on next use)
    # embedding rows / image features a session snapshot holds; a history with more is snapshotted without them
    session_snapshot_embeds_bytes: int = 64 << 20
    resume_grace_s: float = 60.0  # a disconnected client's turn waits this long for a resume, then is cancelled
    detached_buffer_tokens: int = 256  # tokens generated while the client is away before the turn pauses
    # Lifecycle
    shutdown_grace_s: float = 10.0  # in-flight streams get this long to finish on SIGTERM
    # Security (docs/security.md; checked by seedance.server.http.security.validate_config)
    tls_cert: str | None = None  # PEM certificate chain; with tls_key: https:// and wss://
    tls_key: str | None = None
    tls_min_version: str = "1.3"  # "1.2" admits TLS 1.2 clients (ECDHE + AEAD suites only)
    tls_client_ca: str | None = None  # PEM CA bundle: client certificates required and verified (mutual TLS)
    tls_client_scopes: str = "generate logprobs"  # scopes of a client authenticated by its certificate alone
    tls_allowed_client_cns: str = ""  # client-certificate common names let in; empty: any the CA signed
    api_key: str = ""  # shared bearer keys (comma list; --api-key is repeatable), beside or instead of JWT
    jwt_secret: str | None = None  # HS256 shared secret, >= 32 bytes (prefer the env var to the flag)
    jwt_public_key: str | None = None  # PEM public key file: RS256 (RSA >= 2048), ES256/384/512 (EC), EdDSA
    jwt_jwks_file: str | None = None  # JWKS file, key picked by the token's kid; re-read when it changes
    jwt_audience: str | None = None  # required aud (comma list: any of them)
    jwt_issuer: str | None = None  # required iss
    jwt_leeway_s: float = 10.0  # clock skew allowed on exp / nbf
    ticket_ttl_s: float = 30.0  # lifetime of a one-time WebSocket ticket (POST /v1/tickets)
    allowed_origins: str = ""  # browser Origins allowed besides the server's own loopback origin (comma list)
    insecure_any_origin: bool = False  # let allowed_origins contain "*"
    cors_max_age_s: int = 600  # how long browsers may cache a CORS preflight answer (Chromium caps it at 7200)
    insecure_no_auth: bool = False  # run without authentication on a non-loopback address or behind a proxy
    trusted_proxies: str = ""  # proxy addresses/CIDRs whose X-Forwarded-For / -Proto are believed
    max_connections_per_ip: int = 256  # open WebSockets + in-flight HTTP requests per client IP; 0: no limit
    max_connections_per_token: int = 128  # the same per token subject; 0: no limit
    header_timeout_s: float = 10.0  # request headers (and a TLS handshake) must be in this long after connect or
    #   after the previous response; otherwise the connection is closed (slowloris; also the keep-alive idle time)
    max_pending_connections_per_ip: int = 64  # connections per IP still sending request headers; 0: no limit
    max_open_connections: int = 0  # all client connections; 0: RLIMIT_NOFILE less fd_reserve
    fd_reserve: int = 256  # file descriptors kept from client connections (files, sessions, logs, newcomers)
    ws_messages_per_s: float = 200.0  # client messages per WebSocket connection (token bucket); 0: no limit
    ws_message_burst: int = 400
    http_requests_per_s: float = 100.0  # HTTP requests per client IP (token bucket); 0: no limit
    http_request_burst: int = 200
    # Observability (docs/observability.md)
    metrics_enabled: bool = True  # GET /metrics in the Prometheus text format (admin scope when auth is on)
    log_format: str = "text"  # text | json (one JSON object per line, with request_id / session_id when known)
    tracing: str = "off"  # off | console | file | otlp (OpenTelemetry spans per request and for cold start)
    tracing_file: str = "seedance-traces.jsonl"  # JSON-lines span file for tracing = "file"
    tracing_otlp_endpoint: str | None = None  # OTLP/HTTP endpoint for tracing = "otlp" (needs the exporter package)
    trace_slow_ms: float = 2000.0  # requests slower than this (end to end) are always traced
    trace_sample_rate: float = 0.01  # fraction of the other successful requests traced (errors always are)

    @classmethod
    def load(cls, config_file: str | os.PathLike | None = None, env: dict[str, str] | None = None,
             **overrides: Any) -> ServerConfig:
        cfg = cls()
        if config_file:
            data = tomllib.loads(Path(config_file).read_text())
            engine = data.pop("engine", {})
            _apply(cfg, data, source=str(config_file))
            _apply(cfg.engine, engine, source=f"{config_file} [engine]")
        env = os.environ if env is None else env
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name in _fields(cfg) and name != "engine":
                _apply(cfg, {name: raw}, source=key)
            elif name in _fields(cfg.engine):
                _apply(cfg.engine, {name: raw}, source=key)
            elif name.upper() not in OTHER_ENV_NAMES:
                raise ValueError(f"{key}: unknown setting {name!r} (settings: docs/operations.md)")
        for name, value in overrides.items():
            if value is None:
                continue
            target = cfg if name in _fields(cfg) else cfg.engine
            _apply(target, {name: value}, source=f"--{name.replace('_', '-')}")
        cfg.validate()
        return cfg

    def session_store_url(self) -> str:
        """The session store, by default a SQLite file in the state directory (never the working directory)."""
        from seedance.paths import state_dir

        return self.session_store or f"sqlite://{state_dir(self.state_dir) / 'sessions.db'}"

    def flow_limits(self) -> FlowLimits:
        """Both WebSocket endpoints' water marks and heartbeat (protocol/flow.py)."""
        return FlowLimits(self.send_high_water_bytes, self.send_low_water_bytes, self.slow_consumer_timeout_s,
                          self.heartbeat_interval_s, self.heartbeat_max_missed)

    def validate(self) -> None:
        if self.send_low_water_bytes >= self.send_high_water_bytes:
            raise ValueError("send_low_water_bytes must be below send_high_water_bytes")
        if self.keepalive not in ("conservative", "aggressive", "off"):
            raise ValueError("keepalive must be conservative, aggressive or off")
        if self.engine_mode not in ("thread", "process"):
            raise ValueError("engine_mode must be thread or process")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.workers > 1 and self.port == 0:
            raise ValueError("workers > 1 needs a fixed port (every worker binds the same one)")
        if self.ws_stack not in ("picows", "aiohttp"):
            raise ValueError("ws_stack must be picows or aiohttp")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        if self.tracing not in ("off", "console", "file", "otlp"):
            raise ValueError("tracing must be off, console, file or otlp")
        if self.cors_max_age_s < 0:
            raise ValueError("cors_max_age_s must be >= 0")
        if not 0.0 <= self.trace_sample_rate <= 1.0:
            raise ValueError("trace_sample_rate must be between 0 and 1")
        if self.header_timeout_s <= 0:
            raise ValueError("header_timeout_s must be > 0")
        for name in ("max_pending_connections_per_ip", "max_open_connections", "fd_reserve", "gc_burst_accepts_per_s",
                     "session_snapshot_embeds_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        self.validate_model()
        for name in ("listen_backlog", "accept_batch", "max_message_bytes", "max_connections",
                     "max_requests_per_connection", "heartbeat_max_missed", "max_jobs", "max_embedding_inputs",
                     "max_embedding_tokens", "max_pending_embeddings", "realtime_max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


    def validate_model(self) -> None:
        """A --model, --dtype or --quantize that cannot load is refused before binding (one line, exit 2)."""
        from seedance.models.registry import check_load_options, check_model_arg

        engine = self.engine
        check_load_options(engine.dtype, engine.quantize, engine.onednn_linear)
        if engine.kv_cache_bytes is not None and engine.kv_cache_bytes < 1:
            raise ValueError("kv_cache_bytes must be >= 1")
        if engine.synthetic_rate:
            return
        try:
            check_model_arg(engine.model)
        except FileNotFoundError as err:
            raise ValueError(str(err)) from None


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _apply(obj, values: dict[str, Any], source: str) -> None:
    fields = _fields(obj)
    for name, value in values.items():
        f = fields.get(name)
        if f is None:
            raise ValueError(f"{source}: unknown setting {name!r}")
        setattr(obj, name, _coerce(value, getattr(obj, name), f, source))


def _coerce(value: Any, current: Any, f: dataclasses.Field, source: str) -> Any:
    if not isinstance(value, str):
        return value
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if value.lower() in ("", "none") and "None" in kind:
            return None
        if "bool" in kind:
            return value.lower() in ("1", "true", "yes", "on")
        if "int" in kind:
            return int(value)
        if "float" in kind:
            return float(value)
    except ValueError as err:
        raise ValueError(f"{source}: {f.name} expects {kind}, got {value!r}") from err
    return value
