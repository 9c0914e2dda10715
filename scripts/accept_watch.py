"""Where a WebSocket client waits while the server streams: one transports-bench level, watched from the kernel.

    PYTHONPATH=$PWD python scripts/accept_watch.py --clients 2000 [--server-path TREE] [--baseline] [--workers 2]
        [--profile /tmp/ramp.raw]

Runs one WebSocket level as `seedance bench transports --backend synthetic --engine process` does (same settings,
same load generator) and samples every --every seconds, by `ss` and /proc/net/netstat: the clients whose SYN is
unanswered (`syn-sent`: a dropped SYN waits 1, 2, 4... s to be sent again), the server's established sockets,
its accept queue (accepted by the kernel, not yet by the event loop), the listen overflows / drops, and the
gateway's, the engine's and the load's CPU. Beside it, how many clients had their 101 by then (the load
generator's own clock). So a client that never connected is placed: never got its SYN answered (the kernel's
queues), waits in the accept queue (the loop does not accept), or was accepted and waits for its 101 (the
head router / upgrade path, or the loop is busy elsewhere). --profile records the gateway with py-spy (raw
stacks, GIL-holding samples) over the ramp.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil

from seedance.bench.loadgen import raise_nofile_limit
from seedance.bench.transports_bench import Server, process_role, run_level, start_server, wait_for_workers

_NETSTAT = ("ListenOverflows", "ListenDrops", "SyncookiesSent", "TCPReqQFullDoCookies", "TCPReqQFullDrop")


def _count(args: list[str]) -> int:
    out = subprocess.run(["ss", "-Htn", *args], capture_output=True, text=True, check=False).stdout
    return out.count("\n")


def accept_queue(port: int) -> int:
    """The listening sockets' Recv-Q: connections the kernel completed that the server has not accepted."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.split())


def netstat() -> dict[str, int]:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    out = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            out = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
    return {k: out.get(k, 0) for k in _NETSTAT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--server-path", default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--baseline", action="store_true", help="the bare picows server instead")
    parser.add_argument("--profile", default=None, help="py-spy raw stacks of the gateway over the ramp, to this file")
    args = parser.parse_args()
    raise_nofile_limit()
    workdir = Path(tempfile.mkdtemp(prefix="seedance-aw-"))
    sources = 1
    if args.baseline:
        from seedance.bench.picows_baseline import launch_baseline

        proc = launch_baseline(args.rate, str(workdir / "baseline.log"))
        server = Server(proc.url, proc)
    else:
        server = start_server("synthetic", args.rate, args.clients, workdir, "process", args.server_path,
                              args.workers)
        if args.workers and args.workers > 1:
            sources = 64
            wait_for_workers(server.url, args.workers, sources)
    port = server.port
    samples: list[tuple] = []
    stop = threading.Event()
    procs: dict[int, tuple[psutil.Process, str]] = {}

    def cpu_by_role() -> dict[str, float]:
        try:
            root = psutil.Process(server.pid)
            tree = [root, *root.children(recursive=True)]
            load = psutil.Process().children(recursive=True)
        except psutil.Error:
            tree, load = [], []
        for p in tree:
            if p.pid not in procs:
                with contextlib.suppress(psutil.Error):
                    procs[p.pid] = (p, process_role(p, port))
        for p in load:
            procs.setdefault(p.pid, (p, "load"))
        out: dict[str, float] = {}
        for p, role in list(procs.values()):
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            out[role] = out.get(role, 0.0) + t.user + t.system
        return out

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):  # a load process that ended between the listing and the read
                samples.append((time.time() - start, _count(["state", "syn-sent", f"dport = :{port}"]),
                                _count(["state", "established", f"sport = :{port}"]), accept_queue(port),
                                netstat(), cpu_by_role()))
            stop.wait(args.every)

    start = time.time() + 1.0 + 0.5 * args.processes  # run_level's own clock starts then
    try:
        with ProcessPoolExecutor(max_workers=args.processes, mp_context=mp.get_context("spawn")) as pool:
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            if args.profile:
                cmd = [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                       str(server.pid), "--format", "raw", "--nolineno", "--nonblocking", "--gil", "-r", "100",
                       "-d", str(int(args.ramp + 2)), "-o", args.profile]
                threading.Timer(max(0.0, start - time.time()), lambda: subprocess.run(
                    cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)).start()
            row = run_level(pool, server, "websocket", args.clients, args.processes, 32, args.duration,
                            ramp=args.ramp, source_addresses=sources)
            stop.set()
            watcher.join()
    finally:
        stop.set()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    c = row["connections"]
    print(f"{args.clients} clients: connected {c['connected']}, never {row['never_connected']}, all after "
          f"{c['time_to_all_connected_s']}, peak {c['handshakes_per_s_peak']}/s, handshake ms {c['handshake_ms']}, "
          f"errors {row['errors']} timeouts {row['timeouts']} (connect {row['connect_timeouts']}), "
          f"chunks/s {row['chunks_per_s']:.0f}, tokens/chunk {row['tokens_per_chunk'] or 0:.2f}")
    for sample in row["error_samples"]:
        print("  error:", sample)
    by_s = c.get("connected_by_s") or []
    print("t_s syn_sent established accept_q overflows drops cookies | connected(101) | cpu% gateway engine load")
    base = samples[0][4] if samples else {}
    prev_t, prev_cpu = None, None
    for t, syn, est, q, ns, cpu in samples:
        done = by_s[min(int(t), len(by_s) - 1)] if by_s and t >= 0 else 0
        if prev_cpu is not None:
            dt = t - prev_t
            pct = {k: 100 * (cpu.get(k, 0) - prev_cpu.get(k, 0)) / dt for k in ("gateway", "engine", "load")}
        else:
            pct = {"gateway": 0, "engine": 0, "load": 0}
        print(f"{t:6.1f} {syn:6d} {est:6d} {q:5d} {ns['ListenOverflows'] - base['ListenOverflows']:6d} "
              f"{ns['ListenDrops'] - base['ListenDrops']:6d} {ns['SyncookiesSent'] - base['SyncookiesSent']:6d} | "
              f"{done:6d} | "
              f"{pct['gateway']:5.0f} {pct['engine']:5.0f} {pct['load']:5.0f}")
        prev_t, prev_cpu = t, cpu


if __name__ == "__main__":
    main()
