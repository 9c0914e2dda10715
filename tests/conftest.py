"""Fixtures shared across the suite: a real redis-server for the Redis session store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real Redis on a free loopback port, with AOF fsync on every write, stopped after the run."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI installs Debian's redis-server)")
        pytest.skip("redis-server is not installed: apt-get install -y redis-server")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "always", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def smollm2_path():
    """The SmolLM2 GGUF `seedance models pull smollm2` put in the cache (.ci/run pulls it); skip without it.
    Tests never download it themselves. Under CI a missing copy fails rather than skips."""
    from seedance.models.registry import cached_path

    try:
        return cached_path("smollm2")
    except FileNotFoundError as err:
        if os.environ.get("CI"):
            pytest.fail(f"{err} (.ci/run pulls it)")
        pytest.skip(str(err))
