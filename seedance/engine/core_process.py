"""The engine-core process: LLMEngine steps in a process of their own, commands in and one batch per step out.

The gateway (process_engine.py) starts it with one end of a socket pair. Its loop: read whatever commands have
arrived (without waiting while there is work, blocking while idle), apply them between steps, run one step,
send one `Step` frame with all its events. No event loop, no threads but torch's own and the vision thread:
the engine never shares a GIL with the code that parses and writes to clients.

A prompt's images arrive as pixels (EncodeImages): the vision tower and projector run on the core's vision
thread, beside the step loop rather than in it, and the features go back with the next Step frame (vLLM v1 runs
its encoder in the engine core too; the gateway has no weights). A guided request's grammar is compiled on the
guide thread before its Add is admitted (llguidance releases the GIL while it compiles; in the loop, compiles of
up to 57 ms CPU stretched the gap between two steps every running stream waits on). An Embed's forward runs in
the loop, a slice between two steps: at most `embedding_tokens_per_turn` tokens of inputs a turn (one input at
least), so a large group is spread over several turns. On a thread of its own it contended with the steps for
the GIL: steps of ~15 ms CPU took 50-70 ms while an embedding ran beside them (docs/reliability.md).

If the gateway goes away (EOF on the socket) the core exits; if the core dies, the gateway sees EOF and fails
the requests in flight (process_engine.py).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from seedance.engine.config import EngineConfig
from seedance.engine.core_protocol import (
    Abort,
    Add,
    Delivered,
    Embed,
    Embedded,
    Encoded,
    EncodeImages,
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
    embeds_from_wire,
    frame,
    tensor_bytes,
    tensor_from_bytes,
)
from seedance.engine.errors import EngineError, InvalidRequest
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.thread_priority import lower_this_thread
from seedance.models.loader import resolve_model_path
from seedance.models.pooling import mean_pooled_embeddings

log = logging.getLogger("seedance.engine.core")
STATS_INTERVAL_S = 0.05  # stats ride on a Step frame at most this often (and whenever the core goes idle)
STALL_WAIT_S = 0.005  # nothing could run (no KV room yet): wait this long for a command before trying again
# A gateway max_steps_ahead steps behind holds the next step this long at most: a pace, not a lock (a gateway that
# never answered would otherwise stop every stream).
AHEAD_MAX_WAIT_S = 1.0


NICER_THREADS = frozenset({"seedance-guide"})  # beside threads that run at EngineConfig.beside_nice


class _Gateway:
    """One connected gateway: its socket, its half-read frames, what it gets with the next Step frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = FrameBuffer()
        self.events: list[TokenEvent] = []
        self.admitted: list[str] = []
        self.refused: list[Refusal] = []
        self.aborted: list[TokenEvent] = []
        self.embedded: list[Embedded] = []
        self.encoded: list[Encoded] = []
        self.requests: set[str] = set()
        self.unacked = 0  # Step frames with events sent to it that it has not said it Delivered

    def pending(self) -> bool:
        return bool(self.events or self.admitted or self.refused or self.aborted or self.embedded or self.encoded)


