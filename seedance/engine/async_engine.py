"""The engine API the transports use: submit a request, iterate its TokenEvents.

The engine runs its own loop on a dedicated worker thread: it applies queued commands (submit, cancel, pause,
resume, re-prioritise) between steps, never while a step runs, so the engine core needs no locks, and starts the
next step as soon as the last one is done. Each step's events go to the event loop in one thread-safe call, so
the loop formats and writes one step's tokens while the model computes the next, and a transport that drains
its streams after waking sees one step's tokens together and can send them in one write. (Handing every step
to an executor from the event loop instead made the engine wait on the loop twice per token: single-stream
speed through the server was less than half the engine's own.)

Text prompts are tokenized (and chat-templated) on their own worker thread, in submission order, after a
length check that refuses a prompt certainly too long for the context without tokenizing it: a megabyte
prompt must not stall every other client's stream while it is tokenized only to be refused.

Each request's event queue holds at most max_tokens + 1 events, so it is bounded by the request itself;
a transport whose reader stalls pauses the request (engine.pause) instead of letting it grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from seedance.engine.config import EngineConfig
from seedance.engine.errors import EngineOverloaded, InvalidRequest
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.image_prompt import build_image_prompt, content_chars, count_images, for_template
from seedance.engine.llm_engine import EngineStats, LLMEngine
from seedance.engine.prompt_embeds import EncodedRows, PromptEmbeds, assemble_prompt, check_rows, decode_rows
from seedance.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)
_ids = itertools.count()


@dataclass(slots=True)
class GenerateRequest:
    """Exactly one of prompt (text), prompt_token_ids, messages (chat) or prompt_parts is given."""

    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    # Chat turns; a content may be a list of parts: {"type": "text", "text"} and, for a model that takes images,
    # {"type": "image", "image": ImageInput} (engine/image_prompt.py).
    messages: list[dict] | None = None
    # A segmented prompt, in order: text, token ids, embedding rows ([n, hidden_size] tensors, or EncodedRows as
    # they came on the wire); see prompt_embeds.py.
    prompt_parts: list[str | list[int] | object] | None = None
    # The embedding rows of prompt_token_ids (whose content ids stand for them); tokenize() sets it for parts.
    prompt_embeds: PromptEmbeds | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0
    request_id: str | None = None
    pin_key: str | None = None  # keep the finished request's KV pinned for this session's next turn
    tools: list[dict] | None = None  # OpenAI tools, for a chat template that renders them (template_takes_tools)


class RequestStream:
    """Async iterator over one request's events. Leaving it early (break, aclose, a dropped client)
    cancels the request and frees its KV."""

    def __init__(self, engine: AsyncEngine, request_id: str, num_prompt_tokens: int) -> None:
        self.engine = engine
        self.request_id = request_id
        self.num_prompt_tokens = num_prompt_tokens
        self.is_multimodal = False  # its prompt has embedding rows or image features (MTF1's is_multimodal flag)
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
        self._commands: deque[Callable[[], None]] = deque()  # appended on the loop, run on the engine thread
        self._work = threading.Event()  # set when commands are queued: wakes an idle engine thread
        self._submitted = 0  # requests submitted (event loop only)
        self._added = 0  # of them, added to the engine or dropped (engine thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        # All torch work runs on this one thread. A second thread doing torch ops would get its own
        # OpenMP pool, and two pools spinning on the same cores slow each other down several-fold.
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-engine")
        # Tokenization has its own thread: the tokenizers library is not torch, and the engine thread is busy.
        self.tokenize_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-tokenize")
        # Images have their own thread (decode, template, vision tower), so a large image never holds up text
        # prompts behind it, nor the engine's steps: the engine thread only splices the features in.
        self.vision_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-vision")
        self._encoding = 0
        self._tokenizing = 0
        self._thread_done: Future | None = None
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
        self.tokenize_executor.shutdown(wait=False, cancel_futures=True)
        self.vision_executor.shutdown(wait=False, cancel_futures=True)

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
        inputs = (request.prompt, request.prompt_token_ids, request.messages, request.prompt_parts)
        if sum(x is not None for x in inputs) != 1:
            raise InvalidRequest("give exactly one of prompt, prompt_token_ids, messages, prompt_parts")
        texts = [p for p in request.prompt_parts or () if isinstance(p, str)]
        if self.tokenizer is None and (request.prompt is not None or request.messages is not None or texts):
            raise InvalidRequest("this model has no tokenizer: send prompt_token_ids")
        images = count_images(request.messages) if request.messages is not None else 0
        if images and not self.engine.takes_images:
            raise InvalidRequest("this model takes no images")
        if images > self.config.max_images_per_prompt:
            raise InvalidRequest(f"{images} images; the limit is {self.config.max_images_per_prompt} per prompt")
        if request.prompt_token_ids is None:
            chars = len(request.prompt) if request.prompt is not None else content_chars(
                request.messages or []) + sum(map(len, texts))
            if chars > self.max_prompt_chars:
                raise InvalidRequest(f"prompt has {chars} characters, certainly more tokens than allowed: the limit "
                                     f"is {self.max_prompt_tokens} tokens (at most {self.max_prompt_chars} characters)")

    def _encode(self, request: GenerateRequest) -> list[int]:
        if request.prompt_parts is not None:
            return self._assemble(request)
        if request.messages is not None:
            if count_images(request.messages):
                return self._assemble(request)
            messages = for_template(request.messages, self.engine.takes_images)
            if request.tools:
                return self.tokenizer.apply_chat_template(messages, tools=request.tools)
            return self.tokenizer.apply_chat_template(messages)
        return self.tokenizer.encode(request.prompt)

    def _assemble(self, request: GenerateRequest) -> list[int]:
        """A segmented prompt's ids; its embedding rows (checked: shape, dtype, NaN/Inf) go to prompt_embeds."""
        if request.prompt_parts is None:  # a chat with images: its features are the embeddings
            parts = build_image_prompt(request.messages, self.tokenizer, self.engine.vision, self.config)
            ids, request.prompt_embeds = assemble_prompt(parts)
            return ids
        parts: list[list[int] | object] = []
        for i, part in enumerate(request.prompt_parts):
            if isinstance(part, str):
                parts.append(self.tokenizer.encode(part))
            elif isinstance(part, list):
                parts.append(part)
            elif isinstance(part, EncodedRows):
                limit = self.config.max_prompt_embeds_bytes
                parts.append(decode_rows(part, self.engine.hidden_size, limit, f"prompt part {i}"))
            else:
                parts.append(check_rows(part, self.engine.hidden_size, f"prompt part {i}"))
        ids, request.prompt_embeds = assemble_prompt(parts)
        return ids

    async def tokenize(self, request: GenerateRequest) -> list[int]:
        """The request's prompt as token ids, tokenized off the event loop (a text prompt certainly too long is
        refused first, without tokenizing it). Raises InvalidRequest, or EngineOverloaded when
        max_pending_tokenize prompts already wait for the tokenizer thread."""
        self._check_given(request)
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        if request.messages is not None and count_images(request.messages):
            return await self._off_loop(request, self.vision_executor, "_encoding", "image prompts are waiting "
                                        "to be encoded")
        return await self._off_loop(request, self.tokenize_executor, "_tokenizing", "prompts are waiting to be "
                                    "tokenized")

    async def _off_loop(self, request: GenerateRequest, executor: ThreadPoolExecutor, counter: str,
                        waiting: str) -> list[int]:
        """_encode(request) on executor, at most max_pending_tokenize waiting for it (counted in counter)."""
        pending = getattr(self, counter)
        if pending >= self.config.max_pending_tokenize:
            raise EngineOverloaded(f"{pending} {waiting}; retry later")
        setattr(self, counter, pending + 1)
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, self._encode, request)
        finally:
            setattr(self, counter, getattr(self, counter) - 1)

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
        if self._closed:
            raise EngineOverloaded("engine is shutting down")
        request_id = request.request_id or f"req-{next(_ids)}"
        if request_id in self._streams:
            raise InvalidRequest(f"duplicate request id {request_id!r}")
        pending = self._submitted - self._added
        self.engine.check_admission(request_id, token_ids, request.params, pending=pending, prompt_embeds=embeds)
        stream = RequestStream(self, request_id, len(token_ids))
        stream.is_multimodal = embeds is not None
        self._streams[request_id] = stream
        self._submitted += 1
        arrival = time.monotonic()

        def add() -> None:
            self._added += 1
            if request_id in self._streams:  # not cancelled before it was added
                self.engine.add_request(request_id, token_ids, request.params, request.priority, arrival,
                                        pin_key=request.pin_key, prompt_embeds=embeds)

        self._command(add)
        return stream

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        async for event in await self.submit(request):
            yield event

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
            self.step_latencies.append(time.perf_counter() - started)
            if len(self.step_latencies) > 1024:
                del self.step_latencies[:512]
            if events:
                self._post(self._deliver_step, events, started)
            elif self.engine.steps == steps:  # nothing could run (e.g. no KV room yet): wait for a command
                self._work.clear()
                if not self._commands:
                    self._work.wait(0.005)

    # ---- the event loop ---------------------------------------------------------------------------
    def _deliver_step(self, events: list[TokenEvent], started: float) -> None:
        self.last_step_started = started
        for event in events:
            stream = self._streams.get(event.request_id)
            if stream is None:
                continue
            stream._deliver(event)
            if event.finished:
                del self._streams[event.request_id]

    @staticmethod
    def _deliver_to(stream: RequestStream, event: TokenEvent) -> None:
        stream._deliver(event)
