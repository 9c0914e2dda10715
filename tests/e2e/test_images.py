"""Images against the real server serving a tiny LLaVA checkpoint built in the test: OpenAI chat image_url
content parts (through the openai SDK) and WebSocket messages with the same parts; greedy output equals
transformers' LlavaForConditionalGeneration.generate token for token; data: URLs only, bounded, 4xx on bad input."""

from __future__ import annotations

import base64
import json

import openai
import pytest
from websockets.asyncio.client import connect

from seedance.bench.llava_checkpoint import build_llava
from tests.e2e.test_websocket import run_requests
from tests.e2e.wire import until
from tests.models.test_llava import N_NEW, png

MODEL = "tiny-llava"


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_llava(tmp_path_factory.mktemp("models") / MODEL)


@pytest.fixture(scope="module")
def llava_server(tmp_path_factory, llava_dir):
    from tests.e2e.conftest import start_server

    srv = start_server(tmp_path_factory, model=llava_dir, dtype="float32", max_images_per_prompt=4,
                       max_message_bytes=4 << 20)
    yield srv
    srv.stop()


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def content(*items) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": data_url(i)}} if isinstance(i, bytes)
            else {"type": "text", "text": i} for i in items]


def hf_reference(llava_dir, items) -> list[int]:
    """transformers' generate on the same chat (the template's <image> expanded to the 16 feature rows)."""
    import io

    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    from seedance.engine.image_prompt import for_template
    from seedance.models.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(llava_dir)
    parts = [{"type": "image"} if isinstance(i, bytes) else {"type": "text", "text": i} for i in items]
    ids = []
    for t in tok.apply_chat_template(for_template([{"role": "user", "content": parts}], True)):
        ids += [t] * 16 if t == tok.backend.token_to_id("<image>") else [t]
    images = [Image.open(io.BytesIO(i)).convert("RGB") for i in items if isinstance(i, bytes)]
    pixels = AutoImageProcessor.from_pretrained(llava_dir)(images=images, return_tensors="pt")["pixel_values"]
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), pixel_values=pixels, max_new_tokens=N_NEW, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


async def test_openai_and_websocket_images_equal_transformers(llava_server, llava_dir):
    items = ("Compare", png(2), "with", png(3), "please.")
    greedy = {"max_tokens": N_NEW, "temperature": 0, "ignore_eos": True}
    async with connect(llava_server.ws) as ws:
        result = (await run_requests(ws, [{"id": "img", "messages": [{"role": "user", "content": content(*items)}],
                                           **greedy}]))["img"]
    assert not result["errors"]
    assert [t for c in result["chunks"] for t in c["token_ids"]] == hf_reference(llava_dir, items)
    usage = result["done"]["usage"]
    assert usage["image_tokens"] == 32 and usage["text_tokens"] + 32 == usage["prompt_tokens"]

    client = openai.AsyncOpenAI(base_url=f"{llava_server.http}/v1", api_key="unused", max_retries=0)
    reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content(*items)}],
                                                 max_tokens=N_NEW, temperature=0, extra_body={"ignore_eos": True})
    assert reply.choices[0].message.content == "".join(c["text"] for c in result["chunks"])
    assert reply.usage.prompt_tokens_details.model_dump()["image_tokens"] == 32
    card = (await client.models.list()).data[0].model_dump()
    assert card["input_modalities"] == ["text", "image"]

    for bad, code in (
        ([{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}], "invalid_request"),
        (content(b"not a png at all"), "invalid_request"),
        (content(*[png(i) for i in range(5)]), "invalid_request"),  # over max_images_per_prompt
        ([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}], "unsupported"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": bad}],
                                                 max_tokens=2)
        assert err.value.body["code"] == code
    ok = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")  # still serving
    await client.close()


async def test_a_text_model_refuses_images(server):
    async with connect(server.ws) as ws:
        result = (await run_requests(ws, [{"id": "i", "max_tokens": 2, "messages": [
            {"role": "user", "content": content("What is this?", png(1))}]}]))["i"]
    assert [e["code"] for e in result["errors"]] == ["invalid_request"]
    assert "takes no images" in result["errors"][0]["message"]


async def test_streaming_vision_session_keeps_earlier_frames(llava_server):
    """Frames sent one by one as turns of a session: each turn's prompt holds every frame so far, but only the
    new frame (and the new text) is computed; the earlier frames' KV is the session's."""
    async with connect(llava_server.ws) as ws:
        dones = []
        for k in range(3):
            turn = [{"role": "user", "content": content(png(40 + k), "And now?")}]
            await ws.send(json.dumps({"type": "generate", "id": f"f{k}", "session": "video", "messages": turn,
                                      "max_tokens": 3, "temperature": 0}))
            seen = await until(ws, lambda m, k=k: m["id"] == f"f{k}" and m["type"] in ("done", "error"), 60)
            assert seen[-1]["type"] == "done", seen[-1]
            dones.append(seen[-1])
    assert [d["usage"]["image_tokens"] for d in dones] == [16, 32, 48]
    for done in dones[1:]:
        new = done["usage"]["prompt_tokens"] - done["usage"]["cached_tokens"]
        assert new <= 16 + 12 and done["kv_reuse"] > 0.5  # the new frame and a few text tokens
