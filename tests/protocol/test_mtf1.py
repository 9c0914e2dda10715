from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedance.protocol import (
    MAX_BODY_BYTES,
    Chunk,
    Done,
    Frame,
    FrameError,
    ProtocolError,
    TokenLogprob,
    Usage,
    chunk_to_frame,
    decode_frame,
    decode_frames,
    encode_frame,
    frame_to_chunk,
)

HEADER = struct.Struct("<4sBBHIHH")


def raw_frame(
    payload: bytes,
    *,
    magic: bytes = b"MTF1",
    version: int = 1,
    flags: int = 0x04,
    token_count: int = 0,
    payload_length: int | None = None,
    logprob_offset: int = 0,
    metadata_offset: int = 0,
) -> bytes:
    """A frame with any header values, to build the malformed ones the encoder refuses to make. The payload is
    padded with spaces to the 4-byte frame length a valid frame has, so tests reach the check they aim at."""
    payload += b" " * (-len(payload) % 4)
    length = len(payload) if payload_length is None else payload_length
    return HEADER.pack(magic, version, flags, token_count, length, logprob_offset, metadata_offset) + payload


def patch(frame: bytes, offset: int, fmt: str, value: int | bytes) -> bytes:
    buf = bytearray(frame)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


PARTIAL = encode_frame([389, 392], " God said", {"id": "r1", "seq": 0})
WITH_LOGPROBS = encode_frame([322, 689], " unto Moses", {"id": "r1", "seq": 1}, logprobs=[-0.25, -1.5])


# ---------------------------------------------------------------------------------------------- round trips


def test_decode_partial_frame() -> None:
    frame = decode_frame(PARTIAL)
    assert isinstance(frame, Frame)
    assert (frame.version, frame.is_partial, frame.is_multimodal, frame.has_logprobs) == (1, True, False, False)
    assert frame.token_ids.tolist() == [389, 392]
    assert frame.token_ids.format == "I"
    assert frame.text == " God said"
    assert frame.logprobs is None
    assert frame.metadata == {"id": "r1", "seq": 0}


def test_decode_logprob_frame() -> None:
    frame = decode_frame(WITH_LOGPROBS)
    assert frame.logprobs is not None and frame.logprobs.format == "f"
    assert frame.logprobs.tolist() == [-0.25, -1.5]
    assert frame.text == " unto Moses"


def test_layout_is_tokens_logprobs_text_metadata() -> None:
    magic, version, flags, n, length, lp_off, meta_off = HEADER.unpack_from(WITH_LOGPROBS)
    assert (magic, version, flags, n, length) == (b"MTF1", 1, 0x05, 2, len(WITH_LOGPROBS) - 16)
    assert (lp_off, meta_off) == (8, 16 + len(b" unto Moses"))
    body = WITH_LOGPROBS[16:]
    assert struct.unpack_from("<2I2f", body) == (322, 689, -0.25, -1.5)
    assert body[16:meta_off] == b" unto Moses"
    assert body[meta_off:] == b'{"id":"r1","seq":1}  '  # padded to a frame length of 64
    assert len(WITH_LOGPROBS) == 64


def test_empty_frame() -> None:
    data = encode_frame([], "", {}, logprobs=[], is_partial=False, is_multimodal=True)
    assert data[16:] == b"{}  "  # padded to 20 bytes
    frame = decode_frame(data)
    assert frame.token_ids.tolist() == [] and frame.logprobs is None  # no tokens: the flag is never set
    assert (frame.text, frame.metadata, frame.is_partial, frame.is_multimodal) == ("", {}, False, True)


def test_non_finite_logprobs_survive() -> None:
    frame = decode_frame(encode_frame([1, 2], "", {}, logprobs=[-math.inf, math.nan]))
    assert frame.logprobs is not None
    assert frame.logprobs[0] == -math.inf and math.isnan(frame.logprobs[1])


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)


@st.composite
def frame_inputs(draw: st.DrawFn) -> dict[str, Any]:
    token_ids = draw(st.lists(st.integers(0, 2**32 - 1), max_size=300))
    with_logprobs = draw(st.booleans())
    logprobs = (
        draw(
            st.lists(
                st.floats(width=32, allow_nan=False, allow_infinity=False),
                min_size=len(token_ids),
                max_size=len(token_ids),
            )
        )
        if with_logprobs
        else None
    )
    return {
        "token_ids": token_ids,
        "text": draw(st.text(st.characters(codec="utf-8"), max_size=200)),
        "metadata": draw(st.dictionaries(st.text(max_size=10), _json, max_size=6)),
        "logprobs": logprobs,
        "is_partial": draw(st.booleans()),
        "is_multimodal": draw(st.booleans()),
    }


