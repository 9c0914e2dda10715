"""The sampling side of the OpenAI API through the real `openai` SDK: structured output (response_format, guided_*)
validates against its schema on the built-in model and SmolLM2; tools make a tool_calls round trip; n gives n
choices sharing the prompt's KV; penalties and logit_bias change the output as specified."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

MODEL = "seedance-tiny"
PROMPT = "And God said"
CHAT = [{"role": "user", "content": "Who made the heaven and the earth?"}]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                        "unit": {"type": "string", "enum": ["C", "F"]}},
                       "required": ["city", "unit"], "additionalProperties": False},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 12}}, "required": ["zone"],
    "additionalProperties": False}}}


def person_format(strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": strict}}


@pytest.fixture
def client(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.http}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture
def smol(smollm2_server) -> Iterator[tuple[openai.OpenAI, str]]:
    name = httpx.get(f"{smollm2_server.http}/v1/models").json()["data"][0]["id"]
    with openai.OpenAI(base_url=f"{smollm2_server.http}/v1", api_key="unused", max_retries=0, timeout=300) as c:
        yield c, name


# ------------------------------------------------------------------------------------------ structured output


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_output_validates_on_the_builtin_model(client, temperature):
    for seed in range(3):
        reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=120, temperature=temperature,
                                               seed=seed, response_format=person_format())
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_json_schema_streamed_equals_the_whole_and_validates(client):
    kwargs = dict(model=MODEL, prompt=PROMPT, max_tokens=120, temperature=0,
                  extra_body={"response_format": person_format()})  # completions: a vLLM-style extra
    whole = client.completions.create(**kwargs).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(whole), PERSON)


def test_json_object_gives_a_json_object(client):
    """Any object: unbounded strings let the small model run to max_tokens sometimes (finish_reason length, as
    OpenAI's own); every reply that ends by itself is a JSON object."""
    ended = 0
    for seed in range(6):
        choice = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=120, temperature=1.0, seed=seed,
                                                response_format={"type": "json_object"}).choices[0]
        assert choice.message.content.startswith("{")
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
            ended += 1
    assert ended


def test_json_object_on_smollm2(smol):
    client, name = smol
    reply = client.chat.completions.create(
        model=name, max_tokens=120, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give the capital of France as JSON with a key capital."}])
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_guided_extras_constrain_the_output(client):
    choice = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=1.0, seed=3,
                                       extra_body={"guided_choice": ["light", "darkness", "firmament"]})
    assert choice.choices[0].text in {"light", "darkness", "firmament"}
    regex = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=1.0, seed=3,
                                      extra_body={"guided_regex": "[0-9]{3}-[a-z]{2,4}"})
    import re

    assert re.fullmatch("[0-9]{3}-[a-z]{2,4}", regex.choices[0].text), regex.choices[0].text
    lark = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=1.0, seed=3,
                                     extra_body={"guided_grammar": 'start: "yea" | "nay" " " NUM\nNUM: /[1-9]/'})
    assert re.fullmatch("yea|nay [1-9]", lark.choices[0].text), lark.choices[0].text
    schema = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=120, temperature=0,
                                       extra_body={"guided_json": PERSON})
    jsonschema.validate(json.loads(schema.choices[0].text), PERSON)


def test_constrained_and_free_requests_share_a_step(server, client):
    """Concurrent constrained and free streams: each constrained one validates, the free ones are unchanged."""
    import concurrent.futures

    free = dict(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    alone = client.completions.create(**free).choices[0].text
    steps_before = server.stats()["steps"]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(client.completions.create, **free) for _ in range(3)]
        jobs += [pool.submit(client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=120, temperature=1.0,
                             seed=i, extra_body={"response_format": person_format()}) for i in range(3)]
        results = [j.result().choices[0].text for j in jobs]
    assert results[:3] == [alone] * 3
    for text in results[3:]:
        jsonschema.validate(json.loads(text), PERSON)
    assert server.stats()["steps"] - steps_before < 24 * 3 + 3 * 120  # batched, not one after another


@pytest.mark.parametrize(("fmt", "message"), [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "json_schema must be an object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "not json"}}, "must be a JSON schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "x-weird": 1,
                                                                     "properties": {"a": {"type": "nosuch"}}},
                                             "strict": True}}, "invalid json_schema"),
])
def test_bad_response_formats_are_400(client, fmt, message):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, response_format=fmt)
    assert message in info.value.body["message"]
    assert info.value.body["code"] == "invalid_request"


def test_two_constraints_and_an_oversized_schema_are_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4,
                                  extra_body={"guided_regex": "a+", "response_format": {"type": "json_object"}})
    assert "one output constraint" in info.value.body["message"]
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 64}
                                             for i in range(2000)}}
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"guided_json": huge})
    assert "the limit is" in info.value.body["message"]


