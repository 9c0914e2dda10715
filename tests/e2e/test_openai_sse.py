"""The OpenAI-compatible API against the real server, driven by the official `openai` SDK; raw httpx for the SSE
framing, malformed bodies and dropped connections."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import RunningServer, start_server

MODEL = "seedance-tiny"
PROMPT = "And God said"
CHAT = [{"role": "user", "content": "Who made the heaven and the earth?"}]
FORCE_LENGTH = {"ignore_eos": True}  # extra_body: the built-in model may end early otherwise


@pytest.fixture
def client(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.http}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def small_server(tmp_path_factory) -> Iterator[RunningServer]:
    """One running and one waiting request at most, and small bodies: for overload and size limits."""
    srv = start_server(tmp_path_factory, max_num_seqs=1, max_waiting=1, max_message_bytes=64 * 1024)
    yield srv
    srv.stop()


def wait_idle(srv: RunningServer, timeout: float = 10.0) -> tuple[float, dict]:
    """Poll /stats until no request runs or is open; (seconds it took, last stats). Fails if never idle."""
    start = time.monotonic()
    while True:
        stats = srv.stats()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["open_requests"] == 0:
            return time.monotonic() - start, stats
        assert time.monotonic() - start < timeout, f"server still busy after {timeout}s: {stats}"
        time.sleep(0.02)


def sse_events(raw: str) -> list[dict[str, str]]:
    """Split an SSE body into events, each {field: value} (one line per field here)."""
    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        event: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            assert name not in event, f"field {name!r} twice in one event: {block!r}"
            event[name] = value.removeprefix(" ")
        events.append(event)
    return events


# ---------------------------------------------------------------------------------------------- models


def test_models_list_names_the_served_model(client):
    models = list(client.models.list())
    assert [m.id for m in models] == [MODEL]
    assert models[0].owned_by == "seedance"


def test_models_retrieve(client, server):
    probe = httpx.get(f"{server.http}/v1/models/{MODEL}", timeout=10)
    if not probe.headers.get("content-type", "").startswith("application/json"):
        pytest.skip("GET /v1/models/{model_id} is not routed yet (seedance/server/app.py: openai_api.model)")
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


# ---------------------------------------------------------------------------------------------- completions


def test_completion_stream_equals_non_stream(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0,
                                     extra_body=FORCE_LENGTH)
    (choice,) = full.choices
    assert choice.finish_reason == "length" and choice.text.strip()
    assert full.usage.completion_tokens == 20 and full.usage.prompt_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + 20
    assert full.id.startswith("cmpl-") and full.model == MODEL

    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body=FORCE_LENGTH))
    *text_chunks, usage_chunk = chunks
    assert len(text_chunks) > 1  # really streamed, not one blob
    assert "".join(c.choices[0].text for c in text_chunks) == choice.text
    finishes = [c.choices[0].finish_reason for c in text_chunks]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert len({c.id for c in chunks}) == 1
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == 20
    assert usage_chunk.usage.prompt_tokens == full.usage.prompt_tokens > 0
    assert all(c.usage is None for c in text_chunks)


def test_completion_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, stream=True,
                                            extra_body=FORCE_LENGTH))
    assert chunks and all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_ends_generation_and_is_not_shown(client):
    free = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0,
                                     extra_body=FORCE_LENGTH).choices[0].text
    words = free.split()
    assert len(words) >= 4, free
    stop = " " + words[len(words) // 2]  # a word the greedy continuation certainly reaches
    expected = free[: free.index(stop)]
    assert expected  # the stop is not at the very start

    stopped = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop],
                                        extra_body=FORCE_LENGTH)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == expected
    assert stop not in stopped.choices[0].text
    assert stopped.usage.completion_tokens < 30

    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, stop=stop,
                                            stream=True, extra_body=FORCE_LENGTH))
    streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == expected and stop not in streamed
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completion_logprobs_shape(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, logprobs=2,
                                     extra_body=FORCE_LENGTH)
    choice = full.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 10
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0
        assert 1 <= len(top) <= 2
        assert all(v <= 0 for v in top.values())
        # greedy: the chosen token is the most likely one
        assert token in top and top[token] == pytest.approx(logprob) == pytest.approx(max(top.values()))

    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, logprobs=2,
                                            stream=True, extra_body=FORCE_LENGTH))
    streamed_tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    streamed_lps = [x for c in chunks if c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
    assert streamed_tokens == lp.tokens
    assert streamed_lps == pytest.approx(lp.token_logprobs, abs=1e-4)


def test_logprobs_zero_gives_chosen_token_only(client):
    lp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0,
                                   extra_body=FORCE_LENGTH).choices[0].logprobs
    assert len(lp.token_logprobs) == 4 and all(x <= 0 for x in lp.token_logprobs)
    assert not lp.top_logprobs


def test_token_id_prompt_and_batch_of_one(client):
    by_text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                                        extra_body=FORCE_LENGTH)
    batch = client.completions.create(model=MODEL, prompt=[PROMPT], max_tokens=6, temperature=0,
                                      extra_body=FORCE_LENGTH)
    assert batch.choices[0].text == by_text.choices[0].text
    tokens = client.completions.create(model=MODEL, prompt=[1063, 389, 392], max_tokens=3, temperature=0,
                                       extra_body=FORCE_LENGTH)
    assert tokens.usage.prompt_tokens == 3 and tokens.usage.completion_tokens == 3


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="And", max_tokens=16, temperature=1.0, seed=seed,
                                         extra_body=FORCE_LENGTH).choices[0].text

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def test_out_of_range_seed_is_refused_without_failing_other_requests(server, client):
    """A seed the sampler's RNG cannot take must be a 400, not a failed engine step (which would end every
    request in that step with an error)."""
    with httpx.Client(timeout=60) as http, http.stream(
            "POST", f"{server.http}/v1/completions",
            json={"prompt": "And", "max_tokens": 60, "ignore_eos": True, "stream": True}) as other:
        lines = other.iter_lines()
        assert next(lines).startswith("id: ")  # the other request is running
        for seed in (2**70, -(2**70)):
            with pytest.raises(openai.BadRequestError) as info:
                client.completions.create(model=MODEL, prompt="And", max_tokens=3, seed=seed)
            assert info.value.body["param"] == "seed"
        payloads = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"
    assert all("error" not in p for p in payloads)


def test_repeated_prompt_reports_cached_tokens(client):
    prompt = ("And it came to pass in those days, that there went out a decree from Caesar Augustus, that all "
              f"the world should be taxed. {time.time_ns()}")  # unique, so the first request misses the cache
    first, second = (client.completions.create(model=MODEL, prompt=prompt, max_tokens=2) for _ in range(2))
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > 32
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 16 <= cached < second.usage.prompt_tokens and cached % 16 == 0  # whole KV blocks


async def test_async_client_concurrent_streams_match_non_stream(server):
    prompts = ["And God said", "In the beginning", "Blessed are the meek"]
    async with openai.AsyncOpenAI(base_url=f"{server.http}/v1", api_key="unused", max_retries=0, timeout=60) as aclient:

        async def streamed(prompt: str) -> str:
            stream = await aclient.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0,
                                                      stream=True, extra_body=FORCE_LENGTH)
            return "".join([c.choices[0].text async for c in stream if c.choices])

        async def whole(prompt: str) -> str:
            r = await aclient.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0,
                                                 extra_body=FORCE_LENGTH)
            return r.choices[0].text

        async with asyncio.timeout(120):
            together = await asyncio.gather(*(streamed(p) for p in prompts))  # batched in the engine
            alone = [await whole(p) for p in prompts]
            chat_stream = await aclient.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8,
                                                                temperature=0, stream=True, extra_body=FORCE_LENGTH)
            chat_chunks = [c async for c in chat_stream]
    assert together == alone and all(alone)
    assert len(set(alone)) == 3
    assert chat_chunks[0].choices[0].delta.role == "assistant"
    assert chat_chunks[-1].choices[0].finish_reason == "length"


# ---------------------------------------------------------------------------------------------- chat


def test_chat_stream_equals_non_stream(client):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=0,
                                          extra_body=FORCE_LENGTH)
    (choice,) = full.choices
    assert full.object == "chat.completion" and full.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason == "length"
    assert full.usage.completion_tokens == 16 and full.usage.prompt_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + 16

    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body=FORCE_LENGTH))
    *deltas, usage_chunk = chunks
    assert deltas[0].object == "chat.completion.chunk"
    assert deltas[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role in (None, "assistant") for c in deltas)
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == choice.message.content
    finishes = [c.choices[0].finish_reason for c in deltas]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 16
    assert usage_chunk.usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_logprobs_shape(client):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                          top_logprobs=2, extra_body=FORCE_LENGTH)
    choice = full.choices[0]
    content = choice.logprobs.content
    assert len(content) == full.usage.completion_tokens == 8
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes) == t.token.encode()
        assert len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)

    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=2, stream=True, extra_body=FORCE_LENGTH))
    streamed = [t.token for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert streamed == [t.token for t in content]

    plain = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None


def test_chat_max_completion_tokens(client):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_completion_tokens=3, temperature=0,
                                          extra_body=FORCE_LENGTH)
    assert full.usage.completion_tokens == 3 and full.choices[0].finish_reason == "length"


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2)
    assert info.value.status_code == 404
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=CHAT, max_tokens=2)


def test_unsupported_and_invalid_parameters_are_bad_requests(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, n=100)
    assert info.value.body["param"] == "n" and "n must be in [1, 16]" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, n=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=100_000)
    assert "max_tokens" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2)


@pytest.mark.parametrize(("path", "body", "code", "message"), [
    ("/v1/completions", b"{not json", "invalid_json", "not valid JSON"),
    ("/v1/completions", b"", "invalid_json", "not valid JSON"),
    ("/v1/completions", b"\xff\xfe{", "invalid_json", "not valid JSON"),
    ("/v1/completions", b'[{"prompt": "x"}]', "invalid_json", "JSON object"),
    ("/v1/chat/completions", b'"hello"', "invalid_json", "JSON object"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "x"}, "invalid_request", "max_tokens must be an integer"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2.5}, "invalid_request", "max_tokens must be an integer"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "invalid_request", "temperature must be a number"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, "invalid_request", "stream must be a boolean"),
    ("/v1/completions", {"prompt": "x", "stop": 5}, "invalid_request", "stop must be"),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": ["a"]}, "invalid_request", "stop_token_ids"),
    ("/v1/completions", {"prompt": "x", "stream": True, "stream_options": 5}, "invalid_request",
     "stream_options must be an object"),
    ("/v1/completions", {"prompt": 5}, "invalid_request", "prompt must be"),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, "invalid_request", "logprobs must be in [0, 20]"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "invalid_request", "temperature"),
    ("/v1/chat/completions", {"messages": "hi"}, "invalid_request", "messages must be a non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "invalid_request",
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "invalid_request", "messages[0] needs a role"),
])
def test_malformed_bodies_get_400_json(server, path, body, code, message):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server.http}{path}", headers={"Content-Type": "application/json"}, timeout=30, **kwargs)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert {"message", "type", "code"} <= error.keys()
    assert error["type"] == "invalid_request_error" and error["code"] == code
    assert message in error["message"]


def test_body_arriving_in_pieces_is_read_whole(server):
    """A body split across TCP segments (slow network, chunked upload) must be read to its end, not to the
    first segment."""
    body = json.dumps({"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "ignore_eos": True}).encode()
    heads = {
        "length": b"Content-Length: %d\r\n" % len(body),
        "chunked": b"Transfer-Encoding: chunked\r\n",
    }
    for kind, head in heads.items():
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\n" + head + b"\r\n")
            parts = [body[:10], body[10:]]
            for i, part in enumerate(parts):
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if kind == "chunked" else part)
                if i == 0:
                    time.sleep(0.3)  # let the server see the first piece on its own
            if kind == "chunked":
                sock.sendall(b"0\r\n\r\n")
            reply = b""
            while data := sock.recv(65536):
                reply += data
        status_line, _, rest = reply.partition(b"\r\n")
        assert b" 200 " in status_line, (kind, reply)
        payload = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert payload["usage"]["completion_tokens"] == 3


def test_oversized_body_is_413_json(small_server):
    big = {"prompt": PROMPT, "max_tokens": 2, "user": "x" * (100 * 1024)}
    r = httpx.post(f"{small_server.http}/v1/completions", json=big, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "message_too_large"

    def pieces() -> Iterator[bytes]:  # chunked: no Content-Length to refuse early
        raw = json.dumps(big).encode()
        for i in range(0, len(raw), 8192):
            yield raw[i : i + 8192]

    r = httpx.post(f"{small_server.http}/v1/chat/completions", content=pieces(), timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "message_too_large"
    ok = httpx.post(f"{small_server.http}/v1/completions", json={**big, "user": "x" * 1000}, timeout=30)
    assert ok.status_code == 200


async def test_overload_gets_429_with_retry_after_and_server_survives(small_server):
    body = {"prompt": PROMPT, "max_tokens": 200, "temperature": 0, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=small_server.http, timeout=120) as http:
        async with asyncio.timeout(120):
            replies = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(8)))
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    for r in replies:
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "overloaded"
            assert r.json()["error"]["type"] == "rate_limit_error"
        else:
            assert r.json()["usage"]["completion_tokens"] == 200
    wait_idle(small_server, timeout=30)
    assert httpx.get(f"{small_server.http}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{small_server.http}/readyz", timeout=5).status_code == 200


def test_sdk_sees_rate_limit_while_queue_is_full(small_server):
    """One request runs, one waits: the next is refused (openai.RateLimitError), and dropping the two open
    streams, the waiting one included, frees the engine."""
    long = {"prompt": PROMPT, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with (httpx.Client(base_url=small_server.http, timeout=30) as http,
          http.stream("POST", "/v1/completions", json=long) as running):
        assert running.status_code == 200
        running_lines = running.iter_lines()  # kept: dropping a half-read iterator closes the connection
        next(running_lines)  # it produces tokens: it holds the one running slot
        with http.stream("POST", "/v1/completions", json=long) as waiting:
            assert waiting.status_code == 200  # admitted to the queue; no token yet
            deadline = time.monotonic() + 10
            while small_server.stats()["num_waiting"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            with (openai.OpenAI(base_url=f"{small_server.http}/v1", api_key="unused", max_retries=0,
                                timeout=30) as sdk, pytest.raises(openai.RateLimitError) as info):
                sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
            assert info.value.response.headers["Retry-After"] == "1"
            stats = small_server.stats()
            assert stats["num_running"] == 1 and stats["num_waiting"] == 1 and stats["open_requests"] == 2
            assert next(running_lines).startswith("data: ")  # the refusal did not disturb the running stream
    took, stats = wait_idle(small_server)
    assert took < 5 and stats["num_free_blocks"] + stats["num_pinned_blocks"] == stats["num_kv_blocks"]


# ---------------------------------------------------------------------------------------------- SSE framing


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"prompt": PROMPT}),
    ("/v1/chat/completions", {"messages": CHAT}),
])
def test_raw_sse_framing(server, path, body):
    request = {**body, "max_tokens": 12, "temperature": 0, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{server.http}{path}", json=request) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        raw = r.read().decode()
    events = sse_events(raw)
    assert raw.endswith("data: [DONE]\n\n")
    assert events[-1] == {"data": "[DONE]"}
    payloads = [json.loads(e["data"]) for e in events[:-1]]
    request_id = payloads[0]["id"]
    assert all(p["id"] == request_id for p in payloads)
    ids = [e["id"] for e in events[:-1]]
    assert all(i.rpartition(":")[0] == request_id for i in ids), ids
    assert [int(i.rpartition(":")[2]) for i in ids] == list(range(len(ids)))
    assert set(events[0]) == {"id", "data"}
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 12
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"


# ---------------------------------------------------------------------------------------------- disconnects


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"prompt": "And"}),
    ("/v1/chat/completions", {"messages": CHAT}),
])
def test_client_disconnect_cancels_generation(server, path, body):
    wait_idle(server)
    before = server.stats()["generated_tokens"]
    request = {**body, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{server.http}{path}", json=request) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept open: dropping a half-read iterator would close the connection here
        data_lines = 0
        while data_lines < 3:
            data_lines += next(lines).startswith("data:")
        stats = server.stats()
        assert stats["num_running"] == 1 and stats["open_requests"] == 1  # still generating when the client leaves
    # leaving the `with` closed the connection mid-stream
    took, stats = wait_idle(server)
    generated = stats["generated_tokens"] - before
    assert 3 <= generated < 1000, generated  # stopped long before max_tokens
    assert stats["num_free_blocks"] + stats["num_pinned_blocks"] == stats["num_kv_blocks"]
    assert took < 5
    assert server.stats()["generated_tokens"] == stats["generated_tokens"]  # and stays stopped


def test_non_streaming_client_timeout_cancels_generation(server):
    wait_idle(server)
    before = server.stats()["generated_tokens"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.http}/v1/completions", timeout=httpx.Timeout(30, read=0.5),
                   json={"prompt": "And", "max_tokens": 3000, "ignore_eos": True})
    _, stats = wait_idle(server)
    assert stats["generated_tokens"] - before < 3000
