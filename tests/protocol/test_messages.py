from __future__ import annotations

import base64
import json
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedance.protocol import (
    Cancel,
    ChatMessage,
    Chunk,
    Credit,
    Done,
    Error,
    Generate,
    Ping,
    Pong,
    Priority,
    ProtocolError,
    TokenLogprob,
    Usage,
    decode_binary_prompt,
    decode_client_message,
    decode_server_message,
    decode_server_messages,
    encode_client_message,
    encode_server_message,
    encode_server_messages,
)

MAX = 1 << 20


def decode(payload: Any, *, max_size: int = MAX) -> Any:
    data = payload if isinstance(payload, str | bytes) else json.dumps(payload)
    return decode_client_message(data, max_size=max_size)


def error_of(payload: Any, *, max_size: int = MAX) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(payload, max_size=max_size)
    return info.value


def b64_tokens(*ids: int) -> str:
    return base64.b64encode(struct.pack(f"<{len(ids)}I", *ids)).decode()


# ---------------------------------------------------------------------------------------------- valid messages


def test_generate_defaults() -> None:
    msg = decode({"type": "generate", "id": "r1", "prompt": "In the beginning"})
    assert msg == Generate(id="r1", prompt="In the beginning")
    assert (msg.max_tokens, msg.temperature, msg.top_p, msg.top_k) == (64, 1.0, 1.0, 0)
    assert (msg.seed, msg.stop, msg.stop_token_ids, msg.logprobs, msg.credit, msg.session) == (None,) * 6
    assert (msg.ignore_eos, msg.binary, msg.priority, msg.prompt_format) == (False, False, 0, "tokens_u32le")
    assert msg.stop_strings == []