def test_json_schema_output_validates_on_smollm2(smol):
    client, name = smol
    for seed in range(2):
        reply = client.chat.completions.create(
            model=name, max_tokens=120, temperature=0.7, seed=seed, response_format=person_format(),
            messages=[{"role": "user", "content": "Describe a person as JSON: name, age, tags."}])
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)


# ------------------------------------------------------------------------------------------------- tools


def _round_trip(client, model: str, tool_choice) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris, in Celsius?"}]
    reply = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER, TIME],
                                           tool_choice=tool_choice, max_tokens=80, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert choice.message.content is None and call.type == "function" and call.id.startswith("call_")
    schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    # the result goes back as a tool message; the model answers in text
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "unit": "C"})}]
    answer = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER, TIME], tool_choice="none",
                                            max_tokens=24, temperature=0)
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content


def test_tool_call_round_trip_required_on_the_builtin_model(client):
    _round_trip(client, MODEL, "required")


def test_named_tool_choice_forces_that_function_streamed(client):
    """The call streams as OpenAI's does: index, id, type and name first, then the arguments in fragments as
    the model writes them; the SDK's stream accumulator rebuilds the same call as the non-streamed answer."""
    named = {"type": "function", "function": {"name": "get_time"}}
    kwargs = dict(model=MODEL, messages=CHAT, tools=[WEATHER, TIME], tool_choice=named, max_tokens=80, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"] and len(calls) > 2 and all(tc.index == 0 for tc in calls)
    assert calls[0].id == whole_id(chunks) and calls[0].type == "function" and calls[0].function.name == "get_time"
    assert all(tc.id is None and tc.function.name is None for tc in calls[1:])
    assert sum(bool(tc.function.arguments) for tc in calls) > 2  # in pieces, not whole at the end
    state = ChatCompletionStreamState(input_tools=[WEATHER, TIME])
    for chunk in chunks:
        state.handle_chunk(chunk)
    streamed = state.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls" and len(streamed.message.tool_calls) == 1
    assert streamed.message.content is None and chunks[0].choices[0].delta.tool_calls  # as OpenAI: no empty text
    call, expected = streamed.message.tool_calls[0], whole.message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == (expected.function.name, expected.function.arguments)
    assert call.function.name == "get_time" and call.id == calls[0].id
    jsonschema.validate(json.loads(call.function.arguments), TIME["function"]["parameters"])
    # the SDK's own streaming helper sees the same call, and the arguments' delta events
    with client.chat.completions.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_completion().choices[0]
    fragments = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(fragments) > 2 and fragments[-1].arguments == expected.function.arguments
    assert final.message.tool_calls[0].function.arguments == expected.function.arguments


def whole_id(chunks) -> str:
    """The call id announced in a stream (its first tool_calls delta)."""
    return next(tc.id for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or []))


def test_tool_choice_auto_may_answer_in_text(client):
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, tools=[WEATHER], max_tokens=16,
                                           temperature=0)
    choice = reply.choices[0]
    if choice.message.tool_calls:  # a call must still be valid
        jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments),
                            WEATHER["function"]["parameters"])
    else:
        assert choice.message.content and not choice.message.content.startswith("{")


def test_tool_call_round_trip_on_smollm2(smol):
    client, name = smol
    _round_trip(client, name, "required")


@pytest.mark.parametrize(("body", "message"), [
    ({"tools": [{"type": "code_interpreter"}]}, 'only tools of type "function"'),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
    ({"tool_choice": "required"}, "tool_choice needs tools"),
    ({"tools": [WEATHER, WEATHER]}, "unique name"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "exclude each other"),
])
def test_bad_tools_are_400(server, body, message):
    r = httpx.post(f"{server.http}/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4, **body}, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


# ----------------------------------------------------------------------------------------------------- n


def test_n_gives_n_choices_sharing_the_prompt(server, client):
    prompt = "In the beginning God created the heaven and the earth. " * 4  # several full KV blocks
    before = server.stats()
    reply = client.completions.create(model=MODEL, prompt=prompt, n=3, max_tokens=12, temperature=1.0, seed=5,
                                      extra_body={"ignore_eos": True})
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.text for c in reply.choices}) > 1  # seed + i: different samples
    assert reply.usage.completion_tokens == 36
    assert reply.usage.prompt_tokens_details.cached_tokens >= 16  # choices 1 and 2 reused choice 0's prompt KV
    after = server.stats()
    assert after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"] >= 2 * 16
    again = client.completions.create(model=MODEL, prompt=prompt, n=3, max_tokens=12, temperature=1.0, seed=5,
                                      extra_body={"ignore_eos": True})
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]  # seeded: reproducible


