"""docs/protocol.md is what client authors implement from: its examples must be what the code does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from seedance.protocol import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    Chunk,
    Done,
    TokenLogprob,
    Usage,
    chunk_to_frame,
    decode_client_message,
    decode_frame,
    decode_server_message,
    encode_frame,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_EXAMPLE = re.compile(r"<!-- mtf1-example: (\w+) -->")
_DUMP_LINE = re.compile(r"^([0-9a-f]{8})  ([0-9a-f ]+?)\s*\|.*\|$")


def _blocks(text: str) -> list[tuple[int, str, str]]:
    return [(m.start(), m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def parse_hexdump(dump: str) -> bytes:
    """Bytes of a `hexdump -C` style dump, checking each line's offset so a dropped line cannot go unnoticed."""
    out = bytearray()
    for line in dump.strip().splitlines():
        m = _DUMP_LINE.match(line)
        assert m, f"not a hexdump line: {line!r}"
        assert int(m.group(1), 16) == len(out), f"offset {m.group(1)} after {len(out)} bytes"
        out += bytes.fromhex(m.group(2))
    return bytes(out)


def mtf1_examples() -> dict[str, tuple[dict[str, Any], bytes]]:
    text = DOC.read_text(encoding="utf-8")
    blocks = _blocks(text)
    examples = {}
    for marker in _EXAMPLE.finditer(text):
        following = [b for b in blocks if b[0] > marker.end()]
        (_, lang_in, inputs), (_, lang_dump, dump) = following[0], following[1]
        assert (lang_in, lang_dump) == ("json", "text"), f"example {marker.group(1)}: expected a json then a text block"
        examples[marker.group(1)] = (json.loads(inputs), parse_hexdump(dump))
    return examples


EXAMPLES = mtf1_examples()


def test_doc_has_the_required_examples() -> None:
    assert set(EXAMPLES) == {"partial", "final"}
    partial, _ = EXAMPLES["partial"]
    assert partial["is_partial"] and partial["logprobs"] is None and len(partial["token_ids"]) == 2
    final, _ = EXAMPLES["final"]
    assert not final["is_partial"] and final["logprobs"] and "finish_reason" in final["metadata"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_doc_hexdump_is_the_encoder_output(name: str) -> None:
    inputs, expected = EXAMPLES[name]
    data = encode_frame(
        inputs["token_ids"],
        inputs["text"],
        inputs["metadata"],
        logprobs=inputs["logprobs"],
        is_partial=inputs["is_partial"],
    )
    assert data.hex(" ") == expected.hex(" ")
    frame = decode_frame(expected)
    assert frame.token_ids.tolist() == inputs["token_ids"]
    assert frame.text == inputs["text"]
    assert frame.metadata == inputs["metadata"]
    assert frame.is_partial == inputs["is_partial"]
    assert (frame.logprobs.tolist() if frame.logprobs is not None else None) == inputs["logprobs"]


def test_doc_final_example_is_what_chunk_to_frame_sends() -> None:
    inputs, expected = EXAMPLES["final"]
    meta = inputs["metadata"]
    chunk = Chunk(
        id=meta["id"],
        seq=meta["seq"],
        text=inputs["text"],
        token_ids=inputs["token_ids"],
        logprobs=[
            TokenLogprob(token_id=t, logprob=lp, top=[tuple(p) for p in top])
            for t, lp, top in zip(inputs["token_ids"], inputs["logprobs"], meta["top_logprobs"], strict=True)
        ],
    )
    done = Done(id=meta["id"], finish_reason=meta["finish_reason"], usage=Usage(**meta["usage"]))
    assert chunk_to_frame(chunk, done) == expected


def _message_examples() -> list[dict[str, Any]]:
    found = []
    for _, lang, body in _blocks(DOC.read_text(encoding="utf-8")):
        if lang == "json":
            obj = json.loads(body)
            if "type" in obj:
                found.append(obj)
    return found


MESSAGES = _message_examples()


def test_doc_shows_every_message_type() -> None:
    assert {m["type"] for m in MESSAGES} == {*CLIENT_MESSAGE_TYPES, *SERVER_MESSAGE_TYPES}


@pytest.mark.parametrize("message", MESSAGES, ids=[f"{m['type']}-{i}" for i, m in enumerate(MESSAGES)])
def test_doc_json_examples_decode(message: dict[str, Any]) -> None:
    data = json.dumps(message)
    if message["type"] in CLIENT_MESSAGE_TYPES:
        decoded = decode_client_message(data, max_size=1 << 20)
    else:
        decoded = decode_server_message(data)
    types = CLIENT_MESSAGE_TYPES if message["type"] in CLIENT_MESSAGE_TYPES else SERVER_MESSAGE_TYPES
    assert type(decoded) is types[message["type"]]
