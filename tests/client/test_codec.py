"""The client SDK speaks the protocol through protocol/'s typed codecs: a generate the server would refuse
fails locally with the server's own words, and a server message this client does not know is skipped."""

import json

import pytest

from seedance.client import SeedanceClient, SeedanceError
from seedance.client.connection import _server_messages, _text
from seedance.protocol import Cancel, Chunk, Done, ProtocolError, Resume, decode_client_message


async def test_a_generate_the_server_would_refuse_fails_in_its_iterator_without_a_round_trip():
    client = SeedanceClient("ws://127.0.0.1:9/v1/stream")  # never connected: nothing may be sent
    stream = client.generate("x", temperature=-1, id="r1")
    with pytest.raises(SeedanceError) as info:
        await stream.collect()
    with pytest.raises(ProtocolError) as server_says:  # what the server's decoder answers the same message
        decode_client_message(b'{"type": "generate", "id": "r1", "prompt": "x", "temperature": -1}',
                              max_size=1 << 20)
    assert (info.value.code, info.value.message) == (server_says.value.code, server_says.value.message)
    assert info.value.request_id == "r1" and "temperature" in info.value.message
    assert client.streams == {}


def test_client_messages_are_the_protocols_and_carry_only_what_was_set():
    assert json.loads(_text(Cancel(id="a"))) == {"type": "cancel", "id": "a"}
    assert json.loads(_text(Resume(session="s", id="a", last_seq=3))) == {"type": "resume", "session": "s",
                                                                          "id": "a", "last_seq": 3}
    generate = decode_client_message(b'{"type": "generate", "id": "g", "prompt": "p", "max_tokens": 5}',
                                     max_size=1 << 20)
    assert json.loads(_text(generate)) == {"type": "generate", "id": "g", "prompt": "p", "max_tokens": 5}


def test_server_messages_are_typed_and_unknown_ones_skipped():
    chunk = {"type": "chunk", "id": "a", "seq": 0, "text": "hi", "token_ids": [1]}
    done = {"type": "done", "id": "a", "finish_reason": "length", "usage": {"prompt_tokens": 1,
                                                                              "completion_tokens": 1}}
    messages = _server_messages(json.dumps([chunk, {"type": "from-the-future", "x": 1}, done]))
    assert [type(m) for m in messages] == [Chunk, Done]
    assert messages[1].usage.completion_tokens == 1
    assert _server_messages("not json") == []