def test_generate_all_fields() -> None:
    payload = {
        "id": "chat-7",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "temperature": 0,  # an int is accepted for a float field
        "top_p": 0.9,
        "top_k": 40,
        "seed": 2**63 - 1,
        "stop": "\n",
        "stop_token_ids": [0, 2**32 - 1],
        "ignore_eos": True,
        "logprobs": 3,
        "priority": -5,
        "binary": True,
        "credit": 0,
        "session": "s1",
        "type": "generate",  # the tag need not come first
    }
    msg = decode(payload)
    assert isinstance(msg, Generate)
    assert msg.messages == [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    assert msg.temperature == 0.0 and isinstance(msg.temperature, float)
    assert (msg.max_tokens, msg.top_p, msg.top_k, msg.seed) == (5, 0.9, 40, 2**63 - 1)
    assert msg.stop_strings == ["\n"]
    assert (msg.stop_token_ids, msg.ignore_eos, msg.logprobs, msg.priority) == ([0, 2**32 - 1], True, 3, -5)
    assert (msg.binary, msg.credit, msg.session) == (True, 0, "s1")


def test_stop_list() -> None:
    msg = decode({"type": "generate", "id": "a", "prompt": "x", "stop": [".", "!"]})
    assert msg.stop_strings == [".", "!"]


def test_unknown_fields_are_ignored() -> None:
    msg = decode({"type": "cancel", "id": "r1", "future_field": {"nested": [1, 2]}, "x": None})
    assert msg == Cancel(id="r1")


def test_control_messages() -> None:
    assert decode({"type": "cancel", "id": "r1"}) == Cancel(id="r1")
    assert decode({"type": "credit", "id": "r1", "n": 8}) == Credit(id="r1", n=8)
    assert decode({"type": "priority", "id": "r1", "priority": -1}) == Priority(id="r1", priority=-1)
    assert decode({"type": "ping"}) == Ping(ts=None)
    assert decode({"type": "ping", "ts": 12}) == Ping(ts=12.0)
    assert decode({"type": "ping", "ts": None}) == Ping()


@pytest.mark.parametrize("as_type", [str, bytes, bytearray, memoryview])
def test_input_kinds(as_type: type) -> None:
    text = '{"type":"generate","id":"é1","prompt":"Let there be light ✨"}'
    data = text if as_type is str else as_type(text.encode())
    msg = decode_client_message(data, max_size=MAX)
    assert msg == Generate(id="é1", prompt="Let there be light ✨")


def test_id_length_bounds() -> None:
    assert decode({"type": "cancel", "id": "x" * 128}).id == "x" * 128
    err = error_of({"type": "cancel", "id": "x" * 129})
    assert (err.code, err.message) == ("invalid_message", "cancel.id: expected str of length <= 128")
    assert err.request_id is None  # not a usable id
    err = error_of({"type": "cancel", "id": ""})
    assert (err.code, err.message) == ("invalid_message", "cancel.id: expected str of length >= 1")


# ---------------------------------------------------------------------------------------------- binary prompts


def test_binary_prompt_tokens() -> None:
    msg = decode({"type": "generate", "id": "r2", "prompt_b64": b64_tokens(3438, 259, 2076, 2**32 - 1)})
    assert decode_binary_prompt(msg) == [3438, 259, 2076, 2**32 - 1]
    assert decode_binary_prompt(decode({"type": "generate", "id": "r2", "prompt_b64": ""})) == []


def test_binary_prompt_documented_example() -> None:
    assert b64_tokens(3438, 259, 2076) == "bg0AAAMBAAAcCAAA"


def test_embedding_prompts_decode_as_embedding_input() -> None:
    rows = base64.b64encode(struct.pack("<4f", 0.5, -1.0, 2.0, 0.0)).decode()
    msg = decode({"type": "generate", "id": "e1", "prompt_b64": rows, "prompt_format": "embedding_f32le"})
    assert msg.is_embedding_prompt
    with pytest.raises(ProtocolError) as info:  # its rows are not token ids
        decode_binary_prompt(msg)
    assert (info.value.code, info.value.request_id) == ("invalid_message", "e1")
    parts = decode({"type": "generate", "id": "p", "prompt_parts": [
        {"type": "text", "text": "Describe"}, {"type": "embedding", "b64": rows}, {"type": "tokens", "ids": [5, 6]}]})
    assert [type(p).__name__ for p in parts.prompt_parts] == ["TextPart", "EmbeddingPart", "TokensPart"]
    assert parts.is_embedding_prompt and not decode({"type": "generate", "id": "t", "prompt": "x"}).is_embedding_prompt


@pytest.mark.parametrize(
    "parts",
    [
        [],  # no parts
        [{"type": "embedding", "b64": "not base64!"}],
        [{"type": "embedding", "b64": base64.b64encode(b"abc").decode()}],  # not whole float32 values
        [{"type": "tokens", "ids": []}],
        [{"type": "tokens", "ids": [-1]}],
        [{"type": "image", "data": "x"}],  # not a part type
        [{"type": "text", "text": "x"}] * 257,  # over MAX_PROMPT_PARTS
    ],
)
def test_bad_prompt_parts_are_invalid_messages(parts) -> None:
    err = error_of({"type": "generate", "id": "p", "prompt_parts": parts})
    assert err.code == "invalid_message" and err.request_id == "p"


def test_prompt_parts_exclude_other_inputs() -> None:
    err = error_of({"type": "generate", "id": "p", "prompt": "x", "prompt_parts": [{"type": "text", "text": "y"}]})
    assert err.code == "invalid_message" and "prompt_parts" in err.message


def test_binary_prompt_without_b64() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_binary_prompt(Generate(id="a", prompt="x"))
    assert info.value.code == "invalid_message"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("AAA", "generate.prompt_b64: not valid base64 (incorrect padding)"),
        ("AA$A", "generate.prompt_b64: not valid base64 (only base64 data is allowed)"),
        ("é", "generate.prompt_b64: not valid base64 ("),
        (
            base64.b64encode(b"\1\2\3\4\5").decode(),
            "generate.prompt_b64: decodes to 5 bytes, not a multiple of 4 (tokens_u32le has 4-byte items)",
        ),
    ],
)
def test_binary_prompt_invalid(value: str, message: str) -> None:
    err = error_of({"type": "generate", "id": "b", "prompt_b64": value})
    assert err.code == "invalid_message"
    assert err.message.startswith(message)
    assert (err.request_id, err.message_type) == ("b", "generate")


# ---------------------------------------------------------------------------------------------- error paths


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "invalid JSON: "),
        ("", "invalid JSON: "),
        ('{"type": "ping"} x', "invalid JSON: "),
        ("[1, 2]", "expected a JSON object, got array"),
        ('"generate"', "expected a JSON object, got str"),
        ("null", "expected a JSON object, got null"),
        ("[" * 100_000, None),
        (b'{"type": "ping", "x": "\xff"}', "message is not valid UTF-8: invalid start byte at byte 23"),
        ("[1e999]", "unrepresentable JSON value: number out of range"),
    ],
)
def test_invalid_json(payload: str | bytes, message: str | None) -> None:
    err = error_of(payload)
    assert err.code == "invalid_json"
    assert err.request_id is None
    if message is not None:
        assert err.message.startswith(message)


