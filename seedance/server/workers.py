"""`seedance serve --workers N`: N gateway processes on one port in front of one engine process.

The supervisor (this process) starts the engine core (engine/core_process.py `serve_core`, listening on a
Unix socket in a private temporary directory), then N workers, each a whole `seedance serve` app with a
`ProcessEngine` connected to that core (its request ids and session pin keys prefixed with `w<i>/`). The
workers bind the same port with SO_REUSEPORT, and a BPF program routes each connection by its client address
(server/http/reuseport.py), so one address's connections, limits, tickets and session resumes all live in one
worker and nothing else has to be shared. SIGTERM / SIGINT: every worker drains (its own grace period), then
the core stops. A worker or the core that dies stops the whole group (exit 1): the service manager restarts it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import tempfile

from seedance.engine.core_spawn import shared_core_process
from seedance.server.http.config import ServerConfig
from seedance.server.http.state import Placement

log = logging.getLogger("seedance.server")


def _worker_main(config: ServerConfig, placement: Placement, log_level: str) -> None:
    import asyncio

    from seedance.observability.logs import configure_logging
    from seedance.server.app import serve

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_logging(log_level, config.log_format)
    try:
        import uvloop

        failure = uvloop.run(serve(config, worker=placement))
    except ImportError:
        failure = asyncio.run(serve(config, worker=placement))
    raise SystemExit(1 if failure else 0)


def run_workers(config: ServerConfig, log_level: str = "info") -> int:
    """Run the group until SIGTERM / SIGINT or until a member dies; the exit code."""
    ctx = mp.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="seedance-core-")  # 0700: only this user reaches the engine socket
    path = os.path.join(workdir, "engine.sock")
    core = shared_core_process(config.engine, path, logging.getLogger().level)  # torch is imported there only
    core.start()
    workers = [ctx.Process(target=_worker_main, args=(config, Placement(i, config.workers, path), log_level),
                           name=f"seedance-worker-{i}") for i in range(config.workers)]
    for worker in workers:
        worker.start()
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("seedance: %d workers on %s:%d, engine process %d", config.workers, config.host, config.port, core.pid)
    failed = False
    try:
        members = [core, *workers]
        while not stopping:
            done = mp.connection.wait([p.sentinel for p in members], timeout=0.5)
            if done:
                gone = [p for p in members if p.sentinel in done]
                failed = any(p.exitcode != 0 for p in gone) or core in gone
                log.error("%s exited (%s); stopping the group", ", ".join(p.name for p in gone),
                          ", ".join(str(p.exitcode) for p in gone))
                break
    finally:
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.join(config.shutdown_grace_s + 15)
            if worker.is_alive():
                worker.kill()
                worker.join()
        failed = failed or any(w.exitcode not in (0, -signal.SIGTERM) for w in workers)
        if core.is_alive():
            core.terminate()
        core.join(10)
        shutil.rmtree(workdir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0
