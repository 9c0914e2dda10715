"""The half of the engine API that lives with the event loop, whichever way the engine core runs.

Both engines the transports can be given share it: `AsyncEngine` (the core on a thread of this process) and
`ProcessEngine` (the core in its own process). It holds the open requests' streams, builds prompts on its own
worker threads (text and chat templates on the tokenizer thread, but for short text prompts, tokenized on the loop
for less than the hand-off costs; after a length check that refuses a prompt
certainly too long without tokenizing it: a megabyte prompt must not stall every other client's stream;
embedding rows decoded and checked there too; images decoded and encoded on the vision thread: the vision
tower runs there in the thread mode, in the engine process with ProcessEngine), and hands one step's events to
their streams.

Each request's event queue holds at most max_tokens + 1 events, so it is bounded by the request itself; a
transport whose reader stalls pauses the request (engine.pause) instead of letting it grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from seedance.engine.config import EngineConfig
from seedance.engine.errors import EngineOverloaded, InvalidRequest
from seedance.engine.events import TokenEvent
from seedance.engine.image_prompt import build_image_prompt, content_chars, count_images, for_template
from seedance.engine.prompt_embeds import EncodedRows, PromptEmbeds, assemble_prompt, check_rows, decode_rows
from seedance.engine.sampling_params import SamplingParams
from seedance.models.tokenizer import TextTokenizer

if TYPE_CHECKING:  # no torch at import: `--engine process`'s gateway builds on this module without it
    import numpy as np
    import torch

_ids = itertools.count()
log = logging.getLogger(__name__)


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
    # Whose request (a connection, for max_running_per_client); None: the submitting context's CURRENT_CLIENT.
    client: str | None = None


class EventQueue:
    """One request's events, for its one reader: what asyncio.Queue offers that the transports use (put_nowait,
    get, get_nowait, empty, qsize) at a tenth of its cost per event (1.5 µs → 0.17 µs here), which every token
    of every stream pays. Unbounded by itself: a request delivers at most max_tokens + 1 events."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[TokenEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, event: TokenEvent) -> None:
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> TokenEvent:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> TokenEvent:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class RequestStream:
    """Async iterator over one request's events. Leaving it early (break, aclose, a dropped client)
    cancels the request and frees its KV."""

    def __init__(self, engine: EngineFront, request_id: str, num_prompt_tokens: int) -> None:
        self.engine = engine
        self.request_id = request_id
        self.num_prompt_tokens = num_prompt_tokens
        self.is_multimodal = False  # its prompt has embedding rows or image features (MTF1's is_multimodal flag)
        self.queue = EventQueue()
        self.finished = False
        # Called after a delivery: once per step (or per read of several steps) for all the streams that share it
        # (EngineFront._wake_listeners), so a transport points every stream of a connection at one callable that
        # writes (or wakes the writer of) all of them.
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
        items = self.queue._items
        events = []
        while items:
            event = items.popleft()
            events.append(event)
            if event.finish_reason is not None:
                self.finished = True
                break
        return events

    def cancel(self) -> None:
        self.engine.cancel(self.request_id)


