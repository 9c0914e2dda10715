"""The engine core runs at most `max_steps_ahead` steps ahead of a gateway's delivery (core_process.CoreLoop,
`Delivered`): a gateway that falls behind gets at most that many steps coalesced per chunk and the core waits for
it instead of piling steps into the socket; without the bound the core steps on regardless. The built-in engine
on a thread of the test, spoken to in frames over a socket pair (tests/engine/test_core_beside.py's Core), the
test playing a gateway that delivers only when told."""

from __future__ import annotations

import time

import pytest

from seedance.engine import core_process
from seedance.engine.config import EngineConfig
from seedance.engine.core_protocol import Add, Delivered, Step, decode_to_gateway
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams
from tests.engine.test_core_beside import Core

LONG = SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine():
    return LLMEngine.from_config(EngineConfig(num_kv_blocks=256, warmup=False, max_steps_ahead=2))


def frames_with_events(core: Core, seconds: float) -> list[Step]:
    """The Step frames carrying events that arrive within `seconds`, none of them answered."""
    deadline = time.monotonic() + seconds
    steps: list[Step] = []
    while (left := deadline - time.monotonic()) > 0:
        core.sock.settimeout(left)
        try:
            data = core.sock.recv(1 << 20)
        except TimeoutError:
            break
        for body in core.frames.feed(data):
            message = decode_to_gateway(body)
            if isinstance(message, Step) and message.events:
                steps.append(message)
    return steps


def test_the_core_waits_for_a_gateway_max_steps_ahead_behind_and_steps_on_once_delivered(engine):
    core = Core(engine)
    try:
        core.send(Add("a", [5, 6, 7], LONG), Add("b", [8, 9], LONG))
        first = frames_with_events(core, 0.6)
        assert len(first) == 2  # two steps unanswered: the third waits (a step of this model takes milliseconds)
        core.send(Delivered(1))  # one delivered: one more step
        assert len(frames_with_events(core, 0.4)) == 1
        core.send(Delivered(2))
        assert len(frames_with_events(core, 0.4)) == 2
    finally:
        core.close()


def test_a_gateway_that_never_answers_slows_the_core_but_does_not_stop_it(engine, monkeypatch):
    monkeypatch.setattr(core_process, "AHEAD_MAX_WAIT_S", 0.1)
    core = Core(engine)
    try:
        core.send(Add("a", [5, 6, 7], LONG))
        steps = frames_with_events(core, 1.0)
        assert 3 <= len(steps) <= 14  # 2, then one more per 0.1 s wait: a pace, not a lock
    finally:
        core.close()


def test_without_the_bound_the_core_steps_on_regardless(engine):
    core = Core(engine)
    core.loop.max_ahead = None  # max_steps_ahead None
    try:
        core.send(Add("a", [5, 6, 7], LONG))
        assert len(frames_with_events(core, 0.5)) > 10
    finally:
        core.close()
