"""Start the real server (`seedance serve`) as a subprocess on a free loopback port, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    port: int
    process: subprocess.Popen
    log_path: str
    client_ssl: ssl.SSLContext | None = None  # set for a TLS server: https:// and wss://, verified with this

    @property
    def http(self) -> str:
        return f"{'https' if self.client_ssl else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"{'wss' if self.client_ssl else 'ws'}://127.0.0.1:{self.port}/v1/stream"

    def stats(self) -> dict:
        return httpx.get(f"{self.http}/stats", timeout=5).json()

    def log(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(tmp_path_factory, client_ssl: ssl.SSLContext | None = None, **env: object) -> RunningServer:
    """client_ssl: the server has tls_cert/tls_key; the readiness probe connects with this context."""
    port = free_port()
    log_path = str(tmp_path_factory.mktemp("server") / "server.log")
    environ = {**os.environ, "SEEDANCE_PORT": str(port), "SEEDANCE_HOST": "127.0.0.1"}
    env.setdefault("session_store", f"sqlite://{tmp_path_factory.mktemp('sessions') / 'sessions.db'}")
    environ.update({f"SEEDANCE_{k.upper()}": str(v) for k, v in env.items()})
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "seedance.cli", "serve"], env=environ,
                                   stdout=log, stderr=subprocess.STDOUT)
    server = RunningServer(port, process, log_path, client_ssl)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            if httpx.get(f"{server.http}/readyz", timeout=1, verify=client_ssl or True).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready in time:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    """The default server with the built-in model, shared by the e2e tests that need no special config."""
    srv = start_server(tmp_path_factory, max_requests_per_connection=8, num_kv_blocks=1024)
    yield srv
    srv.stop()


@pytest.fixture
def server_factory(tmp_path_factory):
    started: list[RunningServer] = []

    def make(**env: object) -> RunningServer:
        srv = start_server(tmp_path_factory, **env)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