class EngineFront:
    """Request table, tokenizer and vision threads, step delivery; subclasses say where the core runs (submit,
    cancel, pause, resume, set_priority, unpin, embed_group, stats, close)."""

    # Why an image prompt is refused when the model takes images but this engine has no vision encoder here.
    no_vision_reason = "this model takes no images"
    # Decoded embedding rows as torch tensors (the model here takes them); False: numpy arrays, for an engine
    # front that only sends them to its engine process (no torch in that gateway: docs/server-stack.md).
    rows_as_tensors = True
    # A text prompt of at most this many characters is tokenized on the event loop: tens of µs, less than the
    # tokenizer thread's hand-off costs (scripts/tokenize_handoff.py); a longer one goes to the thread, so a large
    # prompt never holds up the other clients' streams.
    inline_tokenize_chars = 512

    def __init__(self, config: EngineConfig, tokenizer: TextTokenizer | None, max_model_len: int,
                 hidden_size: int | None = None, takes_images: bool = False, vision=None,
                 embedding_shape: tuple[int, int] | None = None) -> None:
        self.config = config
        self.max_model_len = max_model_len
        self._tokenizer = tokenizer
        self._hidden_size = hidden_size
        self._takes_images = takes_images
        self._vision = vision
        self._embedding_shape = embedding_shape
        self._streams: dict[str, RequestStream] = {}
        # Tokenization has its own thread: the tokenizers library is not torch, and the engine thread is busy.
        self.tokenize_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-tokenize")
        # Images have their own thread (decode, template, vision tower), so a large image never holds up text
        # prompts behind it, nor the engine's steps: the engine thread only splices the features in.
        self.vision_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedance-vision")
        self._encoding = 0
        self._tokenizing = 0
        self._closed = False
        self.step_latencies: list[float] = []  # seconds per step, bounded to the last 1024
        self.last_step_started: float | None = None  # perf_counter() at the start of the last finished step
        self._woken: dict[Callable[[], None], None] = {}  # listeners of the streams given events, not yet called

    @property
    def tokenizer(self) -> TextTokenizer | None:
        return self._tokenizer

    # ---- model facts (AsyncEngine reads them off its LLMEngine; ProcessEngine got them in the Ready frame) ----
    @property
    def hidden_size(self) -> int | None:
        """Width of the prompt embedding rows the model takes; None: it takes none (synthetic)."""
        return self._hidden_size

    @property
    def takes_images(self) -> bool:
        """The served model is multimodal (its chat template takes image parts; /v1/models shows it)."""
        return self._takes_images

    @property
    def vision(self):
        """The image encoder (models/llava.py) where this engine runs it; None: not here."""
        return self._vision

    @property
    def embedding_shape(self) -> tuple[int, int] | None:
        """(vector size, vocabulary size) for /v1/embeddings; None: the backend has no model to pool."""
        return self._embedding_shape

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt admission accepts: the policy limit, within the context."""
        limit = self.max_model_len - 1
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
        if images and not self.takes_images:
            raise InvalidRequest("this model takes no images")
        if images and self.vision is None:
            raise InvalidRequest(self.no_vision_reason)
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
            messages = for_template(request.messages, self.takes_images)
            if request.tools:
                return self.tokenizer.apply_chat_template(messages, tools=request.tools)
            return self.tokenizer.apply_chat_template(messages)
        return self.tokenizer.encode(request.prompt)

    def _assemble(self, request: GenerateRequest) -> list[int]:
        """A segmented prompt's ids; its embedding rows (checked: shape, dtype, NaN/Inf) go to prompt_embeds."""
        if request.prompt_parts is None:  # a chat with images: its features are the embeddings
            parts = build_image_prompt(request.messages, self.tokenizer, self.vision, self.config)
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
                parts.append(decode_rows(part, self.hidden_size, limit, f"prompt part {i}", self.rows_as_tensors))
            else:
                parts.append(check_rows(part, self.hidden_size, f"prompt part {i}"))
        ids, request.prompt_embeds = assemble_prompt(parts)
        return ids

    async def tokenize(self, request: GenerateRequest) -> list[int]:
        """The request's prompt as token ids: a short text prompt (inline_tokenize_chars) on the event loop,
        anything else off it (a text prompt certainly too long is refused first, without tokenizing it). Raises
        InvalidRequest, or EngineOverloaded when max_pending_tokenize prompts already wait for the tokenizer
        thread."""
        self._check_given(request)
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        if request.messages is not None and count_images(request.messages):
            with self._pending("_encoding", "image prompts are waiting to be encoded"):
                return await self._image_prompt(request)
        if request.prompt is not None and len(request.prompt) <= self.inline_tokenize_chars:
            return self._encode(request)  # cheaper here than the hop to the tokenizer thread and back
        with self._pending("_tokenizing", "prompts are waiting to be tokenized"):
            return await asyncio.get_running_loop().run_in_executor(self.tokenize_executor, self._encode, request)

    async def _image_prompt(self, request: GenerateRequest) -> list[int]:
        """A chat with images: decoded, templated and encoded on the vision thread (the thread mode, where the
        vision tower is in this process; ProcessEngine sends the pixels to its core instead)."""
        return await asyncio.get_running_loop().run_in_executor(self.vision_executor, self._encode, request)

    @contextlib.contextmanager
    def _pending(self, counter: str, waiting: str) -> Iterator[None]:
        """At most max_pending_tokenize prompts inside (counted in counter); EngineOverloaded past it."""
        pending = getattr(self, counter)
        if pending >= self.config.max_pending_tokenize:
            raise EngineOverloaded(f"{pending} {waiting}; retry later")
        setattr(self, counter, pending + 1)
        try:
            yield
        finally:
            setattr(self, counter, getattr(self, counter) - 1)

    def _stop_threads(self) -> None:
        self.tokenize_executor.shutdown(wait=False, cancel_futures=True)
        self.vision_executor.shutdown(wait=False, cancel_futures=True)

    def _new_id(self, request: GenerateRequest) -> str:
        """The request's id, checked free; raises when shutting down or on a duplicate."""
        if self._closed:
            raise EngineOverloaded("engine is shutting down")
        request_id = request.request_id or f"req-{next(_ids)}"
        if request_id in self._streams:
            raise InvalidRequest(f"duplicate request id {request_id!r}")
        return request_id

    async def submit(self, request: GenerateRequest) -> RequestStream:
        raise NotImplementedError

    def cancel(self, request_id: str, keep_tokens: int | None = None) -> None:
        """End the request between two steps; keep_tokens: see LLMEngine.abort."""
        raise NotImplementedError

    async def embed_group(self, inputs: list[list[int]]) -> list[torch.Tensor | np.ndarray]:
        """Mean-pooled float32 vectors of one group of token lists, one forward between two steps
        (engine/embedding.py): tensors from the thread mode's engine, numpy rows from the engine process."""
        raise NotImplementedError

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        async for event in await self.submit(request):
            yield event

    @property
    def num_open_requests(self) -> int:
        return len(self._streams)

    def open_request_ids(self) -> list[str]:
        return list(self._streams)

    def _record_step(self, seconds: float) -> None:
        self.step_latencies.append(seconds)
        if len(self.step_latencies) > 1024:
            del self.step_latencies[:512]

    def _deliver_step(self, events: list[TokenEvent], started: float, cut: int = 0) -> None:
        """One step's events to their streams, then each of their listeners once (on the event loop)."""
        self._queue_step(events, started, cut)
        self._wake_listeners()

    def _queue_step(self, events: list[TokenEvent], started: float, cut: int = 0) -> None:
        """One step's events to their streams; a finished request leaves the table. Their listeners are noted,
        not called: `_wake_listeners` calls each once after every step at hand (a connection that shares a
        listener among its streams, or fell behind by several steps, writes them all in one go).
        cut: the length of a prefix the engine put on the ids (a shared engine process, `--workers N`)."""
        self.last_step_started = started
        streams = self._streams
        woken = self._woken
        for event in events:
            request_id = event.request_id[cut:] if cut else event.request_id
            stream = streams.get(request_id)
            if stream is None:
                continue
            stream.queue.put_nowait(event)
            if (listener := stream.listener) is not None:
                woken[listener] = None
            if event.finish_reason is not None:
                del streams[request_id]

    def _wake_listeners(self) -> None:
        """Call each listener `_queue_step` noted, once; one that raises is logged and the others still run."""
        woken = self._woken
        if not woken:
            return
        self._woken = {}
        for listener in woken:
            try:
                listener()
            except Exception:
                log.exception("a stream's listener failed")