def test_n_streamed_chunks_carry_their_index(client):
    kwargs = dict(model=MODEL, messages=CHAT, n=3, max_tokens=10, temperature=1.0, seed=11)
    whole = client.chat.completions.create(**kwargs)
    texts: dict[int, str] = {}
    finishes = Counter()
    usage = None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] += 1
    assert sorted(texts) == [0, 1, 2] and finishes == {0: 1, 1: 1, 2: 1}
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens


# ------------------------------------------------------------------------------------- penalties, logit_bias


@pytest.fixture(scope="module")
def tokenizer():
    from seedance.models.loader import BUILTIN_MODEL_DIR
    from seedance.models.tokenizer import TextTokenizer

    return TextTokenizer.from_dir(BUILTIN_MODEL_DIR)


def test_logit_bias_forces_and_bans_tokens(client, tokenizer):
    plain = dict(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=0, extra_body={"ignore_eos": True})
    base = client.completions.create(**plain).choices[0].logprobs.tokens
    ids = [i for i in range(tokenizer.vocab_size) if tokenizer.decode([i]) == base[0]]
    banned = client.completions.create(logit_bias={str(i): -100 for i in ids}, **plain).choices[0].logprobs.tokens
    assert banned[0] != base[0]
    forced_id = tokenizer.encode(" firmament")[0]
    forced = client.completions.create(logit_bias={str(forced_id): 100}, **plain).choices[0].logprobs.tokens
    assert forced == [tokenizer.decode([forced_id])] * 6  # +100 wins every step
    for bad in ({"x": 1}, {"1": 200}, {str(10**6): 1}):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, logit_bias=bad)


def test_penalties_change_output_as_specified(client):
    plain = dict(model=MODEL, prompt=PROMPT, max_tokens=48, temperature=0, extra_body={"ignore_eos": True})
    base = client.completions.create(logprobs=0, **plain).choices[0]
    counts = Counter(base.logprobs.tokens)
    assert max(counts.values()) > 1  # greedy repeats itself: something to penalise
    strong = client.completions.create(logprobs=0, frequency_penalty=2.0, **plain).choices[0]
    assert max(Counter(strong.logprobs.tokens).values()) < max(counts.values())
    presence = client.completions.create(logprobs=0, presence_penalty=2.0, **plain).choices[0]
    assert presence.text != base.text
    rep = client.completions.create(logprobs=0, **{**plain, "extra_body": {"ignore_eos": True,
                                                                             "repetition_penalty": 1.5}}).choices[0]
    assert rep.text != base.text
    for bad in ({"presence_penalty": 3}, {"frequency_penalty": -2.5}):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, **bad)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body={"repetition_penalty": 0})


# ------------------------------------------------------------------------------------- the WebSocket generate


async def test_websocket_generate_takes_penalties_logit_bias_and_guided(server, tokenizer):
    from websockets.asyncio.client import connect

    from tests.e2e.test_websocket import run_requests, text_of

    greedy = {"prompt": PROMPT, "max_tokens": 32, "temperature": 0, "ignore_eos": True}
    forced = tokenizer.encode(" firmament")[0]
    async with connect(server.ws) as ws:
        results = await run_requests(ws, [
            {"id": "plain", **greedy},
            {"id": "freq", **greedy, "frequency_penalty": 2.0},
            {"id": "bias", **greedy, "max_tokens": 4, "logit_bias": {str(forced): 100}},
            {"id": "json", **greedy, "max_tokens": 120, "ignore_eos": False, "guided_json": PERSON},
            {"id": "two", **greedy, "n": 2},
            {"id": "both", **greedy, "guided_regex": "a", "guided_choice": ["b"]},
        ])
    plain = [t for c in results["plain"]["chunks"] for t in c["token_ids"]]
    freq = [t for c in results["freq"]["chunks"] for t in c["token_ids"]]
    assert max(Counter(freq).values()) < max(Counter(plain).values())
    assert [t for c in results["bias"]["chunks"] for t in c["token_ids"]] == [forced] * 4
    jsonschema.validate(json.loads(text_of(results["json"])), PERSON)
    assert results["json"]["done"]["finish_reason"] == "stop"
    assert {c["index"] for c in results["two"]["chunks"]} == {0, 1}  # n on the WebSocket: one id, two choices
    assert [c["index"] for c in results["two"]["done"]["choices"]] == [0, 1]
    assert results["both"]["errors"][0]["code"] == "invalid_message", results["both"]
