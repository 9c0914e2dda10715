"""`seedance serve` as a subprocess on a free loopback port: start, wait until ready, stop.

One launcher for everything that needs a real server in another process: the benchmarks (which also read
the times to listening and to ready off it) and the end-to-end tests.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    port: int
    process: subprocess.Popen
    log_path: str
    client_ssl: ssl.SSLContext | None = None  # set for a TLS server: https:// and wss://, verified with this
    timeline: dict[str, float] = field(default_factory=dict)  # seconds from Popen: listening, ready

    @property
    def http(self) -> str:
        return f"{'https' if self.client_ssl else 'http'}://127.0.0.1:{self.port}"

    url = http

    @property
    def ws(self) -> str:
        return f"{'wss' if self.client_ssl else 'ws'}://127.0.0.1:{self.port}/v1/stream"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict:
        return httpx.get(f"{self.http}/stats", timeout=10, verify=self.client_ssl or True).json()

    def log(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful drain), SIGKILL if it has not exited within timeout; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch(settings: Mapping[str, object], log_path: str | os.PathLike, *, client_ssl: ssl.SSLContext | None = None,
           args: tuple[str, ...] = (), ready_timeout_s: float = 120.0, poll_s: float = 0.02,
           python_path: str | None = None) -> ServerProcess:
    """Start `seedance serve` with these settings (config field → value, passed as SEEDANCE_* variables) on a
    free loopback port and return once /readyz says 200. Raises with the log's tail if it exits or is late.
    python_path: a source tree to import seedance from instead (a benchmark's "before" checkout)."""
    port = free_port()
    environ = {**os.environ, "SEEDANCE_PORT": str(port), "SEEDANCE_HOST": "127.0.0.1"}
    if python_path:
        environ["PYTHONPATH"] = os.pathsep.join([python_path, *filter(None, [os.environ.get("PYTHONPATH")])])
    environ.update({f"SEEDANCE_{k.upper()}": str(v) for k, v in settings.items()})
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        # -P: `python -m` would put the working directory first on sys.path, ahead of PYTHONPATH, so a run from a
        # checkout's root would serve that checkout's seedance, not python_path's
        flags = ["-P"] if python_path else []
        process = subprocess.Popen([sys.executable, *flags, "-m", "seedance.cli", "serve", *args], env=environ,
                                   stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(port, process, str(log_path), client_ssl)
    deadline = time.monotonic() + ready_timeout_s
    with httpx.Client(timeout=1, verify=client_ssl or True) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()[-3000:]}")
            try:
                code = http.get(f"{server.http}/readyz").status_code
                server.timeline.setdefault("listening_s", time.perf_counter() - t0)
                if code == 200:
                    server.timeline["ready_s"] = time.perf_counter() - t0
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(poll_s)
    server.stop()
    raise RuntimeError(f"server not ready in time:\n{server.log()[-3000:]}")
