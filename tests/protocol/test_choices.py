"""A generate with n > 1 in the sans-I/O protocol: its decoding and the connection's rules for it (strings in,
commands and bytes out), the chunk's index and the one done that folds the choices' ends (docs/protocol.md,
"Choices"). tests/server/test_ws_choices.py runs the choices through the writer's step; tests/e2e/test_websocket.py
through a server."""

import msgspec
import pytest

from seedance.protocol import (
    ChoiceEnd,
    Chunk,
    Done,
    ProtocolError,
    Usage,
    decode_client_message,
    decode_server_messages,
    encode_server_message,
)
from seedance.protocol.choices import choices_done
from seedance.protocol.server_connection import Refused, Submit
from tests.protocol.test_server_connection import connection, gen, sent


@pytest.mark.parametrize("n", [1, 3, 16])
def test_n_up_to_16_decodes(n):
    assert decode_client_message(gen(n=n), max_size=4096).n == n


@pytest.mark.parametrize(("n", "expected"), [(0, "generate.n: expected int >= 1"),
                                             (17, "generate.n: expected int <= 16"),
                                             (2.0, "generate.n: expected int, got float")])
def test_n_out_of_range_is_invalid_message(n, expected):
    with pytest.raises(ProtocolError) as info:
        decode_client_message(gen("r", n=n), max_size=4096)
    assert (info.value.code, info.value.request_id) == ("invalid_message", "r")
    assert info.value.message == expected


def test_a_generate_with_choices_is_submitted_as_one_request():
    conn = connection()
    conn.receive_text(gen("a", n=3, seed=7))
    (command,) = conn.commands()
    assert isinstance(command, Submit) and (command.message.id, command.message.n) == ("a", 3)
    assert conn.data_to_send() == []


@pytest.mark.parametrize(("fields", "reason"), [
    ({"session": "s"}, "a session turn has one choice (n = 1)"),
    ({"binary": True}, "binary (MTF1) output has one choice (n = 1): ask for JSON chunks, which carry each index"),
])
def test_choices_take_neither_a_session_nor_binary_output(fields, reason):
    conn = connection()
    conn.receive_text(gen("a", n=2, **fields))
    assert sent(conn) == [{"type": "error", "id": "a", "code": "unsupported", "message": reason},
                          {"type": "done", "id": "a", "finish_reason": "error",
                           "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}}]
    assert conn.commands() == [Refused("a", "unsupported")]
    conn.receive_text(gen("a", n=1, **fields))  # one choice is fine
    assert [type(c) for c in conn.commands()] == [Submit]


def test_an_id_with_choices_counts_once_against_the_connection_limit():
    conn = connection()
    conn.receive_text(gen("a", n=16))
    conn.commands()
    conn.open("a", "handle")
    conn.receive_text(gen("b", n=16))
    assert [type(c) for c in conn.commands()] == [Submit]


def test_a_chunk_without_index_is_the_bytes_it_always_was_and_one_with_carries_it():
    chunk = Chunk(id="r1", seq=0, text=" God", token_ids=[389])
    assert encode_server_message(chunk) == b'{"type":"chunk","id":"r1","seq":0,"text":" God","token_ids":[389]}'
    chunk.index = 2
    assert encode_server_message(chunk) == (
        b'{"type":"chunk","id":"r1","seq":0,"text":" God","token_ids":[389],"index":2}')
    (back,) = decode_server_messages(encode_server_message(chunk))
    assert back == chunk


def end(index: int, finish: str, prompt: int, completion: int, cached: int, **kw) -> ChoiceEnd:
    return ChoiceEnd(index=index, finish_reason=finish,
                     usage=Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached), **kw)


def test_the_one_done_sums_usage_and_lists_every_choice_by_index():
    done = choices_done("r", [end(1, "stop", 5, 3, 4, stop_reason="."), end(0, "length", 5, 8, 0),
                              end(2, "length", 5, 8, 4)])
    assert encode_server_message(done) == (
        b'{"type":"done","id":"r","finish_reason":"length",'
        b'"usage":{"prompt_tokens":15,"completion_tokens":19,"cached_tokens":8},"choices":['
        b'{"index":0,"finish_reason":"length","usage":{"prompt_tokens":5,"completion_tokens":8,"cached_tokens":0}},'
        b'{"index":1,"finish_reason":"stop","usage":{"prompt_tokens":5,"completion_tokens":3,"cached_tokens":4},'
        b'"stop_reason":"."},'
        b'{"index":2,"finish_reason":"length","usage":{"prompt_tokens":5,"completion_tokens":8,"cached_tokens":4}}]}')
    (back,) = decode_server_messages(encode_server_message(done))
    assert isinstance(back, Done) and back == done


@pytest.mark.parametrize(("finishes", "expected"), [
    (["stop", "stop"], "stop"),
    (["stop", "length"], "length"),
    (["length", "cancelled", "stop"], "cancelled"),
    (["cancelled", "error"], "error"),
])
def test_the_requests_finish_reason_is_its_gravest_choices(finishes, expected):
    done = choices_done("r", [end(i, f, 1, 1, 0) for i, f in enumerate(finishes)])
    assert done.finish_reason == expected
    assert [c.finish_reason for c in done.choices] == finishes


def test_a_multimodal_prompts_split_is_summed_too():
    ends = [end(i, "stop", 6, 1, 0) for i in range(2)]
    for e in ends:
        e.usage.text_tokens, e.usage.embedding_tokens, e.usage.image_tokens = 2, 4, 0
    usage = choices_done("r", ends).usage
    assert (usage.prompt_tokens, usage.text_tokens, usage.embedding_tokens, usage.image_tokens) == (12, 4, 8, 0)
    assert choices_done("r", [end(0, "stop", 6, 1, 0)]).usage.text_tokens is msgspec.UNSET


def test_a_done_of_one_choice_has_no_choices_field():
    done = Done(id="r1", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=12), stop_reason=".")
    assert b"choices" not in encode_server_message(done)
