"""The engine API the transports use: submit a request, iterate its TokenEvents.

One background task drives the engine. Model steps run on a dedicated worker thread, so the event loop
keeps serving sockets while the model computes. Commands from the loop (submit, cancel, pause, resume,
re-prioritise) are queued and applied between steps, never while a step runs, so the engine core needs
no locks. All events of one step are delivered before the loop yields, so a transport that drains its
streams after waking sees one step's tokens together and can send them in one write.

Text prompts are tokenized (and chat-templated) on their own worker thread, in submission order, after a
length check that refuses a prompt certainly too long for the context without tokenizing it: a megabyte
prompt must not stall every other client's stream while it is tokenized only to be refused.

Each request's event queue holds at most max_tokens + 1 events, so it is bounded by the request itself;
a transport whose reader stalls pauses the request (engine.pause) instead of letting it grow.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from seedance.engine.config import EngineConfig
from seedance.engine.errors import EngineOverloaded, InvalidRequest
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.llm_engine import EngineStats, LLMEngine
from seedance.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)
_ids = itertools.count()


@dataclass(slots=True)
class GenerateRequest:
    """Exactly one of prompt (text), prompt_token_ids or messages (chat) is given."""

    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[dict[str, str]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0
    request_id: str | None = None
    pin_key: str | None = None  # keep the finished request's KV pinned for this session's next turn


class RequestStream:
    """Async iterator over one request's events. Leaving it early (break, aclose, a dropped client)
    cancels the request and frees its KV."""

    def __init__(self, engine: AsyncEngine, request_id: str, num_prompt_tokens: int) -> None:
        self.engine = engine
        self.request_id = request_id
        self.num_prompt_tokens = num_prompt_tokens
        self.queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.finished = False
        # Called after each delivery; a transport points it at its connection's wake-up event so one
        # writer serves all the connection's streams.
        self.listener: Callable[[], None] | None = None

    def _deliver(self, event: TokenEvent) -> None:
        self.queue.put_nowait(event)
        if self.listener is not None:
            self.listener()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TokenEvent]:
        try:
            while not self.finished:
                event = await self.queue.get()
                if event.finished:
                    self.finished = True
                yield event
        finally:
            if not self.finished:
                self.engine.cancel(self.request_id)

    def drain(self) -> list[TokenEvent]:
        """Events already delivered, without waiting (for coalescing one step's tokens into one write)."""
        events = []
        while not self.queue.empty():
            event = self.queue.get_nowait()
            events.append(event)
            if event.finished:
                self.finished = True
                break
        return events

    def cancel(self) -> None:
        self.engine.cancel(self.request_id)


def _load(config: EngineConfig) -> LLMEngine:
    """Runs on the engine thread: all torch work stays on that one thread."""
    engine = LLMEngine.from_config(config)
    if config.warmup:
        engine.warmup()
    return engine


class AsyncEngine:
    def __init__(self, engine: LLMEngine, executor: ThreadPoolExecutor | None = None) -> None:
        self.engine = engine
        self.config = engine.config
        self._streams: dict[str, RequestStream] = {}
        self._commands: list[Callable[[], None]] = []
        self._pending_adds = 0
        self._wakeup = asyncio.Event()
        # All torch work runs on this one thread. A second thread doing torch ops would get its own
        # OpenMP pool, and two pools spinning on the same cores slow each other down several-fold.
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-engine")
        # Tokenization has its own thread: the tokenizers library is not torch, and the engine thread is busy.
        self.tokenize_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-tokenize")
        self._tokenizing = 0
        self._task: asyncio.Task | None = None
        self._closed = False
        self.step_latencies: list[float] = []  # seconds per step, bounded to the last 1024
        self.last_step_started: float | None = None  # perf_counter() at the start of the last finished step

    @classmethod
    async def create(cls, config: EngineConfig) -> AsyncEngine:
        """Load the model (and warm it up, if config.warmup) on the engine thread, off the event loop, and start
        the engine task. engine.load_times says when each load phase ended."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-engine")
        engine = await asyncio.get_running_loop().run_in_executor(executor, _load, config)
        self = cls(engine, executor)
        self.start()
        return self

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="seedance-engine-loop")

    async def close(self) -> None:
        """Cancel every open request and stop the loop."""
        self._closed = True
        for request_id in list(self._streams):
            self.cancel(request_id)
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        self.executor.shutdown(wait=True)
        self.tokenize_executor.shutdown(wait=False, cancel_futures=True)

    # ---- requests ----------------------------------------------------------------------------------
    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt admission accepts: the policy limit, within the context."""
        limit = self.engine.max_model_len - 1
        return min(limit, self.config.max_prompt_tokens) if self.config.max_prompt_tokens is not None else limit

    @property
    def max_prompt_chars(self) -> int | None:
        """Longer text prompts are certainly over max_prompt_tokens (see TextTokenizer.max_token_chars)."""
        return self.max_prompt_tokens * self.tokenizer.max_token_chars if self.tokenizer is not None else None

    def _check_given(self, request: GenerateRequest) -> None:
        given = sum(x is not None for x in (request.prompt, request.prompt_token_ids, request.messages))
        if given != 1:
            raise InvalidRequest("give exactly one of prompt, prompt_token_ids, messages")
        if request.prompt_token_ids is None and self.tokenizer is None:
            raise InvalidRequest("this model has no tokenizer: send prompt_token_ids")
        if request.prompt_token_ids is None:
            chars = len(request.prompt) if request.prompt is not None else sum(
                len(m.get("content", "")) for m in request.messages or [])
            if chars > self.max_prompt_chars:
                raise InvalidRequest(f"prompt has {chars} characters, certainly more tokens than allowed: the limit "
                                     f"is {self.max_prompt_tokens} tokens (at most {self.max_prompt_chars} characters)")

    def _encode(self, request: GenerateRequest) -> list[int]:
        if request.messages is not None:
            return self.tokenizer.apply_chat_template(request.messages)
        return self.tokenizer.encode(request.prompt)

    async def tokenize(self, request: GenerateRequest) -> list[int]:
        """The request's prompt as token ids, tokenized off the event loop (a text prompt certainly too long is
        refused first, without tokenizing it). Raises InvalidRequest, or EngineOverloaded when
        max_pending_tokenize prompts already wait for the tokenizer thread."""
        self._check_given(request)
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        if self._tokenizing >= self.config.max_pending_tokenize:
            raise EngineOverloaded(f"{self._tokenizing} prompts are waiting to be tokenized; retry later")
        self._tokenizing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.tokenize_executor, self._encode, request)
        finally:
            self._tokenizing -= 1

    async def submit(self, request: GenerateRequest) -> RequestStream:
        """Tokenize (off the loop), then admit the request or raise (InvalidRequest, EngineOverloaded); admission
        itself never waits."""
        token_ids = await self.tokenize(request)
        if self._closed:
            raise EngineOverloaded("engine is shutting down")
        request_id = request.request_id or f"req-{next(_ids)}"
        if request_id in self._streams:
            raise InvalidRequest(f"duplicate request id {request_id!r}")
        self.engine.check_admission(request_id, token_ids, request.params, pending=self._pending_adds)
        stream = RequestStream(self, request_id, len(token_ids))
        self._streams[request_id] = stream
        self._pending_adds += 1
        arrival = time.monotonic()

        def add() -> None:
            self._pending_adds -= 1
            if request_id in self._streams:  # not cancelled before it was added
                self.engine.add_request(request_id, token_ids, request.params, request.priority, arrival,
                                        pin_key=request.pin_key)

        self._command(add)
        return stream

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        async for event in await self.submit(request):
            yield event

    def cancel(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return

        def abort() -> None:
            event = self.engine.abort(request_id)
            if event is None:  # cancelled before it was added
                event = TokenEvent(request_id, 0, -1, "", finish_reason=FinishReason.CANCELLED)
            stream._deliver(event)

        self._command(abort)

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

    @property
    def num_open_requests(self) -> int:
        return len(self._streams)

    def open_request_ids(self) -> list[str]:
        return list(self._streams)

    def _command(self, fn: Callable[[], None]) -> None:
        self._commands.append(fn)
        self._wakeup.set()

    # ---- the loop ---------------------------------------------------------------------------------
    def _apply_commands(self) -> None:
        commands, self._commands = self._commands, []
        for fn in commands:
            try:
                fn()
            except Exception:  # one bad command must not stop the engine
                log.exception("engine command failed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._apply_commands()
            if self._closed and not self._commands:
                return
            if not self.engine.has_work():
                self._wakeup.clear()
                if not self._commands:
                    await self._wakeup.wait()
                continue
            started = time.perf_counter()
            try:
                events = await loop.run_in_executor(self.executor, self.engine.step)
            except Exception:
                log.exception("engine step crashed")
                events = []
            self.step_latencies.append(time.perf_counter() - started)
            self.last_step_started = started
            if len(self.step_latencies) > 1024:
                del self.step_latencies[:512]
            for event in events:
                stream = self._streams.get(event.request_id)
                if stream is None:
                    continue
                stream._deliver(event)
                if event.finished:
                    del self._streams[event.request_id]
            if not events:
                await asyncio.sleep(0)  # let commands in while waiting on e.g. paused requests