def test_invalid_json_of_lone_surrogate_str() -> None:
    assert error_of('{"type": "ping", "x": "\ud800"}').code == "invalid_json"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"id": "r9"}, 'missing "type" field'),
        ({"type": 7, "id": "r9"}, '"type" must be a string, got int'),
        ({"type": None, "id": "r9"}, '"type" must be a string, got null'),
        ({"type": "chunk", "id": "r9"}, "unknown message type 'chunk' (expected one of generate, cancel, credit"),
        ({"type": "Generate", "id": "r9"}, "unknown message type 'Generate'"),
    ],
)
def test_unknown_type(payload: dict[str, Any], message: str) -> None:
    err = error_of(payload)
    assert err.code == "unknown_type"
    assert err.message.startswith(message)
    assert err.request_id == "r9"  # the server can still attach the error to the request
    assert err.message_type is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"type": "generate", "id": "r", "prompt": "x", "max_tokens": "5"},
            "generate.max_tokens: expected int, got str",
        ),
        (
            {"type": "generate", "id": "r", "prompt": "x", "max_tokens": 5.0},
            "generate.max_tokens: expected int, got float",
        ),
        (
            {"type": "generate", "id": "r", "prompt": "x", "max_tokens": True},
            "generate.max_tokens: expected int, got bool",
        ),
        ({"type": "generate", "id": "r", "prompt": "x", "max_tokens": 0}, "generate.max_tokens: expected int >= 1"),
        (
            {"type": "generate", "id": "r", "prompt": "x", "temperature": -0.5},
            "generate.temperature: expected float >= 0.0",
        ),
        ({"type": "generate", "id": "r", "prompt": "x", "top_p": 0}, "generate.top_p: expected float > 0.0"),
        ({"type": "generate", "id": "r", "prompt": "x", "top_p": 1.5}, "generate.top_p: expected float <= 1.0"),
        ({"type": "generate", "id": "r", "prompt": "x", "top_k": -1}, "generate.top_k: expected int >= 0"),
        ({"type": "generate", "id": "r", "prompt": "x", "seed": -1}, "generate.seed: expected int >= 0"),
        ({"type": "generate", "id": "r", "prompt": "x", "logprobs": -1}, "generate.logprobs: expected int >= 0"),
        ({"type": "generate", "id": "r", "prompt": "x", "credit": -1}, "generate.credit: expected int >= 0"),
        (
            {"type": "generate", "id": "r", "prompt": "x", "priority": 2**31},
            "generate.priority: expected int <= 2147483647",
        ),
        ({"type": "generate", "id": "r", "prompt": "x", "binary": "yes"}, "generate.binary: expected bool, got str"),
        (
            {"type": "generate", "id": "r", "prompt": "x", "stop": 3},
            "generate.stop: expected str | array | null, got int",
        ),
        ({"type": "generate", "id": "r", "prompt": "x", "stop": ["a", 1]}, "generate.stop[1]: expected str, got int"),
        (
            {"type": "generate", "id": "r", "prompt": "x", "stop_token_ids": [-1]},
            "generate.stop_token_ids[0]: expected int >= 0",
        ),
        (
            {"type": "generate", "id": "r", "prompt": "x", "prompt_format": "png"},
            "generate.prompt_format: invalid enum value 'png'",
        ),
        ({"type": "generate", "id": "r", "prompt": 5}, "generate.prompt: expected str | null, got int"),
        ({"type": "generate", "id": "r", "messages": []}, "generate.messages: expected array of length >= 1"),
        (
            {"type": "generate", "id": "r", "messages": [{"role": "user"}]},
            "generate.messages[0].content: required field missing",
        ),
        ({"type": "generate", "id": "r", "messages": ["hi"]}, "generate.messages[0]: expected object, got str"),
        (
            {"type": "generate", "id": "r"},
            "generate: exactly one of prompt, messages, prompt_b64, prompt_parts is required, got none",
        ),
        (
            {"type": "generate", "id": "r", "prompt": "x", "prompt_b64": ""},
            "generate: exactly one of prompt, messages, prompt_b64, prompt_parts is required, "
            "got prompt and prompt_b64",
        ),
        ({"type": "generate", "prompt": "x"}, "generate.id: required field missing"),
        ({"type": "generate", "id": 5, "prompt": "x"}, "generate.id: expected str, got int"),
        ({"type": "cancel"}, "cancel.id: required field missing"),
        ({"type": "credit", "id": "r"}, "credit.n: required field missing"),
        ({"type": "credit", "id": "r", "n": 0}, "credit.n: expected int >= 1"),
        ({"type": "priority", "id": "r", "priority": "high"}, "priority.priority: expected int, got str"),
        ({"type": "ping", "ts": "now"}, "ping.ts: expected float | null, got str"),
        ('{"type": "ping", "id": "p", "ts": 1e999}', "ping.ts: number out of range"),
    ],
)
def test_invalid_message(payload: dict[str, Any] | str, message: str) -> None:
    err = error_of(payload)
    if isinstance(payload, str):
        payload = {"type": "ping", "id": "p"}
    assert (err.code, err.message) == ("invalid_message", message)
    assert err.message_type == payload["type"]
    assert err.request_id == (payload["id"] if isinstance(payload.get("id"), str) else None)


