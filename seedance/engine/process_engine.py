"""The engine API with the engine core in its own process (`seedance serve --engine process`), as vLLM v1 does.

The gateway keeps what is cheap and per-request: the request table, the tokenizer (its own thread, as in the
thread mode: the engine process spends its time stepping, and with `--workers N` tokenizing spreads over the
gateways), the streams. The core process (core_process.py) owns LLMEngine. Between them one Unix socket pair:
the gateway writes one frame of commands per event-loop turn; the core writes one `Step` frame per engine
step with all its requests' events, which is handed to the streams in one call, as the thread mode does.

Admission is decided where the engine state is: submit() sends the request and awaits the core's verdict
(it comes back with the next frame, before the request's first events).

What crosses the boundary: a prompt's embedding rows as raw bytes in the Add frame (the core rebuilds the same
tensors and content ids); a guided-decoding spec, compiled in the core when the Add arrives (cached there; a
grammar that does not compile is the request's refusal, InvalidRequest, as in the thread mode);
cancel(keep_tokens=); /v1/embeddings groups as Embed commands, answered with the vectors' bytes; images: the
gateway's vision thread decodes (Pillow, bounded) and resizes them with the model's image processor (sent in the
Ready frame, no weights), the pixels go to the core (EncodeImages), whose vision thread runs the tower and
projector and answers with the features (Encoded); the gateway then assembles the prompt as the thread mode
does (the same content ids, so the prefix cache and sessions see the same prompt) and sends its Add.

Bounds: the command channel refuses new requests and new images (EngineOverloaded) while more than
`process_channel_bytes` of commands wait to be written; the core blocks on a full socket instead of queueing.
A bad image never reaches the core: it fails its request in the gateway (InvalidRequest).

When the core process dies, every open request ends with finish_reason error (the transports send their error
frame), submit() raises EngineUnavailable, and `failure` says why (/readyz reports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing as mp
import pickle
import socket
import time

import numpy as np

from seedance.engine.client_key import client_of
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
    Resume,
    SetPriority,
    Shutdown,
    Step,
    Unpin,
    decode_to_gateway,
    embeds_to_wire,
    frame,
    tensor_bytes,
)
from seedance.engine.core_spawn import SpawnedCore, spawn_core
from seedance.engine.engine_front import EngineFront, GenerateRequest, RequestStream
from seedance.engine.errors import EngineOverloaded, EngineUnavailable, InvalidRequest
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.image_prompt import PreparedImages, prepare_images
from seedance.engine.prompt_embeds import assemble_prompt
from seedance.engine.stats import EngineStats

log = logging.getLogger(__name__)
_ERRORS = {InvalidRequest.code: InvalidRequest, EngineOverloaded.code: EngineOverloaded}


def _add_frame(add: Add, embeds) -> bytes:
    """An Add with its prompt's embedding rows, framed (on a worker thread: the rows may be tens of MB)."""
    add.embeds = embeds_to_wire(embeds)
    return frame([add])


class EngineInfo:
    """What the gateway knows of the core's engine (AsyncEngine exposes the LLMEngine itself as .engine)."""

    def __init__(self, ready: Ready) -> None:
        self.model_name = ready.model_name
        self.load_times = dict(ready.load_times)
        self.max_model_len = ready.max_model_len
        self.takes_images = ready.takes_images


def _counts(message) -> bool:
    """A Step frame with events: one the core counts against max_steps_ahead until told it was Delivered."""
    return isinstance(message, Step) and bool(message.events)


class _Channel(asyncio.Protocol):
    """The gateway's end of the socket: frames to the engine once it is ready; the first frame (Ready or
    LoadFailed) to `first`."""

    def __init__(self, first: asyncio.Future) -> None:
        self.first = first
        self.engine: ProcessEngine | None = None
        self.frames = FrameBuffer()
        self.early: list = []  # frames after Ready that came before the engine was built

    def data_received(self, data: bytes) -> None:
        try:
            bodies = self.frames.feed(data)
        except ValueError as err:
            if self.engine is not None:
                self.engine._fail(str(err))
            return
        steps = 0
        for body in bodies:
            message = decode_to_gateway(body)
            if self.engine is not None:
                self.engine._receive(message)
                steps += _counts(message)
            elif not self.first.done():
                self.first.set_result(message)
            else:
                self.early.append(message)
        if self.engine is not None:  # after every step of this read: a stream's listener once for all of them
            self.engine._wake_listeners()
            if steps:  # their connections wrote them: the core may step on (EngineConfig.max_steps_ahead)
                self.engine._delivered(steps)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.engine is not None:
            self.engine._fail("the engine process exited")
        elif not self.first.done():
            self.first.set_result(LoadFailed("the engine process exited while loading"))