@settings(max_examples=200, deadline=None)
@given(frame_inputs())
def test_round_trip(inputs: dict[str, Any]) -> None:
    data = encode_frame(
        inputs["token_ids"],
        inputs["text"],
        inputs["metadata"],
        logprobs=inputs["logprobs"],
        is_partial=inputs["is_partial"],
        is_multimodal=inputs["is_multimodal"],
    )
    frame = decode_frame(data, max_size=len(data))
    assert frame.token_ids.tolist() == inputs["token_ids"]
    assert frame.text == inputs["text"]
    assert frame.metadata == inputs["metadata"]
    assert (frame.is_partial, frame.is_multimodal) == (inputs["is_partial"], inputs["is_multimodal"])
    if inputs["logprobs"] is not None and inputs["token_ids"]:
        assert frame.logprobs is not None
        assert frame.logprobs.tolist() == inputs["logprobs"]  # float32 values: exact
        assert HEADER.unpack_from(data)[5] == 4 * len(inputs["token_ids"])
    else:
        assert frame.logprobs is None
    # frames are padded to a multiple of 4 so that back-to-back frames keep their blocks aligned
    assert len(data) % 4 == 0
    assert data[HEADER.unpack_from(data)[6] + 16 :].decode().rstrip(" ").endswith("}")


# ---------------------------------------------------------------------------------------------- zero copy


def test_token_ids_view_the_input_buffer() -> None:
    buf = bytearray(WITH_LOGPROBS)
    frame = decode_frame(buf)
    assert frame.token_ids.obj is buf and frame.logprobs is not None and frame.logprobs.obj is buf
    struct.pack_into("<I", buf, 16, 7)  # rewrite token 0 in place
    struct.pack_into("<f", buf, 24, -3.0)  # and logprob 0
    assert frame.token_ids[0] == 7
    assert frame.logprobs[0] == -3.0
    assert frame.token_ids.readonly is False


def test_memoryview_input() -> None:
    outer = b"xxxx" + PARTIAL + b"yy"
    frame = decode_frame(memoryview(outer)[4 : 4 + len(PARTIAL)])
    assert frame.token_ids.tolist() == [389, 392]
    assert frame.token_ids.obj is outer


def test_memoryview_of_other_format_and_non_contiguous() -> None:
    assert len(PARTIAL) % 4 == 0
    as_u32 = memoryview(bytearray(PARTIAL)).cast("I")  # read as its bytes, whatever the view's format
    assert decode_frame(as_u32).token_ids.tolist() == [389, 392]
    interleaved = bytes(b for pair in zip(PARTIAL, bytes(len(PARTIAL)), strict=True) for b in pair)
    strided = memoryview(interleaved)[::2]  # not contiguous: the one input that is copied
    assert decode_frame(strided).text == " God said"


# ---------------------------------------------------------------------------------------------- rejections


def _with_text(text: bytes) -> bytes:
    meta = b"{}"
    return raw_frame(text + meta, metadata_offset=len(text))


MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty", b"", "short header: frame is 0 bytes, the header alone is 16"),
    ("short header", PARTIAL[:15], "short header: frame is 15 bytes, the header alone is 16"),
    ("bad magic", b"MTF2" + PARTIAL[4:], "bad magic b'MTF2', expected b'MTF1'"),
    ("unknown version", patch(PARTIAL, 4, "<B", 2), "unknown version 2, this decoder reads version 1"),
    ("reserved flags", patch(PARTIAL, 5, "<B", 0x84), "reserved flag bits set: flags=0x84, only 0x07 are defined"),
    ("truncated", PARTIAL[:-1], "payload_length 36 does not match the 35 bytes after the header"),
    ("extended", PARTIAL + b" ", "payload_length 36 does not match the 37 bytes after the header"),
    (
        "length not a multiple of 4",
        patch(PARTIAL + b" ", 8, "<I", 37),
        "frame length 53 is not a multiple of 4 (pad the metadata with trailing spaces)",
    ),
    (
        "logprob_offset without flag",
        patch(PARTIAL, 12, "<H", 8),
        "logprob_offset 8 set without the has_logprobs flag",
    ),
    (
        "flag without logprob_offset",
        patch(PARTIAL, 5, "<B", 0x05),
        "logprob_offset 0 must be 4*token_count = 8 when has_logprobs is set",
    ),
    (
        "logprob_offset misplaced",
        patch(WITH_LOGPROBS, 12, "<H", 12),
        "logprob_offset 12 must be 4*token_count = 8 when has_logprobs is set",
    ),
    ("logprobs without tokens", raw_frame(b"{}", flags=0x01), "has_logprobs flag set on a frame with no tokens"),
    (
        "token_count past payload",
        patch(PARTIAL, 6, "<H", 100),
        "token_count 100 needs 400 bytes, past payload_length 36",
    ),
    ("metadata_offset past payload", patch(PARTIAL, 14, "<H", 37), "metadata_offset 37 is past payload_length 36"),
    (
        "metadata_offset inside tokens",
        patch(PARTIAL, 14, "<H", 4),
        "metadata_offset 4 is before the end of the token block (8)",
    ),
    (
        "metadata_offset inside logprobs",
        patch(WITH_LOGPROBS, 14, "<H", 12),
        "metadata_offset 12 is before the end of the token and logprob blocks (16)",
    ),
    (
        "text not utf-8",
        _with_text(b"ok\xff"),
        "text is not valid UTF-8: invalid start byte at text byte 2 (frame byte 18)",
    ),
    ("text truncated character", _with_text("é".encode()[:1]), "text is not valid UTF-8: unexpected end of data"),
    (
        "metadata empty",
        raw_frame(b"", metadata_offset=0),
        "metadata block is empty, expected a JSON object (at least {})",
    ),
    ("metadata not JSON", raw_frame(b"{", metadata_offset=0), "metadata is not valid JSON: "),
    ("metadata array", raw_frame(b"[1]", metadata_offset=0), "metadata must be a JSON object, got array"),
    ("metadata string", raw_frame(b'"x"', metadata_offset=0), "metadata must be a JSON object, got str"),
    ("metadata null", raw_frame(b"null", metadata_offset=0), "metadata must be a JSON object, got null"),
    ("metadata not utf-8", raw_frame(b'{"a":"\xff"}', metadata_offset=0), "metadata is not valid UTF-8: "),
    ("metadata too deep", raw_frame(b"[" * 50_000, metadata_offset=0), "metadata"),
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed_frames_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(data)
    assert info.value.message.startswith(message)
    assert info.value.code == "invalid_message"
    assert isinstance(info.value, ProtocolError)


def test_frame_larger_than_max_size() -> None:
    assert decode_frame(PARTIAL, max_size=len(PARTIAL)).text == " God said"
    with pytest.raises(FrameError) as info:
        decode_frame(PARTIAL, max_size=len(PARTIAL) - 1)
    assert info.value.code == "message_too_large"
    assert info.value.message == f"frame is {len(PARTIAL)} bytes, larger than max_size {len(PARTIAL) - 1}"
    with pytest.raises(FrameError):  # checked before anything else
        decode_frame(b"garbage" * 10, max_size=16)


# ---------------------------------------------------------------------------------------------- encoder limits