class CoreLoop:
    """One engine for one or more gateways (`--workers N`: each gateway prefixes its request ids, so they never
    collide; a step's events are sorted to their gateways). Not thread-safe: the process's one engine thread."""

    def __init__(self, engine: LLMEngine, sock: socket.socket | None = None,
                 listener: socket.socket | None = None, ready: bytes = b"") -> None:
        self.engine = engine
        self.listener = listener  # accepts more gateways (each is sent `ready` first)
        self.ready = ready
        self.gateways: dict[socket.socket, _Gateway] = {}
        self.owner: dict[str, _Gateway] = {}
        if sock is not None:
            self.gateways[sock] = _Gateway(sock)
        self.stats_sent_at = 0.0
        self.shutdown = False
        ahead = engine.config.max_steps_ahead
        self.max_ahead = ahead if ahead is not None and ahead > 0 else None  # EngineConfig.max_steps_ahead
        # Work beside the step loop, one thread each, started on first use (a step never waits for it): the vision
        # tower, grammar compiles. What finishes is handed back as a callable run on the loop's thread
        # (`finished`); it wakes the loop through this socket pair and rides on the next Step frame.
        self.executors: dict[str, ThreadPoolExecutor] = {}
        self.finished: deque[Callable[[], None]] = deque()
        self.compiling: dict[str, tuple[_Gateway, Add]] = {}  # guided Adds whose grammar is being compiled
        # Embed groups being computed, a slice a loop turn (embed_slice); each with the vectors done so far
        self.embedding: deque[tuple[_Gateway, Embed, list[torch.Tensor]]] = deque()
        self.embedding_tokens_per_turn = max(1, engine.config.embedding_tokens_per_turn)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)  # a full buffer already holds a wake-up: the send may be dropped

    @property
    def gone(self) -> bool:
        """No gateway left to serve (the socket-pair gateway closed, or every worker did)."""
        return not self.gateways and self.listener is None

    def apply(self, gateway: _Gateway, command) -> None:
        engine = self.engine
        match command:
            case Add() if command.params.guided is not None and engine.guides is not None \
                    and not engine.guides.cached(command.params.guided):
                self.compile_then_add(gateway, command)
            case Add():
                self.add(gateway, command)
            case Embed():
                if self.engine.embedding_shape is None:
                    gateway.embedded.append(Embedded(
                        command.key, error="this server runs the synthetic backend: it has no model to compute "
                        "embeddings with", code=InvalidRequest.code))
                elif not command.inputs or not all(command.inputs):
                    gateway.embedded.append(Embedded(command.key, error="an embedding needs at least one token",
                                                     code=InvalidRequest.code))
                else:
                    self.embedding.append((gateway, command, []))
            case EncodeImages():
                self.encode_images(gateway, command)
            case Abort() if command.request_id in self.compiling:  # not admitted yet: it never will be
                del self.compiling[command.request_id]
                gateway.aborted.append(TokenEvent(command.request_id, 0, -1, "", finish_reason=FinishReason.CANCELLED))
            case SetPriority() if command.request_id in self.compiling:
                self.compiling[command.request_id][1].priority = command.priority
            case Abort():
                event = engine.abort(command.request_id, keep_tokens=command.keep_tokens)
                if event is None:  # already finished or never admitted: the gateway still gets one final event
                    event = TokenEvent(command.request_id, 0, -1, "", finish_reason=FinishReason.CANCELLED)
                self._forget(command.request_id)
                gateway.aborted.append(event)
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
            case Delivered():
                gateway.unacked = max(0, gateway.unacked - command.steps)

    def add(self, gateway: _Gateway, command: Add) -> None:
        """Admit the request into the engine, or refuse it (the refusal goes back with the next Step frame)."""
        engine = self.engine
        try:
            try:
                embeds = embeds_from_wire(command.embeds)
            except ValueError as err:
                raise InvalidRequest(str(err)) from None
            if command.params.guided is not None and engine.guides is not None:
                engine.guides.compile(command.params.guided)  # cached (or compiled beside); a bad grammar refuses
            engine.add_request(command.request_id, command.token_ids, command.params, command.priority,
                               command.arrival, pin_key=command.pin_key, prompt_embeds=embeds, client=command.client)
            gateway.admitted.append(command.request_id)
            self.owner[command.request_id] = gateway
            gateway.requests.add(command.request_id)
        except EngineError as err:
            gateway.refused.append(Refusal(command.request_id, err.code, str(err)))

    def compile_then_add(self, gateway: _Gateway, command: Add) -> None:
        """A grammar not compiled yet: compile it on the guide thread (llguidance releases the GIL), then admit
        the request on the loop. Meanwhile it is `compiling`: an Abort ends it unadmitted, a SetPriority is kept."""
        self.compiling[command.request_id] = (gateway, command)
        guides = self.engine.guides
        failed: list[EngineError] = []

        def compile_it() -> None:
            try:
                guides.compile(command.params.guided)
            except EngineError as err:  # a bad grammar (or past its fuel): this request's refusal
                failed.append(err)

        def then_add() -> None:
            if self.compiling.get(command.request_id, (None, None))[1] is not command:
                return  # aborted meanwhile, or its gateway left
            del self.compiling[command.request_id]
            if failed:
                gateway.refused.append(Refusal(command.request_id, failed[0].code, str(failed[0])))
            else:
                self.add(gateway, command)

        self.beside("seedance-guide", gateway, compile_it, then=then_add)

    def beside(self, thread: str, gateway: _Gateway, work: Callable[[], object], into: str | None = None,
               then: Callable[[], None] | None = None) -> None:
        """Run work on that thread of its own (one at a time, in order); its result goes into the gateway's list
        `into` for the next Step frame and `then` runs, both on the loop's thread once it is done, unless the
        gateway left meanwhile."""
        executor = self.executors.get(thread)
        if executor is None:
            # a grammar compile runs in llguidance without the GIL: that thread can be nicer than the loop. Not the
            # vision tower's, which holds the GIL between its ops: descheduled, it would keep the loop waiting
            nice = self.engine.config.beside_nice if thread in NICER_THREADS else 0
            executor = self.executors[thread] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=thread, initializer=lower_this_thread, initargs=(nice,))

        def run() -> None:
            try:
                result = work()
            except Exception:  # work answers its own failures; this is a bug, and must not leave anyone waiting
                log.exception("engine work beside the loop failed")
                result = None

            def deliver() -> None:
                if gateway.sock in self.gateways:
                    if into is not None and result is not None:
                        getattr(gateway, into).append(result)
                    if then is not None:
                        then()

            self.finished.append(deliver)
            with contextlib.suppress(OSError):
                self.wake_w.send(b"\0")

        executor.submit(run)

    def embed_slice(self) -> None:
        """The next slice of the oldest Embed group: its next inputs, up to embedding_tokens_per_turn tokens (one
        input at least), through one forward; the group's answer goes out with the Step frame after its last."""
        while self.embedding and self.embedding[0][0].sock not in self.gateways:
            self.embedding.popleft()  # its gateway went away
        if not self.embedding:
            return
        gateway, command, done = self.embedding[0]
        inputs, budget = command.inputs, self.embedding_tokens_per_turn
        end, tokens = len(done), 0
        while end < len(inputs) and (end == len(done) or tokens + len(inputs[end]) <= budget):
            tokens += len(inputs[end])
            end += 1
        try:
            done += mean_pooled_embeddings(self.engine.runner.model, inputs[len(done):end])
        except Exception as err:  # this request fails, the engine goes on
            log.exception("embedding failed")
            self.embedding.popleft()
            gateway.embedded.append(Embedded(command.key, error=f"{type(err).__name__}: {err}"))
            return
        if len(done) == len(inputs):
            self.embedding.popleft()
            gateway.embedded.append(Embedded(command.key, int(done[0].shape[0]),
                                             b"".join(v.float().numpy().tobytes() for v in done)))

    def encode_images(self, gateway: _Gateway, command: EncodeImages) -> None:
        """Start the images' tower and projector on the vision thread; the answer goes out when they are done."""
        vision = self.engine.vision
        if vision is None:
            gateway.encoded.append(Encoded(command.key, error="this model takes no images", code=InvalidRequest.code))
            return
        try:
            pixels = tensor_from_bytes(command.pixels, command.dtype, command.shape)
        except ValueError as err:
            gateway.encoded.append(Encoded(command.key, error=str(err), code=InvalidRequest.code))
            return

        def run() -> Encoded:
            try:
                features = vision.encode_pixels(pixels)  # one [rows, dim] tensor per image (n >= 1 images)
                dtype, data = tensor_bytes(torch.cat(features))
                return Encoded(command.key, dtype, [f.shape[0] for f in features], int(features[0].shape[1]), data)
            except Exception as err:  # this request fails, the engine goes on
                log.exception("image encoding failed")
                return Encoded(command.key, error=f"{type(err).__name__}: {err}")

        self.beside("seedance-vision", gateway, run, "encoded")

    def _take_finished(self) -> None:
        """What the threads beside the loop finished, delivered on the loop's thread."""
        with contextlib.suppress(OSError):
            while self.wake_r.recv(4096):
                pass
        while self.finished:
            self.finished.popleft()()

    def _forget(self, request_id: str) -> None:
        gateway = self.owner.pop(request_id, None)
        if gateway is not None:
            gateway.requests.discard(request_id)

    def _drop(self, gateway: _Gateway) -> None:
        """A gateway went away: its requests end here (nobody would read them)."""
        del self.gateways[gateway.sock]
        for request_id, (owner, _) in list(self.compiling.items()):
            if owner is gateway:
                del self.compiling[request_id]
        for request_id in list(gateway.requests):
            self.engine.abort(request_id)
            self.owner.pop(request_id, None)
        gateway.sock.close()

    def read_commands(self, timeout: float | None) -> None:
        """Apply every command that arrives within timeout (0: only those already here; None: wait for one)."""
        while True:
            watched = [*self.gateways, self.wake_r, *([self.listener] if self.listener is not None else [])]
            ready, _, _ = select.select(watched, [], [], timeout)
            if not ready:
                return
            for sock in ready:
                if sock is self.wake_r:
                    self._take_finished()
                    continue
                if sock is self.listener:
                    conn, _ = self.listener.accept()
                    conn.setblocking(True)
                    conn.sendall(self.ready)
                    self.gateways[conn] = _Gateway(conn)
                    continue
                gateway = self.gateways.get(sock)
                if gateway is None:
                    continue
                try:
                    data = sock.recv(1 << 20)
                except OSError:
                    data = b""
                if not data:
                    self._drop(gateway)
                    continue
                for body in gateway.frames.feed(data):
                    for command in decode_commands(body):
                        try:
                            self.apply(gateway, command)
                        except Exception:  # one bad command must not stop the engine
                            log.exception("engine command failed: %r", command)
            if self.gone or self.shutdown:
                return
            timeout = 0  # drain what else is already here, then go on

    def behind(self) -> bool:
        """A gateway has max_steps_ahead Step frames it has not delivered yet: the next step waits for it."""
        limit = self.max_ahead
        return limit is not None and any(g.unacked >= limit for g in self.gateways.values())

    def wait_for_gateways(self) -> None:
        """Apply commands until no gateway is max_steps_ahead behind (its Delivered came), or AHEAD_MAX_WAIT_S."""
        deadline = time.monotonic() + AHEAD_MAX_WAIT_S
        while self.behind() and not (self.shutdown or self.gone):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.read_commands(left)

    def route(self, events: list[TokenEvent]) -> None:
        """A step's events to the gateways that own them (one gateway: all of them, no lookups)."""
        if len(self.gateways) == 1:
            gateway = next(iter(self.gateways.values()))
            gateway.events = events
            for request_id in [e.request_id for e in events if e.finish_reason is not None]:
                self._forget(request_id)
            return
        owner = self.owner
        for event in events:
            gateway = owner.get(event.request_id)
            if gateway is not None:
                gateway.events.append(event)
                if event.finish_reason is not None:
                    self._forget(event.request_id)

    def send(self, started: float | None, seconds: float, force_stats: bool = False) -> None:
        now = time.monotonic()
        stats = None
        if force_stats or now - self.stats_sent_at >= STATS_INTERVAL_S:
            stats, self.stats_sent_at = self.engine.stats(), now
        for gateway in list(self.gateways.values()):
            if not (gateway.pending() or stats):
                continue
            message = Step(gateway.events, gateway.admitted, gateway.refused, gateway.aborted, started, seconds,
                           stats, gateway.embedded, gateway.encoded)
            if gateway.events:
                gateway.unacked += 1  # it answers Delivered once its streams have them
            gateway.events, gateway.admitted, gateway.refused, gateway.aborted = [], [], [], []
            gateway.embedded, gateway.encoded = [], []
            try:
                gateway.sock.sendall(frame(message))  # blocks while that gateway's buffer is full: back-pressure
            except OSError:
                self._drop(gateway)

    def run(self) -> None:
        engine = self.engine
        stalled = False
        while not (self.shutdown or self.gone):
            busy = engine.has_work()
            self.read_commands(STALL_WAIT_S if stalled else 0 if busy or self.embedding else None)
            if busy and self.behind():
                self.wait_for_gateways()
            if self.shutdown or self.gone:
                break
            if self.embedding:
                self.embed_slice()
            started, seconds = None, 0.0
            if engine.has_work():
                steps = engine.steps
                started = time.perf_counter()
                events: list[TokenEvent] = []
                try:
                    events = engine.step()
                except Exception:
                    log.exception("engine step crashed")
                seconds = time.perf_counter() - started
                stalled = not events and engine.steps == steps
                self.route(events)
            else:
                stalled = False
            self.send(started, seconds, force_stats=not engine.has_work())
        if self.shutdown:  # every open request ends with cancelled, then the gateways' readers see EOF
            for request_id in list(engine.requests):
                gateway = self.owner.get(request_id)
                if (event := engine.abort(request_id)) is not None and gateway is not None:
                    gateway.aborted.append(event)
            with contextlib.suppress(OSError):
                self.send(None, 0.0, force_stats=True)
        for executor in self.executors.values():  # work under way finishes; what is queued is dropped
            executor.shutdown(wait=False, cancel_futures=True)
        self.wake_r.close()
        self.wake_w.close()


