"""Start the engine-core process without importing it here: the child imports core_process (torch, the model
code) itself, so `seedance serve --engine process` can start it first and load the model while the gateway
is still importing and building its app (the two overlap instead of running one after the other).

The spawn targets below are module-level functions of this torch-free module: multiprocessing pickles a
target by name, and naming core_process's own functions would import torch in the parent before the spawn.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from seedance.engine.config import EngineConfig


@dataclass
class SpawnedCore:
    """A core process started with one end of a socket pair; `sock` is the gateway's end (not yet read)."""

    sock: socket.socket
    process: mp.process.BaseProcess
    started_ns: int  # time.time_ns() at the spawn: where the engine's load begins (the cold-start trace)

    def stop(self) -> None:
        """Not needed after all (`seedance serve` refused its settings): hang up and end it now."""
        self.sock.close()
        self.process.kill()
        self.process.join(10)


def _run_core(config: EngineConfig, sock: socket.socket, log_level: int) -> None:
    gc.disable()  # as `seedance serve` does: no collections over start-up's objects (core_process._load ends it)
    from seedance.engine.core_process import run_core

    run_core(config, sock, log_level)


def _serve_core(config: EngineConfig, path: str, log_level: int) -> None:
    gc.disable()
    from seedance.engine.core_process import serve_core

    serve_core(config, path, log_level)


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """multiprocessing's spawn runs the parent's __main__ again in the child (as __mp_main__, from its module
    name or file) so that targets defined there unpickle. Ours live in this module, so the core has no use for
    the CLI's imports (typer and the pydantic it pulls in: ~0.25 s of its start-up here): while the child is
    started, __main__ names neither (what the child reads is taken in Process.start, synchronously)."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def spawn_core(config: EngineConfig, log_level: int = logging.WARNING) -> SpawnedCore:
    """One gateway's own core (core_process.run_core): it starts loading at once and says Ready on the socket."""
    started_ns = time.time_ns()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = mp.get_context("spawn").Process(target=_run_core, args=(config, theirs, log_level),
                                              name="seedance-engine-core", daemon=True)
    with _main_not_reimported():
        process.start()
    theirs.close()
    return SpawnedCore(ours, process, started_ns)


def shared_core_process(config: EngineConfig, path: str, log_level: int) -> mp.process.BaseProcess:
    """`--workers N`: the group's core (core_process.serve_core) listening at path, not started yet."""
    return mp.get_context("spawn").Process(target=_serve_core, args=(config, path, log_level),
                                           name="seedance-engine-core")
