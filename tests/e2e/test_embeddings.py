"""/v1/embeddings, /tokenize and /detokenize against the real server: the `openai` SDK's embeddings call
(base64, its default), the float form, token-array and batch inputs, usage, refusals, and vectors equal to
transformers' mean-pooled last hidden state on the same model."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import torch
import transformers

from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.models.tokenizer import TextTokenizer

TEXTS = ["In the beginning God created the heaven and the earth.", "Blessed are the meek"]


@pytest.fixture(scope="module")
def sdk(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.http}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def oracle():
    """Text -> transformers' mean of last_hidden_state, L2-normalised (float32)."""
    hf = transformers.AutoModel.from_pretrained(BUILTIN_MODEL_DIR, dtype=torch.float32).eval()
    tokenizer = TextTokenizer.from_dir(BUILTIN_MODEL_DIR)

    def embed(text: str) -> np.ndarray:
        with torch.inference_mode():
            hidden = hf(torch.tensor([tokenizer.encode(text)])).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy()

    return embed


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.http}{path}", json=body, timeout=60)


def test_sdk_batch_matches_transformers(sdk, oracle):
    reply = sdk.embeddings.create(model="seedance-tiny", input=TEXTS)  # the SDK asks for base64 and decodes it
    assert [d.index for d in reply.data] == [0, 1] and reply.object == "list"
    for text, item in zip(TEXTS, reply.data, strict=True):
        got = np.asarray(item.embedding, dtype=np.float32)
        want = oracle(text)
        assert got.shape == want.shape == (256,)
        assert float(got @ want) > 0.9995 and abs(float(np.linalg.norm(got)) - 1) < 1e-3
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > len(TEXTS)


def test_float_and_base64_give_the_same_vector_and_tokens_equal_text(server):
    ids = post(server, "/tokenize", {"prompt": TEXTS[0]}).json()["tokens"]
    as_float = post(server, "/v1/embeddings", {"input": TEXTS[0], "encoding_format": "float"}).json()
    as_b64 = post(server, "/v1/embeddings", {"input": [ids], "encoding_format": "base64"}).json()
    vector = np.asarray(as_float["data"][0]["embedding"], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, vector, atol=1e-6)
    assert as_float["usage"]["prompt_tokens"] == len(ids) == as_b64["usage"]["prompt_tokens"]
    flat = post(server, "/v1/embeddings", {"input": ids, "dimensions": 256}).json()  # one token array
    assert len(flat["data"]) == 1 and len(flat["data"][0]["embedding"]) == 256


@pytest.mark.parametrize(("body", "param"), [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": [1, "a"]}, "input"),
    ({"input": [[1, 2], []]}, "input"),
    ({"input": [10**9]}, "input"),
    ({"input": ["a"] * 129}, "input"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "dimensions": 64}, "dimensions"),
    ({"input": "a", "user": 3}, "user"),
])
def test_bad_embedding_requests_get_a_400_naming_the_field(server, body, param):
    reply = post(server, "/v1/embeddings", body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param


def test_unknown_model_is_404(server):
    reply = post(server, "/v1/embeddings", {"input": "a", "model": "gpt-4"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"


def test_tokenize_counts_what_a_completion_prompt_costs(server, sdk):
    got = post(server, "/tokenize", {"prompt": TEXTS[1], "return_token_strs": True}).json()
    done = sdk.completions.create(model="seedance-tiny", prompt=TEXTS[1], max_tokens=1)
    assert got["count"] == len(got["tokens"]) == done.usage.prompt_tokens
    assert got["max_model_len"] > got["count"] and len(got["token_strs"]) == got["count"]
    assert all(isinstance(s, str) for s in got["token_strs"])
    llama = post(server, "/tokenize", {"content": TEXTS[1], "with_pieces": True}).json()  # llama-server's names
    assert [t["id"] for t in llama["tokens"]] == got["tokens"]
    assert "".join(t["piece"] for t in llama["tokens"]) == TEXTS[1]
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": TEXTS[1]}]}).json()
    reply = sdk.chat.completions.create(model="seedance-tiny", max_tokens=1,
                                        messages=[{"role": "user", "content": TEXTS[1]}])
    assert chat["count"] == reply.usage.prompt_tokens


def test_detokenize_round_trips(server):
    ids = post(server, "/tokenize", {"prompt": TEXTS[0]}).json()["tokens"]
    back = post(server, "/detokenize", {"tokens": ids}).json()
    assert back["prompt"] == back["content"] == TEXTS[0]
    assert post(server, "/detokenize", {"tokens": []}).json()["prompt"] == ""


@pytest.mark.parametrize(("path", "body"), [
    ("/tokenize", {}),
    ("/tokenize", {"prompt": 3}),
    ("/tokenize", {"prompt": "a", "add_special_tokens": "yes"}),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}),
    ("/tokenize", {"messages": [{"role": "user", "content": "b"}], "add_generation_prompt": False}),
    ("/tokenize", {"messages": "hi"}),
    ("/detokenize", {"tokens": [-1]}),
    ("/detokenize", {"tokens": [10**12]}),
    ("/detokenize", {"tokens": "12"}),
])
def test_bad_tokenize_requests_are_400(server, path, body):
    reply = post(server, path, body)
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"


async def test_embeddings_during_a_stream_leave_its_output_unchanged(server):
    """The forward runs on scratch K/V, never the paged cache: a greedy stream gives the same text with a large
    embedding batch computed between its steps."""
    body = {"prompt": "And it came to pass", "max_tokens": 48, "temperature": 0, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=server.http, timeout=120) as client:
        alone = (await client.post("/v1/completions", json=body)).json()["choices"][0]["text"]
        batch = {"input": [TEXTS[0] * 6] * 32}
        together, vectors = await asyncio.gather(client.post("/v1/completions", json=body),
                                                 client.post("/v1/embeddings", json=batch))
    assert vectors.status_code == 200 and len(vectors.json()["data"]) == 32
    assert together.json()["choices"][0]["text"] == alone
