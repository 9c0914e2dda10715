"""Profile the gateway process of `seedance serve --engine process` under the transports bench's WebSocket load.

    PYTHONPATH=$PWD python scripts/profile_gateway.py --clients 1000 --out /tmp/prof [--server-path TREE]

Starts a synthetic server the way `seedance bench transports --engine process` does (same settings), runs one
WebSocket level (closed loop, 32 tokens per request, 50 tokens/s per stream), and records the gateway process
with py-spy (`--format raw --nolineno --nonblocking`, GIL-holding samples only by default) over the measured
window. Prints the level's CPU split (gateway / engine µs per chunk and per token) and the profile's top
functions by own and by inclusive share of the samples; the raw stacks stay in --out for a flame graph.
`--role engine` records the engine-core process instead (its one loop thread: run `--idle` to see its waits too).
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from seedance.bench.loadgen import raise_nofile_limit
from seedance.bench.transports_bench import process_role, run_level, start_server


def top_functions(raw: Path, n: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """From py-spy's raw (collapsed) stacks: total samples, the top n by own samples and by inclusive samples
    (a function counted once per stack it appears in)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = stack.split(";")
        total += k
        own[frames[-1]] += k
        for frame in set(frames[1:]):  # the first frame is the process / thread
            incl[frame] += k
    return total, own.most_common(n), incl.most_common(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--ramp", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--server-path", default=None, help="a source tree whose seedance the server runs")
    parser.add_argument("--ws-stack", default=None)
    parser.add_argument("--idle", action="store_true", help="also samples not holding the GIL (py-spy --idle)")
    parser.add_argument("--native", action="store_true", help="py-spy --native (Cython / C frames)")
    parser.add_argument("--role", choices=("gateway", "engine"), default="gateway", help="the process to record")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="/tmp/profile-gateway")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raise_nofile_limit()
    workdir = Path(tempfile.mkdtemp(prefix="seedance-prof-"))
    server = start_server("synthetic", args.rate, args.clients, workdir, "process", args.server_path,
                          ws_stack=args.ws_stack)
    raw = out / f"{args.role}.raw"
    pid = server.pid
    if args.role == "engine":
        import psutil

        pid = next(p.pid for p in psutil.Process(server.pid).children(recursive=True)
                   if process_role(p, server.port) == "engine")
    spy = [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
           "--format", "raw", "--nolineno", "-d", str(int(args.duration)), "-r", "100", "-o", str(raw)]
    # --native unwinds a stopped process: py-spy refuses it with --nonblocking
    spy += [*(["--idle"] if args.idle else ["--gil"]), *(["--native"] if args.native else ["--nonblocking"])]
    spy_log = open(out / "py-spy.log", "w")  # noqa: SIM115 - closed after the level
    try:
        with ProcessPoolExecutor(max_workers=args.processes, mp_context=mp.get_context("spawn")) as pool:
            # run_level starts its clock 1 + 0.5 s per load process from now; the profile starts after the ramp
            delay = 1.0 + 0.5 * args.processes + args.ramp
            recorder = threading.Timer(delay, lambda: subprocess.run(spy, stdout=spy_log, stderr=spy_log,
                                                                     check=False))
            recorder.start()
            row = run_level(pool, server, "websocket", args.clients, args.processes, args.max_tokens,
                            args.duration, ramp=args.ramp)
            recorder.join()
    finally:
        spy_log.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    srv = row["server"]
    (out / "level.json").write_text(json.dumps(row, indent=2) + "\n")
    print(f"{args.clients} clients: {row['chunks_per_s']:.0f} chunks/s, {row['tokens_per_chunk']:.2f} tokens/chunk, "
          f"{row['failures']} failures; CPU µs/chunk {srv['cpu_us_per_chunk']:.1f} (gateway "
          f"{srv['gateway_cpu_us_per_chunk']:.1f}, engine {srv['engine_cpu_us_per_chunk']:.1f}); µs/token "
          f"{srv['cpu_us_per_token']:.1f} (gateway {srv['gateway_cpu_us_per_token']:.1f}); gateway in the kernel "
          f"{100 * (srv['gateway_system_share'] or 0):.0f}%")
    if not raw.exists():
        print(f"no profile: py-spy failed ({out / 'py-spy.log'})")
        return
    total, own, incl = top_functions(raw, args.top)
    print(f"\n{args.role} profile: {total} samples ({'all' if args.idle else 'holding the GIL'})")
    for title, rows in (("own", own), ("inclusive", incl)):
        print(f"\n| {title} % | function |\n|---|---|")
        for name, k in rows:
            print(f"| {100 * k / total:.1f} | `{name}` |")


if __name__ == "__main__":
    main()
