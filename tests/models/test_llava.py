"""LLaVA-family models: a tiny randomly initialised checkpoint built here (seedance/bench/llava_checkpoint.py)
loads with our loader; greedy output for image+text chats equals transformers' LlavaForConditionalGeneration
.generate token for token (the vision tower and projector through transformers' modules, the language model
through our runner)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from seedance.bench.llava_checkpoint import build_llava
from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.config import EngineConfig
from seedance.engine.errors import InvalidRequest
from seedance.engine.image_prompt import ImageInput, for_template
from seedance.engine.process_engine import ProcessEngine
from seedance.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.asyncio(loop_scope="module")
N_NEW = 12


def png(seed: int, size: tuple[int, int] = (40, 48)) -> bytes:
    pixels = (np.random.default_rng(seed).random((*size, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_llava(tmp_path_factory.mktemp("llava"))


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["thread", "process"])
async def engine(request, llava_dir):
    """Both engine modes: the vision tower beside the engine thread, or in the engine process (its own thread)."""
    config = EngineConfig(model=str(llava_dir), dtype="float32", num_kv_blocks=64, block_size=8,
                          max_num_batched_tokens=24, max_num_seqs=4, max_images_per_prompt=4, warmup=False)
    eng = await (AsyncEngine if request.param == "thread" else ProcessEngine).create(config)
    yield eng
    await eng.close()


@pytest.fixture(scope="module")
def hf(llava_dir):
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=torch.float32).eval()
    return model, AutoImageProcessor.from_pretrained(llava_dir)


def chat(*content) -> list[dict]:
    parts = [{"type": "image", "image": ImageInput(c)} if isinstance(c, bytes) else {"type": "text", "text": c}
             for c in content]
    return [{"role": "user", "content": parts}]


async def ours(engine, messages) -> tuple[list[int], object]:
    params = SamplingParams(max_tokens=N_NEW, temperature=0, ignore_eos=True)
    events = [e async for e in engine.generate(GenerateRequest(messages=messages, params=params))]
    return [e.token_id for e in events if e.token_id >= 0], events[-1]


def reference(engine, hf, messages) -> list[int]:
    model, processor = hf
    image_id = engine.vision.image_token_id
    ids = []
    for t in engine.tokenizer.apply_chat_template(for_template(messages, True)):
        ids += [t] * 16 if t == image_id else [t]  # the processor's expansion: one token per feature row
    images = [Image.open(io.BytesIO(p["image"].data)).convert("RGB") for m in messages for p in m["content"]
              if p["type"] == "image"]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), pixel_values=pixels, max_new_tokens=N_NEW, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


async def test_image_chats_equal_transformers_generate(engine, hf):
    assert engine.takes_images
    for messages in (chat(png(1), "What is in the picture?"),
                     chat("Compare", png(2), "with", png(3), "and tell me."),
                     chat(*[png(10 + i, (32, 32)) for i in range(4)], "Frames of a video: what happens?")):
        tokens, final = await ours(engine, messages)
        assert tokens == reference(engine, hf, messages)
        assert final.num_image_tokens == 16 * sum(isinstance(p.get("image"), ImageInput)
                                                  for m in messages for p in m["content"])
        assert final.num_text_tokens == final.num_prompt_tokens - final.num_image_tokens > 0


async def test_the_image_matters_and_the_same_image_reuses_its_kv(engine):
    a, first = await ours(engine, chat(png(5), "Describe it."))
    b, _ = await ours(engine, chat(png(6), "Describe it."))
    again, repeat = await ours(engine, chat(png(5), "Describe it."))
    assert a != b and again == a
    assert repeat.num_cached_tokens >= 16 and first.num_cached_tokens < repeat.num_cached_tokens


async def test_text_only_chats_and_bad_images(engine, hf):
    text = [{"role": "user", "content": "Hello there"}]
    tokens, final = await ours(engine, text)
    assert len(tokens) == N_NEW and final.num_image_tokens == 0
    for messages in (chat(b"not an image", "?"),
                     chat(*[png(i) for i in range(5)]),  # over max_images_per_prompt
                     [{"role": "user", "content": [{"type": "image", "image": ImageInput("@@not base64")}]}],
                     [{"role": "user", "content": "an <image> token typed as text"}, *chat(png(1))]):
        with pytest.raises(InvalidRequest):
            await engine.submit(GenerateRequest(messages=messages, params=SamplingParams(max_tokens=2)))


async def test_huge_images_are_refused_from_their_header(engine, monkeypatch):
    monkeypatch.setattr(engine.config, "max_image_pixels", 32 * 32)
    with pytest.raises(InvalidRequest, match="pixels"):
        await engine.submit(GenerateRequest(messages=chat(png(1, (64, 64))), params=SamplingParams(max_tokens=2)))


async def test_images_are_decoded_and_encoded_on_the_vision_thread(engine):
    """Neither the event loop nor the engine thread decodes or encodes an image; a long text prompt keeps its own
    tokenizer thread (a short one is tokenized on the loop), so text never waits behind an image."""
    import threading

    if isinstance(engine, ProcessEngine):
        pytest.skip("the process mode's threads: test_process_mode_decodes_here_and_encodes_in_the_core")

    import seedance.models.llava as llava

    seen: dict[str, list[str]] = {"decode": [], "encode": [], "text": []}
    vision, decode, encode_text = engine.engine.vision, llava.decode_image, engine.tokenizer.encode
    encode = vision.encode
    llava.decode_image = lambda *a: seen["decode"].append(threading.current_thread().name) or decode(*a)
    vision.encode = lambda imgs: seen["encode"].append(threading.current_thread().name) or encode(imgs)
    engine.tokenizer.encode = lambda t: seen["text"].append(threading.current_thread().name) or encode_text(t)
    try:
        await ours(engine, chat(png(8), "Describe", png(9)))
        seen["text"].clear()
        await engine.tokenize(GenerateRequest(prompt="And God said"))  # short: on the loop, cheaper than a hop
        await engine.tokenize(GenerateRequest(prompt="And God said " * 100))  # long: the tokenizer thread
    finally:
        llava.decode_image, vision.encode, engine.tokenizer.encode = decode, encode, encode_text
    assert len(seen["decode"]) == 2 and len(seen["encode"]) == 1
    assert all(name.startswith("seedance-vision") for name in seen["decode"] + seen["encode"])
    assert len(seen["text"]) == 2 and seen["text"][0] == threading.main_thread().name
    assert seen["text"][1].startswith("seedance-tokenize")


async def test_process_mode_decodes_here_and_encodes_in_the_core(engine):
    """--engine process: the gateway decodes and resizes on its vision thread and holds no vision weights; the
    pixels go to the engine process, whose answer is the same features the thread mode computes here."""
    import threading

    import seedance.models.llava as llava

    if not isinstance(engine, ProcessEngine):
        pytest.skip("process mode only")
    assert not hasattr(engine.vision, "tower")  # an ImageFront: image processor and image token, no weights
    seen: list[str] = []
    decode = llava.decode_image
    llava.decode_image = lambda *a: seen.append(threading.current_thread().name) or decode(*a)
    try:
        tokens, final = await ours(engine, chat(png(8), "Describe", png(9)))
    finally:
        llava.decode_image = decode
    assert len(seen) == 2 and all(name.startswith("seedance-vision") for name in seen)
    assert len(tokens) == N_NEW and final.num_image_tokens == 32