def test_message_too_large_is_checked_before_parsing() -> None:
    err = error_of("x" * 101, max_size=100)  # not JSON either: size wins
    assert err.code == "message_too_large"
    assert error_of(b"{" * 101, max_size=100).code == "message_too_large"
    ok = json.dumps({"type": "generate", "id": "r", "prompt": "a" * 50})
    assert decode(ok, max_size=len(ok)).prompt == "a" * 50
    assert error_of(ok, max_size=len(ok) - 1).code == "message_too_large"


def test_message_size_counts_utf8_bytes() -> None:
    text = json.dumps({"type": "generate", "id": "r", "prompt": "é" * 40}, ensure_ascii=False)
    size = len(text.encode())
    assert size > len(text)
    assert decode(text, max_size=size).prompt == "é" * 40
    err = error_of(text, max_size=size - 1)
    assert (err.code, err.message) == ("message_too_large", f"message is {size} bytes, over the limit of {size - 1}")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    try:
        decode_client_message(data, max_size=MAX)
    except ProtocolError as err:
        assert err.code in {"invalid_json", "unknown_type", "invalid_message"}


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_field_names = st.sampled_from(
    ["id", "prompt", "messages", "prompt_b64", "max_tokens", "stop", "n", "priority", "ts", "logprobs", "credit"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["generate", "cancel", "credit", "priority", "ping", "other"]),
    st.dictionaries(_field_names, _json_values, max_size=6),
)
def test_random_objects_only_raise_protocol_error(mtype: str, fields: dict[str, Any]) -> None:
    payload = {"type": mtype, **fields}
    try:
        msg = decode(payload)
    except ProtocolError as err:
        assert err.code in {"unknown_type", "invalid_message"}
        if isinstance(payload.get("id"), str) and 1 <= len(payload["id"]) <= 128:
            assert err.request_id == payload["id"]
    else:
        assert type(msg).__name__.lower() == mtype


# ---------------------------------------------------------------------------------------------- server messages


def test_encode_server_messages_are_compact_and_omit_nulls() -> None:
    chunk = Chunk(id="r1", seq=0, text=" God", token_ids=[389])
    assert encode_server_message(chunk) == b'{"type":"chunk","id":"r1","seq":0,"text":" God","token_ids":[389]}'
    done = Done(id="r1", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=12))
    assert encode_server_message(done) == (
        b'{"type":"done","id":"r1","finish_reason":"stop",'
        b'"usage":{"prompt_tokens":3,"completion_tokens":12,"cached_tokens":0}}'
    )
    done.stop_reason = 2
    assert encode_server_message(done).endswith(b',"stop_reason":2}')
    # error and pong always carry their nullable field, so a client can rely on it being there
    assert encode_server_message(Error(code="invalid_json", message="m")) == (
        b'{"type":"error","id":null,"code":"invalid_json","message":"m"}'
    )
    assert encode_server_message(Pong()) == b'{"type":"pong","ts":null}'
    assert encode_server_message(Pong(ts=1.5)) == b'{"type":"pong","ts":1.5}'


def test_chunk_with_logprobs() -> None:
    chunk = Chunk(
        id="c",
        seq=3,
        text=" Moses",
        token_ids=[689, 12],
        logprobs=[
            TokenLogprob(token_id=689, logprob=-0.5, top=[(689, -0.5), (1046, -2.25)]),
            TokenLogprob(token_id=12, logprob=-0.125),
        ],
    )
    data = encode_server_message(chunk)
    assert json.loads(data)["logprobs"] == [
        {"token_id": 689, "logprob": -0.5, "top": [[689, -0.5], [1046, -2.25]]},
        {"token_id": 12, "logprob": -0.125},
    ]
    assert decode_server_message(data) == chunk