class ProcessEngine(EngineFront):
    rows_as_tensors = False  # f32le rows only cross the socket from here (core_protocol.tensor_bytes takes numpy)

    def __init__(self, config: EngineConfig, ready: Ready, transport: asyncio.Transport,
                 process: mp.process.BaseProcess | None, prefix: str = "") -> None:
        tokenizer = pickle.loads(ready.tokenizer) if ready.tokenizer is not None else None
        config = dataclasses.replace(config, dtype=ready.dtype)  # "auto" as the core resolved it
        shape = tuple(ready.embedding_shape) if ready.embedding_shape is not None else None
        # the model's image processor and image token (llava.ImageFront): images are prepared here, encoded there
        vision = pickle.loads(ready.image_front) if ready.image_front is not None else None
        super().__init__(config, tokenizer, ready.max_model_len, hidden_size=ready.hidden_size,
                         takes_images=ready.takes_images, vision=vision, embedding_shape=shape)
        self.engine = EngineInfo(ready)
        self.model_path = ready.model_path  # the core's resolved model file or directory (None: synthetic)
        self.process = process  # None: a shared core (`--workers N`) that this gateway neither starts nor stops
        # `--workers N`: this gateway's ids (and session pin keys) in the shared core start with it
        self.prefix = prefix
        self._transport = transport
        self._stats: EngineStats = ready.stats
        self._admitting: dict[str, asyncio.Future[None]] = {}
        self._cancelling: dict[str, RequestStream] = {}  # aborted, waiting for the core's final event
        self._answers: dict[int, asyncio.Future] = {}  # Embed / EncodeImages key -> its answer
        self._keys = itertools.count()
        # EncodeImages keys the core has not answered yet, also those whose request gave up waiting: the core's
        # vision thread works through them all, so at most max_pending_tokenize may be there at once
        self._in_core: set[int] = set()
        self._outbox: list = []
        # Step frames with events handed to the streams, and the reads they came in: their ratio is how many
        # steps a connection's write coalesced (1.0: each step's token in its own chunk; docs/server-stack.md)
        self.steps_delivered = 0
        self.step_reads = 0
        self.failure: str | None = None
        self._exited = asyncio.get_running_loop().create_future()

    @classmethod
    async def create(cls, config: EngineConfig, log_level: int = logging.WARNING,
                     core: SpawnedCore | None = None) -> ProcessEngine:
        """Start the core process (or take one `seedance serve` started before building the app, already
        loading), wait (off the loop's critical path) for its model to load."""
        core = core if core is not None else spawn_core(config, log_level)
        return await cls.connect(config, core.sock, core.process)

    @classmethod
    async def connect_path(cls, config: EngineConfig, path: str, prefix: str,
                           timeout_s: float = 60.0) -> ProcessEngine:
        """A gateway worker's engine: the shared core (core_process.serve_core) listening at path."""
        deadline = time.monotonic() + timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no engine process at {path}") from None
                await asyncio.sleep(0.05)
        return await cls.connect(config, sock, prefix=prefix)

    @classmethod
    async def connect(cls, config: EngineConfig, sock: socket.socket,
                      process: mp.process.BaseProcess | None = None, prefix: str = "") -> ProcessEngine:
        """Over an already connected socket (create() above; the tests' fake core): wait for Ready."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        first: asyncio.Future = loop.create_future()
        transport, protocol = await loop.connect_accepted_socket(lambda: _Channel(first), sock)
        try:
            message = await first
        except BaseException:
            transport.close()
            raise
        if isinstance(message, LoadFailed) or not isinstance(message, Ready):
            transport.close()
            if process is not None:
                await asyncio.to_thread(process.join, 10)
            raise RuntimeError(message.error if isinstance(message, LoadFailed) else "engine core: no Ready")
        self = cls(config, message, transport, process, prefix)
        protocol.engine = self
        for early in protocol.early:
            self._receive(early)
        self._wake_listeners()
        if steps := sum(map(_counts, protocol.early)):
            self._delivered(steps)
        protocol.early = []
        return self

    # ---- the API the transports use ---------------------------------------------------------------
    async def submit(self, request: GenerateRequest) -> RequestStream:
        """Tokenize (off the loop), send, and return once the core admitted it (or raise its refusal)."""
        token_ids = await self.tokenize(request)
        embeds = request.prompt_embeds
        request_id = self._new_id(request)
        self._check_channel()
        stream = RequestStream(self, request_id, len(token_ids))
        stream.is_multimodal = embeds is not None
        self._streams[request_id] = stream
        p = self.prefix
        pin_key = p + request.pin_key if request.pin_key is not None else None
        client = client_of(request)
        add = Add(p + request_id, token_ids, request.params, request.priority, time.monotonic(), pin_key,
                  client=p + client if client is not None else None)
        if embeds is not None:
            # rows (up to max_prompt_embeds_bytes a part; 4 LLaVA-7B images' features are 38 MB) are copied out
            # and framed off the event loop: framing 38 MB took 117 ms here
            try:
                add = await asyncio.get_running_loop().run_in_executor(self.tokenize_executor, _add_frame, add,
                                                                       embeds)
                self._check_channel()  # the core may have gone meanwhile
            except BaseException:
                self._streams.pop(request_id, None)
                raise
        verdict = asyncio.get_running_loop().create_future()
        self._admitting[request_id] = verdict
        self._send(add)
        try:
            await verdict
        except BaseException:
            self._admitting.pop(request_id, None)
            if self._streams.pop(request_id, None) is not None and not verdict.done():
                self._send(Abort(self.prefix + request_id))  # the caller gave up waiting: the core must not run it
            raise
        return stream

    def cancel(self, request_id: str, keep_tokens: int | None = None) -> None:
        """End the request between two steps; keep_tokens: see LLMEngine.abort."""
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return
        if self.failure is not None:
            stream._deliver(TokenEvent(request_id, 0, -1, "", finish_reason=FinishReason.CANCELLED))
            return
        self._cancelling[request_id] = stream
        self._send(Abort(self.prefix + request_id, keep_tokens))

    async def embed_group(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """One group's vectors, pooled in the core between two steps (an Embed command and its answer), as
        float32 numpy rows: the gateway has no torch to spend on them."""
        key = next(self._keys)
        done = await self._ask(key, Embed(key, inputs))
        return list(np.frombuffer(done.data, dtype=np.float32).reshape(-1, done.dim))

    async def _image_prompt(self, request: GenerateRequest) -> list[int]:
        """Decode, template and resize on the vision thread here; the tower in the core (EncodeImages, answered
        by Encoded); the prompt assembled here, on the vision thread again, as the thread mode assembles it."""
        loop = asyncio.get_running_loop()
        key = next(self._keys)
        prepared, command = await loop.run_in_executor(self.vision_executor, self._pixels, request.messages, key)
        if len(self._in_core) >= self.config.max_pending_tokenize:
            raise EngineOverloaded(f"{len(self._in_core)} image prompts are being encoded; retry later")
        self._in_core.add(key)
        encoded = await self._ask(key, command)
        ids, request.prompt_embeds = await loop.run_in_executor(self.vision_executor, self._splice, prepared,
                                                                encoded)
        return ids

    def _pixels(self, messages: list[dict], key: int) -> tuple[PreparedImages, bytes]:
        """The chat's images decoded, resized and framed as one EncodeImages (on the vision thread)."""
        prepared = prepare_images(messages, self.tokenizer, self.vision.image_token_id, self.config)
        pixels = self.vision.preprocess(prepared.images).float().contiguous()
        dtype, data = tensor_bytes(pixels)
        return prepared, frame([EncodeImages(key, dtype, list(pixels.shape), data)])

    @staticmethod
    def _splice(prepared: PreparedImages, encoded: Encoded) -> tuple[list[int], object]:
        features = encoded.features()
        if len(features) != len(prepared.images):
            raise RuntimeError(f"the engine process encoded {len(features)} images of {len(prepared.images)}")
        return assemble_prompt(prepared.splice(features))

    async def _ask(self, key: int, command: Embed | bytes) -> Embedded | Encoded:
        """Send the command (an Embed, or a framed EncodeImages) and await its answer in a Step frame (raised if
        it is an error)."""
        self._check_channel()
        answer = self._answers[key] = asyncio.get_running_loop().create_future()
        self._send(command)
        try:
            return await answer
        finally:
            self._answers.pop(key, None)

    def pause(self, request_id: str) -> None:
        self._send(Pause(self.prefix + request_id))

    def resume(self, request_id: str) -> None:
        self._send(Resume(self.prefix + request_id))

    def set_priority(self, request_id: str, priority: int) -> None:
        self._send(SetPriority(self.prefix + request_id, priority))

    def unpin(self, key: str) -> None:
        self._send(Unpin(self.prefix + key))

    def stats(self) -> EngineStats:
        """The core's counters as of its last frame (sent at least every 50 ms while busy, and when idle)."""
        return self._stats

    async def close(self) -> None:
        """Cancel every open request, stop the core process and wait for it (killed if it does not exit)."""
        if not self._closed:
            self._closed = True
            for request_id in list(self._streams):
                self.cancel(request_id)
            if self.process is not None:  # our own core: stop it
                self._send(Shutdown())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), 10)
            else:  # a shared core: let the aborts go out and come back, then hang up (the core drops the rest)
                deadline = time.monotonic() + 2.0
                while self._cancelling and self.failure is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
        self._transport.close()
        if self.process is not None:
            await asyncio.to_thread(self.process.join, 5)
            if self.process.is_alive():
                self.process.kill()
                await asyncio.to_thread(self.process.join, 5)
        self._stop_threads()

    # ---- the channel ------------------------------------------------------------------------------
    def _check_channel(self) -> None:
        if self.failure is not None:
            raise EngineUnavailable(f"engine unavailable: {self.failure}; retry later")
        if self._transport.get_write_buffer_size() > self.config.process_channel_bytes:
            raise EngineOverloaded("the engine process is behind on commands; retry later")

    def _send(self, command) -> None:
        """Queue a command for this loop turn's frame; bytes: a frame already encoded (off the loop), sent in
        its place in the order."""
        if self.failure is not None:
            return
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(command)

    def _flush(self) -> None:
        items, self._outbox = self._outbox, []
        if not items or self.failure is not None:
            return
        commands: list = []
        for item in items:
            if isinstance(item, bytes):
                if commands:
                    self._transport.write(frame(commands))
                    commands = []
                self._transport.write(item)
            else:
                commands.append(item)
        if commands:
            self._transport.write(frame(commands))

    def _delivered(self, steps: int) -> None:
        """Tell the core this many of its Step frames reached the streams (with this loop turn's commands)."""
        self.steps_delivered += steps
        self.step_reads += 1
        self._send(Delivered(steps))

    def _receive(self, message) -> None:
        if not isinstance(message, Step):
            return
        cut = len(self.prefix)
        for request_id in message.admitted:
            verdict = self._admitting.pop(request_id[cut:], None)
            if verdict is not None and not verdict.done():
                verdict.set_result(None)
        for refusal in message.refused:
            request_id = refusal.request_id[cut:]
            verdict = self._admitting.pop(request_id, None)
            self._streams.pop(request_id, None)
            if verdict is not None and not verdict.done():
                verdict.set_exception(_ERRORS.get(refusal.code, InvalidRequest)(refusal.message))
        if message.events:
            self._queue_step(message.events, message.started, cut)  # listeners: data_received, after the read
        if message.started is not None:
            self._record_step(message.seconds)
        for event in message.aborted:
            request_id = event.request_id[cut:]
            stream = self._cancelling.pop(request_id, None)
            if stream is not None:
                stream._deliver(event)
            elif (stream := self._streams.pop(request_id, None)) is not None:
                stream._deliver(event)  # the core ended it on its own (shutting down)
        if message.stats is not None:
            self._stats = message.stats
        for done in (*message.embedded, *message.encoded):
            self._in_core.discard(done.key)
            answer = self._answers.get(done.key)
            if answer is None or answer.done():
                continue
            if done.error is not None:
                error = _ERRORS.get(done.code, RuntimeError) if done.code else RuntimeError
                answer.set_exception(error(done.error))
            else:
                answer.set_result(done)

    def _fail(self, reason: str) -> None:
        """The core is gone: every open request ends with error, waiting submits are refused."""
        if not self._exited.done():
            self._exited.set_result(None)
        if self.failure is not None:
            return
        self.failure = reason
        if not self._closed:
            log.error("%s; failing %d open requests", reason, len(self._streams) + len(self._admitting))
        for verdict in list(self._admitting.values()):
            if not verdict.done():
                verdict.set_exception(EngineUnavailable(f"engine unavailable: {reason}; retry later"))
        self._admitting.clear()
        self._in_core.clear()
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(EngineUnavailable(f"engine unavailable: {reason}; retry later"))
        reason_final = FinishReason.CANCELLED if self._closed else FinishReason.ERROR
        for request_id, stream in [*self._streams.items(), *self._cancelling.items()]:
            final = FinishReason.CANCELLED if request_id in self._cancelling else reason_final
            stream._deliver(TokenEvent(request_id, 0, -1, "", finish_reason=final))
        self._streams.clear()
        self._cancelling.clear()
