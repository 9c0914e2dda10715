"""The engine-core process: LLMEngine steps in a process of their own, commands in and one batch per step out.

The gateway (process_engine.py) starts it with one end of a socket pair. Its loop: read whatever commands have
arrived (without waiting while there is work, blocking while idle), apply them between steps, run one step,
send one `Step` frame with all its events. No event loop, no threads but torch's own: the engine never shares
a GIL with the code that parses and writes to clients.

If the gateway goes away (EOF on the socket) the core exits; if the core dies, the gateway sees EOF and fails
the requests in flight (process_engine.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import time

from seedance.engine.config import EngineConfig
from seedance.engine.core_protocol import (
    Abort,
    Add,
    FrameBuffer,
    LoadFailed,
    Pause,
    Ready,
    Refusal,
    Resume,
    SetPriority,
    Shutdown,
    Step,
    Unpin,
    decode_commands,
    frame,
)
from seedance.engine.errors import EngineError
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.llm_engine import LLMEngine

log = logging.getLogger("seedance.engine.core")
STATS_INTERVAL_S = 0.05  # stats ride on a Step frame at most this often (and whenever the core goes idle)
STALL_WAIT_S = 0.005  # nothing could run (no KV room yet): wait this long for a command before trying again


class CoreLoop:
    """One engine, one socket; not thread-safe (it is the process's only thread doing engine work)."""

    def __init__(self, engine: LLMEngine, sock: socket.socket) -> None:
        self.engine = engine
        self.sock = sock
        self.frames = FrameBuffer()
        self.admitted: list[str] = []
        self.refused: list[Refusal] = []
        self.aborted: list[TokenEvent] = []
        self.stats_sent_at = 0.0
        self.shutdown = False
        self.gone = False  # the gateway closed its end

    def apply(self, command) -> None:
        engine = self.engine
        match command:
            case Add():
                try:
                    engine.add_request(command.request_id, command.token_ids, command.params, command.priority,
                                       command.arrival, pin_key=command.pin_key)
                    self.admitted.append(command.request_id)
                except EngineError as err:
                    self.refused.append(Refusal(command.request_id, err.code, str(err)))
            case Abort():
                event = engine.abort(command.request_id)
                if event is None:  # already finished or never admitted: the gateway still gets one final event
                    event = TokenEvent(command.request_id, 0, -1, "", finish_reason=FinishReason.CANCELLED)
                self.aborted.append(event)
            case Pause() if command.request_id in engine.requests:
                engine.pause(command.request_id)
            case Resume() if command.request_id in engine.requests:
                engine.resume(command.request_id)
            case SetPriority() if command.request_id in engine.requests:
                engine.set_priority(command.request_id, command.priority)
            case Unpin():
                engine.unpin(command.key)
            case Shutdown():
                self.shutdown = True

    def read_commands(self, timeout: float | None) -> None:
        """Apply every command that arrives within timeout (0: only those already here; None: wait for one)."""
        while True:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return
            data = self.sock.recv(1 << 20)
            if not data:
                self.gone = True
                return
            for body in self.frames.feed(data):
                for command in decode_commands(body):
                    try:
                        self.apply(command)
                    except Exception:  # one bad command must not stop the engine
                        log.exception("engine command failed: %r", command)
            timeout = 0  # drain what else is already here, then go on

    def send(self, events: list, started: float | None, seconds: float, force_stats: bool = False) -> None:
        now = time.monotonic()
        stats = None
        if force_stats or now - self.stats_sent_at >= STATS_INTERVAL_S:
            stats, self.stats_sent_at = self.engine.stats(), now
        if not (events or self.admitted or self.refused or self.aborted or stats):
            return
        message = Step(events, self.admitted, self.refused, self.aborted, started, seconds, stats)
        self.admitted, self.refused, self.aborted = [], [], []
        self.sock.sendall(frame(message))  # blocks while the gateway's socket buffer is full: back-pressure

    def run(self) -> None:
        engine = self.engine
        stalled = False
        while not (self.shutdown or self.gone):
            busy = engine.has_work()
            self.read_commands(STALL_WAIT_S if stalled else 0 if busy else None)
            if self.shutdown or self.gone:
                break
            events: list[TokenEvent] = []
            started, seconds = None, 0.0
            if engine.has_work():
                steps = engine.steps
                started = time.perf_counter()
                try:
                    events = engine.step()
                except Exception:
                    log.exception("engine step crashed")
                seconds = time.perf_counter() - started
                stalled = not events and engine.steps == steps
            else:
                stalled = False
            self.send(events, started, seconds, force_stats=not engine.has_work())
        if self.shutdown:  # every open request ends with cancelled, then the gateway's reader sees EOF
            for request_id in list(engine.requests):
                if (event := engine.abort(request_id)) is not None:
                    self.aborted.append(event)
            with contextlib.suppress(OSError):
                self.send([], None, 0.0, force_stats=True)


def run_core(config: EngineConfig, sock: socket.socket, log_level: int = logging.WARNING) -> None:
    """The child's entry point (multiprocessing spawn): load the model, say Ready, loop until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole group: the gateway shuts us down
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[core]: %(message)s")
    sock.setblocking(True)
    try:
        engine = LLMEngine.from_config(config)
        if config.warmup:
            engine.warmup()
    except Exception as err:
        log.debug("model failed to load", exc_info=True)
        with contextlib.suppress(OSError):
            sock.sendall(frame(LoadFailed(f"{type(err).__name__}: {err}")))
        return
    tokenizer = pickle.dumps(engine.tokenizer) if engine.tokenizer is not None else None
    sock.sendall(frame(Ready(engine.max_model_len, engine.model_name, engine.load_times, tokenizer, engine.stats())))
    log.info("engine core ready in process %d", os.getpid())
    try:
        CoreLoop(engine, sock).run()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway went away first
    finally:
        sock.close()
