"""Embedding prompts over the wire, against the real server: WebSocket prompt_b64 embedding_f32le and
prompt_parts, MTF1's is_multimodal flag, and OpenAI /v1/completions prompt_embeds through the openai SDK.
The oracle: the built-in model's own embedding rows for some token ids give exactly those ids' output."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct

import openai
import pytest
import torch
from safetensors.torch import load_file
from websockets.asyncio.client import connect

from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.protocol import decode_frame
from tests.e2e.test_websocket import run_requests, text_of

IDS = [1063, 389, 392, 322, 689, 17, 259]  # built-in tokenizer ids
GREEDY = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def table() -> torch.Tensor:
    return load_file(str(BUILTIN_MODEL_DIR / "model.safetensors"))["model.embed_tokens.weight"].float()


def f32le(rows: torch.Tensor) -> str:
    return base64.b64encode(rows.float().numpy().astype("<f4").tobytes()).decode()


def tokens_b64(ids: list[int]) -> str:
    return base64.b64encode(struct.pack(f"<{len(ids)}I", *ids)).decode()


def torch_b64(obj) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return base64.b64encode(buf.getvalue()).decode()


def ids_of(result: dict) -> list[int]:
    return [t for c in result["chunks"] for t in c["token_ids"]]


async def test_websocket_embedding_prompts_equal_their_token_ids(server, table):
    async with connect(server.ws) as ws:
        results = await run_requests(ws, [
            {"id": "ids", "prompt_b64": tokens_b64(IDS), **GREEDY},
            {"id": "rows", "prompt_b64": f32le(table[IDS]), "prompt_format": "embedding_f32le", **GREEDY},
            {"id": "parts", "prompt_parts": [{"type": "tokens", "ids": IDS[:2]},
                                             {"type": "embedding", "b64": f32le(table[IDS[2:5]])},
                                             {"type": "tokens", "ids": IDS[5:]}], **GREEDY},
        ])
    assert all(not r["errors"] for r in results.values())
    assert ids_of(results["rows"]) == ids_of(results["parts"]) == ids_of(results["ids"])
    assert text_of(results["rows"]) == text_of(results["ids"])
    assert results["ids"]["done"]["usage"] == {"prompt_tokens": 7, "completion_tokens": 12, "cached_tokens": 0}
    usage = results["parts"]["done"]["usage"]
    assert (usage["prompt_tokens"], usage["text_tokens"], usage["embedding_tokens"], usage["image_tokens"]) == \
        (7, 4, 3, 0)


async def test_mtf1_frames_of_embedding_prompts_are_multimodal(server, table):
    async def frames_of(ws, request: dict) -> list:
        await ws.send(json.dumps({"type": "generate", "binary": True, **GREEDY, **request}))
        frames = []
        async with asyncio.timeout(60):
            while not frames or frames[-1].is_partial:
                view = memoryview(await ws.recv())
                while view:
                    size = 16 + struct.unpack_from("<I", view, 8)[0]
                    frames.append(decode_frame(view[:size]))
                    view = view[size:]
        return frames

    async with connect(server.ws) as ws:
        rows = await frames_of(ws, {"id": "m", "prompt_b64": f32le(table[IDS]), "prompt_format": "embedding_f32le"})
        text = await frames_of(ws, {"id": "t", "prompt_b64": tokens_b64(IDS)})
    assert all(f.is_multimodal for f in rows) and not any(f.is_multimodal for f in text)
    assert [t for f in rows for t in f.token_ids] == [t for f in text for t in f.token_ids]
    assert rows[-1].metadata["usage"]["embedding_tokens"] == 7
    assert "embedding_tokens" not in text[-1].metadata["usage"]


@pytest.mark.parametrize(
    "request_fields",
    [
        {"prompt_b64": f32le(torch.zeros(3, 255)), "prompt_format": "embedding_f32le"},  # not whole rows
        {"prompt_b64": f32le(torch.full((1, 256), float("nan"))), "prompt_format": "embedding_f32le"},
        {"prompt_parts": [{"type": "text", "text": "hi"},
                          {"type": "embedding", "b64": f32le(torch.full((2, 256), float("inf")))}]},
    ],
)
async def test_bad_embeddings_are_invalid_requests(server, request_fields):
    async with connect(server.ws) as ws:
        bad = (await run_requests(ws, [{"id": "bad", **request_fields, "max_tokens": 2}]))["bad"]
        assert [e["code"] for e in bad["errors"]] == ["invalid_request"]
        good = (await run_requests(ws, [{"id": "good", "prompt": "And God said", "max_tokens": 2}]))["good"]
        assert good["done"]["finish_reason"] == "length"  # the connection and the server carry on


async def test_openai_completions_prompt_embeds(server, table):
    client = openai.AsyncOpenAI(base_url=f"{server.http}/v1", api_key="unused", max_retries=0)
    ref = await client.completions.create(model="seedance-tiny", prompt=IDS, max_tokens=12, temperature=0)
    got = await client.completions.create(model="seedance-tiny", prompt="", max_tokens=12, temperature=0,
                                          extra_body={"prompt_embeds": torch_b64(table[IDS].bfloat16())})
    assert got.choices[0].text == ref.choices[0].text
    assert got.usage.prompt_tokens == 7
    details = got.usage.prompt_tokens_details.model_dump()
    assert (details["text_tokens"], details["embedding_tokens"], details["image_tokens"]) == (0, 7, 0)
    stream = await client.completions.create(model="seedance-tiny", prompt="", max_tokens=12, temperature=0,
                                             stream=True, extra_body={"prompt_embeds": [torch_b64(table[IDS][None])]})
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == ref.choices[0].text
    for bad in (torch_b64(table[IDS][:, :100]),  # wrong width
                torch_b64({"rows": table[IDS]}),  # a tensor inside something else
                torch_b64(table[IDS].double()),
                base64.b64encode(b"\x80\x04\x95 not a pickle").decode(),
                "@@not base64@@"):
        with pytest.raises(openai.BadRequestError) as err:
            await client.completions.create(model="seedance-tiny", prompt="", max_tokens=2,
                                            extra_body={"prompt_embeds": bad})
        assert err.value.status_code == 400 and err.value.body["code"] == "invalid_request"
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model="seedance-tiny", prompt="text too", max_tokens=2,
                                        extra_body={"prompt_embeds": torch_b64(table[IDS])})
    await client.close()
