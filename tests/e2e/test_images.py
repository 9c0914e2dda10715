"""Images against the real server serving a tiny LLaVA checkpoint built in the test: OpenAI chat image_url
content parts (through the openai SDK) and WebSocket messages with the same parts; greedy output equals
transformers' LlavaForConditionalGeneration.generate token for token; data: URLs only, bounded, 4xx on bad input."""

from __future__ import annotations

import base64
import json

import openai
import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import LLAVA_MODEL as MODEL
from tests.e2e.test_websocket import run_requests
from tests.e2e.wire import until
from tests.models.test_llava import N_NEW, png


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


async def test_a_bad_image_fails_its_request_only(llava_server, llava_dir):
    """Broken, non-base64 and truncated images next to a good image chat and a text prompt on one connection:
    each bad one gets its invalid_request error, the others their full answers (the good one still equal to
    transformers'), and the server (in process mode: the same engine process) goes on serving."""
    pid = llava_server.stats().get("engine_pid")
    items = ("Describe", png(7))
    whole = png(8, (64, 64))  # sent truncated
    requests = [
        {"id": "good", "messages": [{"role": "user", "content": content(*items)}], "max_tokens": N_NEW,
         "temperature": 0, "ignore_eos": True},
        {"id": "broken", "max_tokens": 2, "messages": [{"role": "user", "content": content(b"\x89PNG not really")}]},
        {"id": "base64", "max_tokens": 2, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]}]},
        {"id": "cut", "max_tokens": 2, "messages": [{"role": "user", "content": content(whole[:len(whole) // 2])}]},
        {"id": "text", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "ignore_eos": True},
    ]
    async with connect(llava_server.ws) as ws:
        results = await run_requests(ws, requests)
    for bad in ("broken", "base64", "cut"):
        assert [e["code"] for e in results[bad]["errors"]] == ["invalid_request"], (bad, results[bad])
    assert not results["good"]["errors"] and not results["text"]["errors"]
    assert [t for c in results["good"]["chunks"] for t in c["token_ids"]] == hf_reference(llava_dir, items)
    assert results["text"]["done"]["usage"]["completion_tokens"] == 6
    assert llava_server.stats().get("engine_pid") == pid  # no engine process was lost on the way
