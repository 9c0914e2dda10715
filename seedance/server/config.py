"""Server configuration: defaults, then a TOML file, then SEEDANCE_* environment variables, then flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedance.engine.config import EngineConfig

ENV_PREFIX = "SEEDANCE_"


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    engine: EngineConfig = field(default_factory=EngineConfig)
    model_name: str = "seedance-tiny"  # the id /v1/models reports and clients pass as "model"
    # WebSocket limits
    max_message_bytes: int = 1 << 20  # larger client messages close the socket with 1009
    max_connections: int = 1024  # beyond it new WebSockets are closed with 1013
    max_requests_per_connection: int = 32  # beyond it generate gets error too_many_requests
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
    # Lifecycle
    shutdown_grace_s: float = 10.0  # in-flight streams get this long to finish on SIGTERM

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
        for name, value in overrides.items():
            if value is None:
                continue
            target = cfg if name in _fields(cfg) else cfg.engine
            _apply(target, {name: value}, source=f"--{name.replace('_', '-')}")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.send_low_water_bytes >= self.send_high_water_bytes:
            raise ValueError("send_low_water_bytes must be below send_high_water_bytes")
        if self.keepalive not in ("conservative", "aggressive", "off"):
            raise ValueError("keepalive must be conservative, aggressive or off")
        for name in ("max_message_bytes", "max_connections", "max_requests_per_connection", "heartbeat_max_missed",
                     "max_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


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
