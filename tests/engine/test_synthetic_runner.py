import time

from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.config import EngineConfig
from seedance.engine.sampling_params import SamplingParams
from seedance.engine.synthetic_runner import PASSAGE


async def test_synthetic_backend_streams_the_passage_at_the_configured_rate():
    engine = await AsyncEngine.create(EngineConfig(synthetic_rate=200.0))
    try:
        start = time.perf_counter()
        events = [e async for e in engine.generate(GenerateRequest(prompt="x", params=SamplingParams(max_tokens=40)))]
        elapsed = time.perf_counter() - start
        assert len(events) == 40 and events[-1].finish_reason == "length"
        assert PASSAGE.startswith("".join(e.text_delta for e in events))
        assert elapsed >= 39 / 200.0  # it cannot go faster than the rate it was given
    finally:
        await engine.close()


async def test_synthetic_tokens_carry_a_logprob_only_when_asked_as_the_models_do():
    engine = await AsyncEngine.create(EngineConfig(synthetic_rate=1000.0))
    try:
        plain = [e async for e in engine.generate(GenerateRequest(prompt="x", params=SamplingParams(max_tokens=4)))]
        asked = [e async for e in engine.generate(GenerateRequest(prompt="x", params=SamplingParams(max_tokens=4,
                                                                                                   logprobs=0)))]
        assert [e.logprob for e in plain] == [None] * 4
        assert [e.logprob for e in asked] == [0.0] * 4
    finally:
        await engine.close()
