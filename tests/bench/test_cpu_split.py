"""The transports bench splits the server's CPU into its gateway and engine processes (per-pid CPU times)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from seedance.bench.server_process import free_port
from seedance.bench.transports_bench import cpu_costs, tree_cpu_by_role

# A stand-in with the real server's shape: the root listens on the port and spawns a multiprocessing child
# (spawn, as core_spawn does) that burns CPU, as the engine process would, while the root stays idle.
TREE = textwrap.dedent("""
    import multiprocessing as mp, socket, sys, time

    def burn():
        end = time.monotonic() + 60  # monotonic is read without a system call (vDSO); process_time is not
        while time.monotonic() < end:
            sum(range(1000))

    if __name__ == "__main__":
        sock = socket.socket()
        sock.bind(("127.0.0.1", int(sys.argv[1])))
        sock.listen()
        child = mp.get_context("spawn").Process(target=burn, daemon=True)
        child.start()
        print("ready", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def server_like(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc, port
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait()


def test_split_puts_the_listener_in_gateway_and_the_spawned_child_in_engine(server_like):
    proc, port = server_like
    roles: dict[int, str] = {}
    start = tree_cpu_by_role(proc.pid, port, roles)
    time.sleep(1.5)
    end = tree_cpu_by_role(proc.pid, port, roles)
    assert roles[proc.pid] == "gateway"
    assert "engine" in roles.values()
    engine = end["engine"] - start["engine"]
    gateway = end["gateway"] - start["gateway"]
    assert engine > 0.3, (start, end)  # the busy child, on a loaded box still a good part of 1.5 s
    assert gateway < 0.2 * engine, (start, end)  # the sleeping root
    assert end["engine_system"] - start["engine_system"] < 0.5 * engine  # a busy loop runs in user space


def test_without_a_port_the_whole_tree_is_one_gateway(server_like):
    proc, _ = server_like
    split = tree_cpu_by_role(proc.pid)
    assert split["engine"] == 0.0 and split["gateway"] > 0.0


def test_cpu_costs_per_chunk_and_per_token():
    start = {"gateway": 1.0, "engine": 2.0, "other": 0.0, "gateway_system": 0.5}
    end = {"gateway": 3.0, "engine": 3.0, "other": 0.5, "gateway_system": 1.0}
    out = cpu_costs(start, end, chunks=1000, tokens=4000)
    assert out["cpu_s"] == pytest.approx(3.5)
    assert out["cpu_us_per_chunk"] == pytest.approx(3500.0)
    assert out["cpu_us_per_token"] == pytest.approx(875.0)
    assert out["tokens_per_chunk"] == pytest.approx(4.0)
    assert out["gateway_cpu_us_per_chunk"] == pytest.approx(2000.0)
    assert out["engine_cpu_us_per_token"] == pytest.approx(250.0)
    assert out["other_cpu_s"] == pytest.approx(0.5)
    assert out["gateway_system_share"] == pytest.approx(0.25)  # 0.5 of its 2.0 s in the kernel
    assert out["engine_system_share"] == 0.0
    assert cpu_costs(None, end, 1, 1)["cpu_s"] is None
    assert cpu_costs(start, end, chunks=0, tokens=0)["cpu_us_per_token"] is None