def test_encoder_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(ValueError, match=r"u32|pack"):
        encode_frame([-1], "", {})
    with pytest.raises(ValueError, match="pack"):
        encode_frame([2**32], "", {})
    with pytest.raises(ValueError, match="1 logprobs for 2 tokens"):
        encode_frame([1, 2], "", {}, logprobs=[-1.0])
    with pytest.raises(ValueError, match="pack"):
        encode_frame([1], "", {}, logprobs=[1e300])  # beyond float32
    with pytest.raises(TypeError, match="metadata must be a dict"):
        encode_frame([1], "", [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split it"):
        encode_frame([], "x" * (MAX_BODY_BYTES + 1), {})


def test_body_limit_is_exact_and_metadata_is_not_limited_by_u16() -> None:
    big_meta = {"blob": "m" * 100_000}
    data = encode_frame([1] * 100, "t" * (MAX_BODY_BYTES - 400), big_meta)
    frame = decode_frame(data)
    assert HEADER.unpack_from(data)[6] == MAX_BODY_BYTES
    assert frame.metadata == big_meta and len(frame.text) == MAX_BODY_BYTES - 400
    with pytest.raises(ValueError):
        encode_frame([1] * 100, "t" * (MAX_BODY_BYTES - 399), {})
    with pytest.raises(ValueError):
        encode_frame([1] * 8192, "", {}, logprobs=[0.0] * 8192)  # 65536 bytes


# ---------------------------------------------------------------------------------------------- fuzz


def _check(data: bytes | bytearray) -> None:
    try:
        frame = decode_frame(data, max_size=1 << 20)
    except FrameError:
        return
    n = HEADER.unpack_from(data)[3]
    assert len(frame.token_ids) == n
    assert frame.logprobs is None or len(frame.logprobs) == n
    assert isinstance(frame.metadata, dict)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check(data)
    _check(b"MTF1\x01" + data)  # get past the magic and version checks


@settings(max_examples=300, deadline=None)
@given(frame_inputs(), st.data())
def test_fuzz_mutations_of_valid_frames(inputs: dict[str, Any], data: st.DataObject) -> None:
    frame = bytearray(
        encode_frame(
            inputs["token_ids"][:20],
            inputs["text"],
            inputs["metadata"],
            logprobs=inputs["logprobs"][:20] if inputs["logprobs"] is not None else None,
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "extend", "header", "byte"]))
        if op == "flip" and frame:
            i = data.draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            del frame[data.draw(st.integers(0, len(frame))) :]
        elif op == "extend":
            frame += data.draw(st.binary(min_size=1, max_size=20))
        elif op == "header" and len(frame) >= 16:
            offset, fmt = data.draw(st.sampled_from([(5, "<B"), (6, "<H"), (8, "<I"), (12, "<H"), (14, "<H")]))
            bound = {"<B": 0xFF, "<H": 0xFFFF, "<I": 0xFFFFFFFF}[fmt]
            struct.pack_into(fmt, frame, offset, data.draw(st.integers(0, bound)))
        elif op == "byte" and frame:
            frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    _check(frame)


def test_fuzz_seeded_mutations() -> None:
    """Many cheap mutations with a fixed seed, so a failure reproduces without hypothesis' database."""
    rng = random.Random(1234)
    seeds = [PARTIAL, WITH_LOGPROBS, encode_frame([], "", {}, is_partial=False), _with_text("αβγ".encode())]
    for _ in range(5000):
        frame = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            if r < 0.4 and frame:
                frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            elif r < 0.6:
                del frame[rng.randint(0, len(frame)) :]
            elif r < 0.8:
                frame += rng.randbytes(rng.randint(1, 8))
            elif len(frame) >= 16:
                # keep payload_length consistent so the mutation reaches the deeper checks
                frame[16 + rng.randrange(max(1, len(frame) - 16)) :] = rng.randbytes(rng.randint(0, 8))
                struct.pack_into("<I", frame, 8, len(frame) - 16)
        _check(frame)


# ---------------------------------------------------------------------------------------------- chunk bridge


def test_chunk_to_frame_and_back() -> None:
    chunk = Chunk(
        id="r1",
        seq=4,
        text=" light",
        token_ids=[1046],
        logprobs=[TokenLogprob(token_id=1046, logprob=-0.5, top=[(1046, -0.5), (296, -1.25)])],
    )
    done = Done(
        id="r1",
        finish_reason="stop",
        usage=Usage(prompt_tokens=3, completion_tokens=5, cached_tokens=2),
        stop_reason=".",
    )
    partial = decode_frame(chunk_to_frame(chunk))
    assert partial.is_partial and partial.metadata == {
        "id": "r1",
        "seq": 4,
        "top_logprobs": [[[1046, -0.5], [296, -1.25]]],
    }
    assert frame_to_chunk(partial) == (chunk, None)
    final = decode_frame(chunk_to_frame(chunk, done))
    assert not final.is_partial
    assert frame_to_chunk(final) == (chunk, done)


def test_token_less_final_frame() -> None:
    chunk = Chunk(id="r1", seq=9, text="", token_ids=[])
    done = Done(id="r1", finish_reason="cancelled", usage=Usage(prompt_tokens=3, completion_tokens=8))
    data = chunk_to_frame(chunk, done)
    assert HEADER.unpack_from(data)[2:4] == (0, 0)  # flags: final, no logprobs; no tokens
    assert frame_to_chunk(decode_frame(data)) == (chunk, done)


def test_chunk_logprobs_without_top() -> None:
    chunk = Chunk(
        id="a",
        seq=0,
        text="x",
        token_ids=[5, 6],
        logprobs=[TokenLogprob(token_id=5, logprob=-1.0), TokenLogprob(token_id=6, logprob=-2.0)],
    )
    frame = decode_frame(chunk_to_frame(chunk))
    assert "top_logprobs" not in frame.metadata
    assert frame_to_chunk(frame) == (chunk, None)


def test_chunk_bridge_errors() -> None:
    chunk = Chunk(id="a", seq=0, text="", token_ids=[1])
    with pytest.raises(ValueError, match="attached to a chunk of"):
        chunk_to_frame(chunk, Done(id="b", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1)))
    with pytest.raises(FrameError, match="frame metadata"):
        frame_to_chunk(decode_frame(encode_frame([1], "", {"seq": 0})))
    with pytest.raises(FrameError, match="finish_reason"):
        frame_to_chunk(decode_frame(encode_frame([1], "", {"id": "a", "seq": 0}, is_partial=False)))
    with pytest.raises(FrameError, match="top_logprobs entries"):
        frame_to_chunk(decode_frame(encode_frame([1], "", {"id": "a", "seq": 0, "top_logprobs": []}, logprobs=[0.0])))


