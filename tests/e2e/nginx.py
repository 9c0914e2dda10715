"""A real nginx on loopback in front of real servers, running a site config from docs/deploy/ as written.

The documented config is used with only listen ports, upstream ports and file paths substituted, and each
substitution must match exactly once, so the doc cannot drift from what the tests run. nginx runs in the
foreground (daemon off, one process) with a generated main config, pid file, temp dirs and logs in a test
directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
requires_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")


@dataclass
class Nginx:
    port: int
    process: subprocess.Popen
    directory: Path

    def logs(self) -> str:
        return "".join((self.directory / name).read_text() for name in ("stderr.log", "error.log")
                       if (self.directory / name).exists())


def render(doc: Path, substitutions: list[tuple[str, str]]) -> str:
    """The documented site with each `old` replaced by `new`; every `old` must occur exactly once."""
    text = doc.read_text()
    for old, new in substitutions:
        assert text.count(old) == 1, f"docs/deploy/{doc.name} should contain {old!r} exactly once"
        text = text.replace(old, new)
    return text


@contextmanager
def running_nginx(directory: Path, site: str, port: int, timeout_s: float = 15) -> Iterator[Nginx]:
    """nginx serving `site` (an http-level config), up once `port` accepts connections; stopped on exit."""
    (directory / "seedance.conf").write_text(site)
    (directory / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/seedance.conf;
}}
""")
    with open(directory / "stderr.log", "w") as log:
        process = subprocess.Popen([NGINX, "-e", str(directory / "error.log"), "-p", str(directory),
                                    "-c", str(directory / "nginx.conf")], stdout=log, stderr=subprocess.STDOUT)
    proxy = Nginx(port, process, directory)
    try:
        _wait_listening(proxy, timeout_s)
        yield proxy
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(proxy: Nginx, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            raise RuntimeError(f"nginx exited: {proxy.logs()}")
        try:
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not start listening in time: {proxy.logs()}")
