"""The gateway <-> engine-core codec: commands and step batches round-trip, frames survive any split."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from seedance.engine.core_protocol import (
    Abort,
    Add,
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
    frame,
)
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.llm_engine import EngineStats
from seedance.engine.sampling_params import SamplingParams

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
