"""The gateway <-> engine-core codec: commands and step batches round-trip, frames survive any split."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from seedance.engine.core_protocol import (
    Abort,
    Add,
    Embed,
    Embedded,
    EmbedRows,
    Encoded,
    EncodeImages,
    FrameBuffer,
    Pause,
    Refusal,
    Resume,
    SetPriority,
    Shutdown,
    Step,
    Unpin,
    decode_commands,
    decode_to_gateway,
    embeds_from_wire,
    embeds_to_wire,
    frame,
    tensor_bytes,
    tensor_from_bytes,
)
from seedance.engine.errors import InvalidRequest
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.llm_engine import EngineStats
from seedance.engine.prompt_embeds import EncodedRows, assemble_prompt, decode_rows
from seedance.engine.sampling_params import GuidedDecoding, SamplingParams

STATS = EngineStats(1, 2, 0, 100, 128, 10, 4, 0, 3, 7, 9, 4096)


def body(data: bytes) -> bytes:
    (out,) = FrameBuffer().feed(data)
    return out


def test_commands_round_trip_in_one_frame():
    commands = [Add("ws1:a", [1, 2, 3], SamplingParams(max_tokens=5, temperature=0.0, stop=["."]), 2, 12.5, "sess"),
                Abort("ws1:b"), Pause("x"), Resume("x"), SetPriority("x", -1), Unpin("sess"), Shutdown()]
    assert decode_commands(body(frame(commands))) == commands


def test_a_step_batch_round_trips_into_token_events():
    events = [TokenEvent(f"r{i}", 3, 100 + i, " light", logprob=-0.5, top_logprobs=((1, -0.1), (2, -0.2)))
              for i in range(3)]
    events.append(TokenEvent("r9", 4, 7, "", finish_reason=FinishReason.STOP, stop_reason=".", num_prompt_tokens=5))
    step = Step(events, ["r1"], [Refusal("r2", "overloaded", "full")], [events[-1]], 1.5, 0.02, STATS)
    back = decode_to_gateway(body(frame(step)))
    assert back == step
    assert type(back.events[0]) is TokenEvent and back.events[-1].finished and not back.events[0].finished
    assert back.events[-1].finish_reason is FinishReason.STOP and back.stats == STATS


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_frames_come_out_whole_however_the_bytes_are_split(payloads, cuts):
    stream = b"".join(frame(p) for p in payloads)
    buf, out, pos, i = FrameBuffer(), [], 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        out += buf.feed(stream[pos:pos + n])
        pos, i = pos + n, i + 1
    assert [msgspec.msgpack.decode(b) for b in out] == payloads


def test_a_corrupt_length_is_refused():
    with pytest.raises(ValueError):
        FrameBuffer().feed(b"\xff\xff\xff\xff rest")


def test_guided_penalties_and_logit_bias_cross_in_the_add():
    params = SamplingParams(max_tokens=9, presence_penalty=0.5, repetition_penalty=1.2,
                            logit_bias={17: -100.0, 3: 2.5},
                            guided=GuidedDecoding("json_schema", '{"type":"object"}', strict=False))
    back, abort = decode_commands(body(frame([Add("a", [1, 2], params), Abort("a", keep_tokens=7)])))
    assert abort == Abort("a", 7)
    assert back.params == params and type(back.params.guided) is GuidedDecoding and back.params.logit_bias[17] == -100


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_embedding_rows_cross_as_bytes_and_come_back_the_same(dtype):
    rows = torch.randn(5, 8).to(dtype)
    ids, embeds = assemble_prompt([[1, 2], rows[:3], [3], ("image", rows[3:])])
    (add,) = decode_commands(body(frame([Add("a", ids, SamplingParams(), embeds=embeds_to_wire(embeds))])))
    back = embeds_from_wire(add.embeds)
    def key(e):
        return [(s.start, s.kind, s.digest) for s in e.segments]

    assert key(back) == key(embeds)
    for got, want in zip(back.segments, embeds.segments, strict=True):
        assert got.rows.dtype == dtype and torch.equal(got.rows, want.rows)
    assert assemble_prompt([[1, 2], back.segments[0].rows, [3], ("image", back.segments[1].rows)])[0] == ids
    assert embeds_to_wire(None) is None and embeds_from_wire(None) is None


def test_f32le_rows_decoded_as_numpy_are_the_tensor_path_s_prompt():
    """The process mode's gateway keeps f32le rows as numpy (no torch there): the same checks, the same content
    ids (digest), the same bytes on the wire and the same tensors in the core as the thread mode's tensors."""
    rows = torch.randn(4, 8)
    encoded = EncodedRows(rows.numpy().astype("<f4").tobytes())
    as_array = decode_rows(encoded, 8, 1 << 20, "rows", as_tensor=False)
    as_tensor = decode_rows(encoded, 8, 1 << 20, "rows")
    assert isinstance(as_array, np.ndarray) and torch.equal(as_tensor, rows)
    ids, embeds = assemble_prompt([[1, 2], as_array, [3]])
    tensor_ids, tensor_embeds = assemble_prompt([[1, 2], as_tensor, [3]])
    assert ids == tensor_ids and embeds.segments[0].digest == tensor_embeds.segments[0].digest
    assert embeds_to_wire(embeds) == embeds_to_wire(tensor_embeds)
    assert torch.equal(embeds_from_wire(embeds_to_wire(embeds)).segments[0].rows, rows)
    bad = rows.clone()
    bad[1, 3] = float("nan")
    for as_tensor_ in (False, True):
        with pytest.raises(InvalidRequest, match="NaN"):
            decode_rows(EncodedRows(bad.numpy().astype("<f4").tobytes()), 8, 1 << 20, "rows", as_tensor_)


