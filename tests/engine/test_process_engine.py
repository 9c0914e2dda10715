"""ProcessEngine (the gateway's side of `--engine process`) against a fake engine core on the other end of a
socket pair: the core's side is scripted here, so admission, batching, cancel and a crash are checked exactly."""

from __future__ import annotations

import asyncio
import io
import pickle
import socket

import pytest
import torch
from PIL import Image

from seedance.bench.llava_checkpoint import build_llava
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
    Ready,
    Refusal,
    Step,
    decode_commands,
    embeds_from_wire,
    frame,
    tensor_from_bytes,
)
from seedance.engine.engine_front import GenerateRequest
from seedance.engine.errors import EngineOverloaded, EngineUnavailable, InvalidRequest
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.image_prompt import ImageInput
from seedance.engine.llm_engine import EngineStats
from seedance.engine.process_engine import ProcessEngine
from seedance.engine.prompt_embeds import content_ids, digest_of
from seedance.engine.sampling_params import SamplingParams
from seedance.models.llava import ImageFront
from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.models.tokenizer import TextTokenizer
from tests.models.test_llava import png

STATS = EngineStats(0, 0, 0, 64, 64, 0, 0, 0, 0, 0, 0, 0)


class FakeCore:
    """The engine process's end: reads command frames, answers with frames the test writes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = FrameBuffer()
        self.command_frames: list[list] = []

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(sock=self.sock)
        tokenizer = pickle.dumps(TextTokenizer.from_dir(BUILTIN_MODEL_DIR))
        self.send(Ready(512, "fake", {"config_loaded": 1}, tokenizer, STATS))

    def send(self, message) -> None:
        self.writer.write(frame(message))

    async def commands(self, n: int) -> list:
        """The next n commands, however many frames they came in."""
        got: list = []
        async with asyncio.timeout(5):
            while len(got) < n:
                for body in self.frames.feed(await self.reader.read(1 << 16)):
                    self.command_frames.append(decode_commands(body))
                    got += self.command_frames[-1]
        return got


@pytest.fixture
async def pair():
    ours, theirs = socket.socketpair()
    core = FakeCore(theirs)
    await core.start()
    engine = await ProcessEngine.connect(EngineConfig(), ours)
    yield engine, core
    core.writer.close()
    await engine.close()


def ids_request(rid: str, max_tokens: int = 4) -> GenerateRequest:
    return GenerateRequest(prompt_token_ids=[5, 6, 7], params=SamplingParams(max_tokens=max_tokens), request_id=rid)


async def test_ready_gives_the_gateway_its_tokenizer_and_limits(pair):
    engine, _ = pair
    assert engine.engine.model_name == "fake" and engine.max_model_len == 512
    assert engine.tokenizer.encode("In the beginning") == TextTokenizer.from_dir(BUILTIN_MODEL_DIR).encode(
        "In the beginning")
    assert engine.stats() == STATS


async def test_submits_in_one_loop_turn_go_in_one_frame_and_one_step_feeds_every_stream(pair):
    engine, core = pair
    submits = [asyncio.create_task(engine.submit(ids_request(r))) for r in ("a", "b", "c")]
    adds = await core.commands(3)
    assert [type(c) for c in adds] == [Add] * 3 and len(core.command_frames) == 1
    assert adds[0].token_ids == [5, 6, 7] and adds[0].params.max_tokens == 4
    core.send(Step([], admitted=["a", "b", "c"]))
    streams = await asyncio.gather(*submits)
    core.send(Step([TokenEvent(r, 0, 11, "x") for r in "abc"] +
                   [TokenEvent("a", 1, 12, "y", finish_reason=FinishReason.LENGTH)], started=1.0, seconds=0.02))
    await asyncio.sleep(0.05)
    drained = [s.drain() for s in streams]
    assert [[e.token_id for e in d] for d in drained] == [[11, 12], [11], [11]]
    assert streams[0].finished and engine.open_request_ids() == ["b", "c"]
    assert engine.last_step_started == 1.0 and engine.step_latencies == [0.02]


async def test_a_read_of_several_steps_is_delivered_together_and_told_to_the_core_once(pair):
    engine, core = pair
    submit = asyncio.create_task(engine.submit(ids_request("a", max_tokens=8)))
    await core.commands(1)
    core.send(Step([], admitted=["a"]))  # no events: nothing to tell the core
    stream = await submit
    woken = []
    stream.listener = lambda: woken.append(stream.queue.qsize())
    core.writer.write(frame(Step([TokenEvent("a", 0, 11, "x")], started=1.0, seconds=0.02)) +
                      frame(Step([TokenEvent("a", 0, 12, "y")], started=1.02, seconds=0.02)))  # one read
    delivered = await core.commands(1)
    assert delivered == [Delivered(2)]  # once both steps reached the stream: the core may step on
    assert woken == [2]  # the connection's listener once, for both steps: one chunk of two tokens
    assert [e.token_id for e in stream.drain()] == [11, 12]
    assert (engine.steps_delivered, engine.step_reads) == (2, 1)
    core.send(Step([TokenEvent("a", 0, 13, "z")], started=1.04, seconds=0.02))
    assert await core.commands(1) == [Delivered(1)] and woken == [2, 1]  # a step in its own read: its own write


async def test_the_cores_refusals_raise_the_engine_errors(pair):
    engine, core = pair
    bad = asyncio.create_task(engine.submit(ids_request("bad")))
    full = asyncio.create_task(engine.submit(ids_request("full")))
    await core.commands(2)
    core.send(Step([], refused=[Refusal("bad", "invalid_request", "max_tokens too big"),
                                Refusal("full", "overloaded", "waiting queue is full")]))
    with pytest.raises(InvalidRequest, match="max_tokens too big"):
        await bad
    with pytest.raises(EngineOverloaded, match="waiting queue"):
        await full
    assert engine.num_open_requests == 0


async def test_cancel_delivers_only_the_cores_abort_result(pair):
    engine, core = pair
    task = asyncio.create_task(engine.submit(ids_request("a", 100)))
    await core.commands(1)
    core.send(Step([], admitted=["a"]))
    stream = await task
    engine.cancel("a")
    (abort,) = await core.commands(1)
    assert abort == Abort("a")
    # A step that ran before the abort still carries a token for it: dropped, the stream is cancelled.
    final = TokenEvent("a", 1, -1, "", finish_reason=FinishReason.CANCELLED)
    core.send(Step([TokenEvent("a", 0, 11, "x")], aborted=[final]))
    await asyncio.sleep(0.05)
    assert [e.finish_reason for e in stream.drain()] == [FinishReason.CANCELLED]


async def test_a_dead_core_fails_open_streams_and_refuses_new_requests(pair):
    engine, core = pair
    task = asyncio.create_task(engine.submit(ids_request("a", 100)))
    waiting = asyncio.create_task(engine.submit(ids_request("b", 100)))
    await core.commands(2)
    core.send(Step([TokenEvent("a", 0, 11, "x")], admitted=["a"]))
    stream = await task
    core.writer.close()  # the engine process is gone: EOF
    with pytest.raises(EngineUnavailable):
        await waiting
    events = [e async for e in stream]
    assert [e.token_id for e in events] == [11, -1] and events[-1].finish_reason is FinishReason.ERROR
    assert engine.failure and engine.num_open_requests == 0
    with pytest.raises(EngineOverloaded):  # EngineUnavailable is an EngineOverloaded: clients back off, retry
        await engine.submit(ids_request("c"))


async def test_a_full_command_channel_refuses_new_requests(pair):
    engine, core = pair
    engine.config.process_channel_bytes = 64 * 1024
    core.writer.transport.pause_reading()  # the core is behind: the socket fills, the rest waits in our buffer
    big = asyncio.create_task(engine.submit(GenerateRequest(prompt_token_ids=list(range(1000, 400_000)))))
    await asyncio.sleep(0.1)
    assert engine._transport.get_write_buffer_size() > 64 * 1024
    with pytest.raises(EngineOverloaded, match="behind"):
        await engine.submit(ids_request("next"))
    big.cancel()


@pytest.fixture
async def vision_pair():
    """A core whose Ready says the model takes images and prompt embeddings (a LLaVA-family model)."""
    ours, theirs = socket.socketpair()
    core = FakeCore(theirs)
    core.reader, core.writer = await asyncio.open_unix_connection(sock=core.sock)
    tokenizer = pickle.dumps(TextTokenizer.from_dir(BUILTIN_MODEL_DIR))
    core.send(Ready(512, "fake", {}, tokenizer, STATS, dtype="bfloat16", hidden_size=8, takes_images=True,
                    embedding_shape=(8, 300)))
    engine = await ProcessEngine.connect(EngineConfig(), ours)
    yield engine, core
    core.writer.close()
    await engine.close()


async def test_ready_carries_the_model_facts(vision_pair, pair):
    engine, _ = vision_pair
    assert (engine.hidden_size, engine.takes_images, engine.embedding_shape) == (8, True, (8, 300))
    assert engine.config.dtype == "bfloat16" and engine.vision is None
    plain, _ = pair
    assert (plain.hidden_size, plain.takes_images, plain.embedding_shape) == (None, False, None)


async def test_without_an_image_front_images_are_refused_and_nothing_is_sent(vision_pair):
    engine, core = vision_pair  # its Ready says the model takes images but brings no image processor
    chat = [{"role": "user", "content": [{"type": "text", "text": "what is it"},
                                         {"type": "image", "image": b"not looked at"}]}]
    with pytest.raises(InvalidRequest, match="takes no images"):
        await engine.submit(GenerateRequest(messages=chat))
    assert engine.num_open_requests == 0
    task = asyncio.create_task(engine.submit(ids_request("next")))
    assert [c.request_id for c in await core.commands(1)] == ["next"]  # nothing went out for the image prompt
    task.cancel()


@pytest.fixture(scope="module")
def llava_front(tmp_path_factory):
    """The tiny LLaVA's tokenizer and ImageFront (image processor, image token): what a real core's Ready sends."""
    from transformers import AutoImageProcessor

    path = build_llava(tmp_path_factory.mktemp("llava") / "tiny-llava")
    tokenizer = TextTokenizer.from_dir(path)
    processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    return tokenizer, ImageFront(processor, tokenizer.backend.token_to_id("<image>"))


@pytest.fixture
async def image_pair(llava_front):
    tokenizer, front = llava_front
    ours, theirs = socket.socketpair()
    core = FakeCore(theirs)
    core.reader, core.writer = await asyncio.open_unix_connection(sock=core.sock)
    core.send(Ready(512, "fake", {}, pickle.dumps(tokenizer), STATS, hidden_size=64, takes_images=True,
                    image_front=pickle.dumps(front)))
    engine = await ProcessEngine.connect(EngineConfig(max_images_per_prompt=2), ours)
    yield engine, core
    core.writer.close()
    await engine.close()


def image_chat(*images: bytes) -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image", "image": ImageInput(i)} for i in images),
                                         {"type": "text", "text": "what is it"}]}]


async def test_an_image_chat_sends_pixels_then_an_add_holding_the_cores_features(image_pair, llava_front):
    engine, core = image_pair
    task = asyncio.create_task(engine.submit(GenerateRequest(messages=image_chat(png(1)), request_id="img")))
    (encode,) = await core.commands(1)
    assert isinstance(encode, EncodeImages) and encode.shape == [1, 3, 32, 32]  # the processor's size, not 40x48
    want = llava_front[1].preprocess([Image.open(io.BytesIO(png(1))).convert("RGB")])
    assert torch.equal(tensor_from_bytes(encode.pixels, encode.dtype, encode.shape), want)
    features = torch.randn(16, 64)
    core.send(Step([], encoded=[Encoded(encode.key, "float32", [16], 64, features.numpy().tobytes())]))
    (add,) = await core.commands(1)
    (segment,) = embeds_from_wire(add.embeds).segments
    assert segment.kind == "image" and torch.equal(segment.rows, features)
    assert add.token_ids[segment.start:segment.end] == content_ids(digest_of(features), 16)  # as thread mode
    core.send(Step([], admitted=["img"]))
    assert (await task).is_multimodal


async def test_images_waiting_in_the_core_are_bounded_even_when_their_requests_gave_up(image_pair):
    engine, core = image_pair
    engine.config.max_pending_tokenize = 1
    first = asyncio.create_task(engine.submit(GenerateRequest(messages=image_chat(png(1)))))
    (encode,) = await core.commands(1)
    first.cancel()  # the client went away: the core still works on its images
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(EngineOverloaded, match="being encoded"):
        await engine.submit(GenerateRequest(messages=image_chat(png(2))))
    core.send(Step([], encoded=[Encoded(encode.key, "float32", [16], 64, bytes(16 * 64 * 4))]))
    await asyncio.sleep(0.1)
    again = asyncio.create_task(engine.submit(GenerateRequest(messages=image_chat(png(2)))))
    assert isinstance((await core.commands(1))[0], EncodeImages)  # room again once the core answered
    again.cancel()


async def test_a_bad_image_fails_in_the_gateway_and_a_core_error_fails_its_request_only(image_pair):
    engine, core = image_pair
    for chat in (image_chat(b"not an image"), image_chat(png(1), png(2), png(3))):  # broken; over the limit of 2
        with pytest.raises(InvalidRequest):
            await engine.submit(GenerateRequest(messages=chat))
    failing = asyncio.create_task(engine.submit(GenerateRequest(messages=image_chat(png(2)), request_id="x")))
    (encode,) = await core.commands(1)  # nothing went out for the two bad ones
    assert isinstance(encode, EncodeImages)
    neighbour = asyncio.create_task(engine.submit(ids_request("next")))
    assert [c.request_id for c in await core.commands(1)] == ["next"]
    core.send(Step([], admitted=["next"], encoded=[Encoded(encode.key, error="tower crashed")]))
    with pytest.raises(RuntimeError, match="tower crashed"):
        await failing
    assert (await neighbour).request_id == "next" and engine.num_open_requests == 1


async def test_embedding_rows_ride_on_the_add(vision_pair):
    engine, core = vision_pair
    rows = torch.randn(3, 8)
    task = asyncio.create_task(engine.submit(GenerateRequest(prompt_parts=[[5, 6], rows, [7]], request_id="e")))
    (add,) = await core.commands(1)
    assert len(add.token_ids) == 6 and add.token_ids[:2] == [5, 6] and all(t < 0 for t in add.token_ids[2:5])
    (segment,) = embeds_from_wire(add.embeds).segments
    assert segment.start == 2 and torch.equal(segment.rows, rows)
    core.send(Step([], admitted=["e"]))
    assert (await task).is_multimodal


async def test_cancel_keep_tokens_goes_to_the_core(pair):
    engine, core = pair
    task = asyncio.create_task(engine.submit(ids_request("a", 100)))
    await core.commands(1)
    core.send(Step([], admitted=["a"]))
    await task
    engine.cancel("a", keep_tokens=5)
    assert await core.commands(1) == [Abort("a", 5)]


async def test_embed_groups_are_commands_answered_with_vector_bytes(vision_pair):
    engine, core = vision_pair
    task = asyncio.create_task(engine.embed_group([[1, 2], [3]]))
    (embed,) = await core.commands(1)
    assert isinstance(embed, Embed) and embed.inputs == [[1, 2], [3]]
    vectors = torch.arange(16, dtype=torch.float32).view(2, 8)
    core.send(Step([], embedded=[Embedded(embed.key, 8, vectors.numpy().tobytes())]))
    got = await task
    assert len(got) == 2 and all((g == v.numpy()).all() for g, v in zip(got, vectors, strict=True))
    bad = asyncio.create_task(engine.embed_group([[1]]))
    (embed,) = await core.commands(1)
    core.send(Step([], embedded=[Embedded(embed.key, error="no model", code="invalid_request")]))
    with pytest.raises(InvalidRequest, match="no model"):
        await bad


async def test_a_dead_core_fails_a_waiting_embedding(pair):
    engine, core = pair
    task = asyncio.create_task(engine.embed_group([[1, 2]]))
    await core.commands(1)
    core.writer.close()
    with pytest.raises(EngineUnavailable):
        await task
