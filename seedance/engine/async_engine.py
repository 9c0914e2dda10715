"""The engine API the transports use, with the engine core on a thread of this process: submit a request,
iterate its TokenEvents (engine_front.py holds what both engine modes share; process_engine.py runs the core
in its own process).

The engine runs its own loop on a dedicated worker thread: it applies queued commands (submit, cancel, pause,
resume, re-prioritise) between steps, never while a step runs, so the engine core needs no locks, and starts the
next step as soon as the last one is done. Each step's events go to the event loop in one thread-safe call, so
the loop formats and writes one step's tokens while the model computes the next, and a transport that drains
its streams after waking sees one step's tokens together and can send them in one write. (Handing every step
to an executor from the event loop instead made the engine wait on the loop twice per token: single-stream
speed through the server was less than half the engine's own.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

from seedance.engine.client_key import client_of
from seedance.engine.config import EngineConfig
from seedance.engine.engine_front import EngineFront, GenerateRequest, RequestStream
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.sampling_params import SamplingParams
from seedance.engine.stats import EngineStats

if TYPE_CHECKING:  # the engine core and torch load with the engine (_load), not with this module: the
    # transports import it for its types, and `--engine process`'s gateway must not pay torch's import
    import torch

    from seedance.engine.llm_engine import LLMEngine

__all__ = ["AsyncEngine", "GenerateRequest", "RequestStream"]
log = logging.getLogger(__name__)


def _load(config: EngineConfig) -> LLMEngine:
    """Runs on the engine thread: all torch work stays on that one thread."""
    from seedance.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_config(config)
    if config.warmup:
        engine.warmup()
    return engine


class AsyncEngine(EngineFront):
    def __init__(self, engine: LLMEngine, executor: ThreadPoolExecutor | None = None) -> None:
        super().__init__(engine.config, engine.tokenizer, engine.max_model_len)
        self.engine = engine
        self._commands: deque[Callable[[], None]] = deque()  # appended on the loop, run on the engine thread
        self._work = threading.Event()  # set when commands are queued: wakes an idle engine thread
        self._submitted = 0  # requests submitted (event loop only)
        self._added = 0  # of them, added to the engine or dropped (engine thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        # All torch work runs on this one thread. A second thread doing torch ops would get its own
        # OpenMP pool, and two pools spinning on the same cores slow each other down several-fold.
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-engine")
        self._thread_done: Future | None = None

    # The model facts, read off the engine itself (a test may swap its parts after construction).
    @property
    def hidden_size(self) -> int | None:
        return self.engine.hidden_size

    @property
    def takes_images(self) -> bool:
        return self.engine.takes_images

    @property
    def vision(self):
        return self.engine.vision

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def embedding_shape(self) -> tuple[int, int] | None:
        return self.engine.embedding_shape

    @classmethod
    async def create(cls, config: EngineConfig) -> AsyncEngine:
        """Load the model (and warm it up, if config.warmup) on the engine thread, off the event loop, and start
        the engine task. engine.load_times says when each load phase ended."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-engine")
        engine = await asyncio.get_running_loop().run_in_executor(executor, _load, config)
        self = cls(engine, executor)
        self.start()
        return self

    def start(self) -> None:
        if self._thread_done is None:
            self._loop = asyncio.get_running_loop()
            self._thread_done = self.executor.submit(self._engine_loop)

    async def close(self) -> None:
        """Cancel every open request and stop the engine thread."""
        self._closed = True
        for request_id in list(self._streams):
            self.cancel(request_id)
        self._work.set()
        if self._thread_done is not None:
            await asyncio.wrap_future(self._thread_done)
            self._thread_done = None
        await asyncio.sleep(0)  # let the last deliveries run
        self.executor.shutdown(wait=True)
        self._stop_threads()

    async def run_on_engine_thread(self, fn: Callable[[], object]) -> object:
        """Run fn on the engine thread between two steps and return its result (torch work that must share
        the engine's OpenMP pool, such as a benchmark's baseline)."""
        if self._thread_done is None:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        done: Future = Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the awaiting coroutine
                done.set_exception(exc)

        self._command(call)
        return await asyncio.wrap_future(done)

    async def compile_guide(self, params: SamplingParams) -> None:
        """Compile (or find cached) the request's grammar on the tokenizer thread, so neither the event loop nor
        the engine's step waits for it; InvalidRequest for a grammar that does not compile."""
        guides = self.engine.guides
        if params.guided is None or guides is None:
            return
        await asyncio.get_running_loop().run_in_executor(self.tokenize_executor, guides.compile, params.guided)

    async def submit(self, request: GenerateRequest) -> RequestStream:
        """Tokenize (off the loop), then admit the request or raise (InvalidRequest, EngineOverloaded); admission
        itself never waits."""
        token_ids = await self.tokenize(request)
        await self.compile_guide(request.params)
        embeds = request.prompt_embeds
        request_id = self._new_id(request)
        pending = self._submitted - self._added
        self.engine.check_admission(request_id, token_ids, request.params, pending=pending, prompt_embeds=embeds)
        stream = RequestStream(self, request_id, len(token_ids))
        stream.is_multimodal = embeds is not None
        self._streams[request_id] = stream
        self._submitted += 1
        arrival = time.monotonic()
        client = client_of(request)

        def add() -> None:
            self._added += 1
            if request_id in self._streams:  # not cancelled before it was added
                self.engine.add_request(request_id, token_ids, request.params, request.priority, arrival,
                                        pin_key=request.pin_key, prompt_embeds=embeds, client=client)

        self._command(add)
        return stream

    def cancel(self, request_id: str, keep_tokens: int | None = None) -> None:
        """End the request between two steps; keep_tokens: see LLMEngine.abort."""
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return

        def abort() -> None:
            event = self.engine.abort(request_id, keep_tokens=keep_tokens)
            if event is None:  # cancelled before it was added
                event = TokenEvent(request_id, 0, -1, "", finish_reason=FinishReason.CANCELLED)
            self._post(self._deliver_to, stream, event)

        self._command(abort)

    async def embed_group(self, inputs: list[list[int]]) -> list[torch.Tensor]:
        from seedance.models.pooling import mean_pooled_embeddings

        return await self.run_on_engine_thread(partial(mean_pooled_embeddings, self.engine.runner.model, inputs))

    def unpin(self, key: str) -> None:
        self._command(lambda: self.engine.unpin(key))

    def pause(self, request_id: str) -> None:
        self._command(lambda: request_id in self.engine.requests and self.engine.pause(request_id))

    def resume(self, request_id: str) -> None:
        self._command(lambda: request_id in self.engine.requests and self.engine.resume(request_id))

    def set_priority(self, request_id: str, priority: int) -> None:
        self._command(lambda: request_id in self.engine.requests and self.engine.set_priority(request_id, priority))

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def _command(self, fn: Callable[[], None]) -> None:
        self._commands.append(fn)
        self._work.set()

    # ---- the engine thread ------------------------------------------------------------------------
    def _apply_commands(self) -> None:
        for _ in range(len(self._commands)):  # the ones queued now: a steady stream must not starve the steps
            fn = self._commands.popleft()
            try:
                fn()
            except Exception:  # one bad command must not stop the engine
                log.exception("engine command failed")

    def _post(self, fn: Callable, *args) -> None:
        """Run fn(*args) on the event loop (from the engine thread); a loop already closed drops it."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _engine_loop(self) -> None:
        while True:
            self._apply_commands()
            if self._closed and not self._commands:
                return
            if not self.engine.has_work():
                self._work.clear()
                if not self._commands and not self._closed:
                    self._work.wait()
                continue
            steps = self.engine.steps
            started = time.perf_counter()
            try:
                events = self.engine.step()
            except Exception:
                log.exception("engine step crashed")
                events = []
            self._record_step(time.perf_counter() - started)
            if events:
                self._post(self._deliver_step, events, started)
            elif self.engine.steps == steps:  # nothing could run (e.g. no KV room yet): wait for a command
                self._work.clear()
                if not self._commands:
                    self._work.wait(0.005)

    # ---- the event loop ---------------------------------------------------------------------------
    @staticmethod
    def _deliver_to(stream: RequestStream, event: TokenEvent) -> None:
        stream._deliver(event)