@pytest.mark.parametrize(
    "msg",
    [
        Chunk(id="a", seq=1, text="", token_ids=[1, 2, 3]),
        Done(id="a", finish_reason="cancelled", usage=Usage(prompt_tokens=1, completion_tokens=0, cached_tokens=1)),
        Done(id="a", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=2), stop_reason="\n"),
        Error(id="a", code="overloaded", message="retry later"),
        Pong(ts=None),
    ],
)
def test_server_message_round_trip(msg: Any) -> None:
    assert decode_server_message(encode_server_message(msg)) == msg


def test_decode_server_message_errors() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_server_message(b'{"type":"generate","id":"x","prompt":"p"}')
    assert info.value.code == "unknown_type"
    with pytest.raises(ProtocolError) as info:
        decode_server_message(b'{"type":"done","id":"x","finish_reason":"bored","usage":{}}')
    assert info.value.code == "invalid_message"
    assert info.value.message == "done.finish_reason: invalid enum value 'bored'"
    with pytest.raises(ProtocolError) as info:
        decode_server_message(b"{}" * 10, max_size=4)
    assert info.value.code == "message_too_large"


@pytest.mark.parametrize(
    "msg",
    [
        Generate(id="r", prompt="x", stop=["a"], logprobs=2, credit=4),
        Generate(id="r", prompt_b64=b64_tokens(1, 2)),
        Generate(id="r", messages=[ChatMessage(role="user", content="hi")]),
        Cancel(id="r"),
        Credit(id="r", n=3),
        Priority(id="r", priority=7),
        Ping(ts=2.5),
    ],
)
def test_client_message_round_trip(msg: Any) -> None:
    assert decode_client_message(encode_client_message(msg), max_size=MAX) == msg


def test_generate_constructor_enforces_one_prompt() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        Generate(id="r")
    with pytest.raises(ValueError, match="exactly one of"):
        Generate(id="r", prompt="a", messages=[ChatMessage(role="user", content="b")])


def test_decoded_messages_are_msgspec_structs() -> None:
    # the server may re-encode or copy them; keep them plain structs
    assert isinstance(decode({"type": "ping"}), msgspec.Struct)


def test_server_batches() -> None:
    """One engine step's messages for a connection travel as one text frame: an array when several."""
    chunk = Chunk(id="a", seq=0, text="x", token_ids=[1])
    done = Done(id="b", finish_reason="length", usage=Usage(prompt_tokens=1, completion_tokens=1))
    assert encode_server_messages([chunk]) == encode_server_message(chunk)
    batch = encode_server_messages([chunk, done])
    assert batch == b"[" + encode_server_message(chunk) + b"," + encode_server_message(done) + b"]"
    assert decode_server_messages(batch) == [chunk, done]
    assert decode_server_messages(encode_server_message(done)) == [done]
    assert decode_server_messages("[]") == []


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        ('[{"type":"pong","ts":null},{"type":"chunk","id":"a","seq":"0"}]', "invalid_message", "batch[1]: chunk.seq: "),
        ('[{"type":"pong","ts":null},{"type":"nope","id":"a"}]', "unknown_type", "batch[1]: unknown message type"),
        ('[{"type":"pong","ts":null},[]]', "invalid_json", "batch[1]: expected a JSON object, got array"),
        ("[1e999]", "invalid_json", "unrepresentable JSON value"),
        ("[", "invalid_json", "invalid JSON"),
    ],
)
def test_server_batch_errors(data: str, code: str, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_server_messages(data)
    assert (info.value.code, info.value.message[: len(message)]) == (code, message)
    if code == "invalid_message":
        assert info.value.request_id == "a"


def test_chat_content_parts_decode() -> None:
    msg = decode({"type": "generate", "id": "c", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]})
    text, image = msg.messages[0].content
    assert (type(text).__name__, text.text) == ("TextContent", "What is this?")
    assert image.image_url.url.startswith("data:image/png;base64,")
    for bad in ([{"type": "image_url"}], [{"type": "audio", "data": ""}], [{"type": "text"}]):
        err = error_of({"type": "generate", "id": "c", "messages": [{"role": "user", "content": bad}]})
        assert err.code == "invalid_message" and err.request_id == "c"