def test_portable_path_for_big_endian_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Big-endian hosts cannot view the little-endian blocks in place; the copying path must agree."""
    import seedance.protocol.messages as messages_module
    import seedance.protocol.mtf1 as mtf1_module

    monkeypatch.setattr(mtf1_module, "_NATIVE", False)
    monkeypatch.setattr(messages_module, "_NATIVE_U32LE", False)
    frame = decode_frame(WITH_LOGPROBS)
    assert frame.token_ids.format == "I" and frame.token_ids.tolist() == [322, 689]
    assert frame.logprobs is not None and frame.logprobs.tolist() == [-0.25, -1.5]
    msg = messages_module.Generate(id="r", prompt_b64="bg0AAAMBAAAcCAAA")
    assert messages_module.decode_binary_prompt(msg) == [3438, 259, 2076]


# ------------------------------------------------------------------------------ several frames per message


def test_decode_frames_splits_a_message() -> None:
    final = encode_frame([], "", {"id": "b", "seq": 3, "finish_reason": "stop"}, is_partial=False)
    message = PARTIAL + WITH_LOGPROBS + final
    frames = decode_frames(message, max_size=len(message))
    assert [f.metadata["seq"] for f in frames] == [0, 1, 3]
    assert [f.token_ids.tolist() for f in frames] == [[389, 392], [322, 689], []]
    assert frames[1].token_ids.obj is message  # still views over the one buffer
    assert not frames[2].is_partial
    assert [f.text for f in decode_frames(PARTIAL)] == [" God said"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty message: expected at least one frame"),
        (PARTIAL + PARTIAL[:10], f"frame at byte {len(PARTIAL)}: short header: 10 bytes left"),
        (PARTIAL + b"XTF1" + PARTIAL[4:], f"frame at byte {len(PARTIAL)}: bad magic b'XTF1'"),
        (PARTIAL + PARTIAL[:-1], f"frame at byte {len(PARTIAL)}: payload_length 36 runs past the end of the message"),
        (patch(PARTIAL, 4, "<B", 9) + PARTIAL, "frame at byte 0: unknown version 9"),
    ],
)
def test_decode_frames_rejections(data: bytes, message: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_frames(data)
    assert info.value.message.startswith(message)


def test_decode_frames_max_size() -> None:
    with pytest.raises(FrameError) as info:
        decode_frames(PARTIAL + PARTIAL, max_size=len(PARTIAL))
    assert info.value.code == "message_too_large"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([PARTIAL, WITH_LOGPROBS]), min_size=1, max_size=4), st.data())
def test_fuzz_decode_frames(parts: list[bytes], data: st.DataObject) -> None:
    message = bytearray(b"".join(parts))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(message) - 1))
        message[i] = data.draw(st.integers(0, 255))
    try:
        frames = decode_frames(message)
    except FrameError:
        return
    assert sum(16 + len(f.token_ids) * (8 if f.logprobs is not None else 4) for f in frames) <= len(message)