def test_embedding_rows_whose_bytes_do_not_fit_are_refused():
    with pytest.raises(ValueError):
        embeds_from_wire([EmbedRows(0, "float32", 3, b"\0" * 10, b"d")])
    with pytest.raises(ValueError):
        embeds_from_wire([EmbedRows(0, "int64", 1, b"\0" * 8, b"d")])


def test_embed_and_its_answer_round_trip():
    assert decode_commands(body(frame([Embed(3, [[1, 2], [3]])]))) == [Embed(3, [[1, 2], [3]])]
    step = Step([], embedded=[Embedded(3, 2, b"\0" * 16), Embedded(4, error="no", code="invalid_request")])
    assert decode_to_gateway(body(frame(step))) == step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_images_cross_as_pixels_and_their_features_come_back_the_same(dtype):
    pixels = torch.randn(2, 3, 32, 32)
    name, data = tensor_bytes(pixels)
    (command,) = decode_commands(body(frame([EncodeImages(7, name, list(pixels.shape), data)])))
    assert isinstance(command, EncodeImages) and torch.equal(
        tensor_from_bytes(command.pixels, command.dtype, command.shape), pixels)
    features = [torch.randn(16, 64).to(dtype), torch.randn(9, 64).to(dtype)]
    name, data = tensor_bytes(torch.cat(features))
    step = decode_to_gateway(body(frame(Step([], encoded=[Encoded(7, name, [16, 9], 64, data),
                                                         Encoded(8, error="no", code="invalid_request")]))))
    good, bad = step.encoded
    assert all(torch.equal(a, b) for a, b in zip(good.features(), features, strict=True))
    assert bad.error == "no" and bad.code == "invalid_request"


def test_pixels_or_features_whose_bytes_do_not_fit_are_refused():
    for data, dtype, shape in ((b"\0" * 10, "float32", [1, 3, 2, 2]), (b"\0" * 48, "int64", [1, 3, 2, 1]),
                               (b"", "float32", [0, 3, 2, 2])):
        with pytest.raises(ValueError):
            tensor_from_bytes(data, dtype, shape)
    with pytest.raises(ValueError):
        Encoded(1, "float32", [16, 16], 64, b"\0" * 4 * 16 * 64).features()


def test_a_four_image_frame_is_the_pixels_plus_a_few_bytes():
    """The frame size docs/multimodal.md gives: 4 images at 224 px (ViT-B/16, the benchmark's tower) are their
    float32 pixels (4 x 3 x 224 x 224 x 4 bytes = 2.4 MB) and a few bytes of msgpack header, however large the
    files the client sent were (the processor's output size is the model's)."""
    name, data = tensor_bytes(torch.zeros(4, 3, 224, 224))
    size = len(frame([EncodeImages(1, name, [4, 3, 224, 224], data)]))
    assert 4 * 3 * 224 * 224 * 4 < size < 4 * 3 * 224 * 224 * 4 + 64