def _load(config: EngineConfig) -> tuple[LLMEngine | None, bytes]:
    """The engine and the frame that tells a gateway it is ready (or that loading failed). The spawn targets
    (core_spawn.py) turn the collector off for the imports and the load: ~0.2-0.5 s of CPU less here (one core
    start-up, gc off against on, 3 pairs), as `seedance serve` does; then what start-up built goes to the
    permanent generation (server/app.py settle_heap has the why) and collection is back on."""
    try:
        engine = LLMEngine.from_config(config)
        if config.warmup:
            engine.warmup()
    except Exception as err:
        log.debug("model failed to load", exc_info=True)
        return None, frame(LoadFailed(f"{type(err).__name__}: {err}"))
    finally:
        gc.freeze()
        gc.enable()
    tokenizer = pickle.dumps(engine.tokenizer) if engine.tokenizer is not None else None
    ready = Ready(engine.max_model_len, engine.model_name, engine.load_times, tokenizer, engine.stats(),
                  dtype=engine.config.dtype, hidden_size=engine.hidden_size, takes_images=engine.takes_images,
                  embedding_shape=engine.embedding_shape,
                  image_front=pickle.dumps(engine.vision.front()) if engine.vision is not None else None,
                  model_path=None if config.synthetic_rate else str(resolve_model_path(config.model)))
    return engine, frame(ready)


def _child_setup(log_level: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole group: the gateway shuts us down
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[core]: %(message)s")


def serve_core(config: EngineConfig, path: str, log_level: int = logging.WARNING) -> None:
    """`--workers N`: one engine for N gateway processes, which connect to the Unix socket at path (bound
    before loading, so they can connect at once; each gets Ready, or LoadFailed, when loading is done). A
    gateway that goes away takes its requests with it; the core runs until SIGTERM (the supervisor's, once its
    workers have stopped)."""
    _child_setup(log_level)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    engine, ready = _load(config)
    if engine is None:
        deadline = time.monotonic() + 30
        listener.settimeout(1)
        while time.monotonic() < deadline:  # tell whoever connects why, then stop
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                conn.sendall(ready)
                conn.close()
        return
    log.info("engine core ready in process %d for gateways on %s", os.getpid(), path)
    CoreLoop(engine, listener=listener, ready=ready).run()


def run_core(config: EngineConfig, sock: socket.socket, log_level: int = logging.WARNING) -> None:
    """The child's entry point (multiprocessing spawn): load the model, say Ready, loop until told to stop."""
    _child_setup(log_level)
    sock.setblocking(True)
    engine, ready = _load(config)
    with contextlib.suppress(OSError):
        sock.sendall(ready)
    if engine is None:
        return
    log.info("engine core ready in process %d", os.getpid())
    try:
        CoreLoop(engine, sock).run()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway went away first
    finally:
        sock.close()
