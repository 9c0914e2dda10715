"""Step-size-adaptive torch threads (EngineConfig.large_step_threads): big steps on more threads, small ones on
`threads`, with the same greedy tokens as one thread throughout."""

from __future__ import annotations

import torch

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams


def run(config: EngineConfig) -> tuple[list[int], list[int]]:
    """Greedy tokens of two prompts, and torch's thread count after each step."""
    engine = LLMEngine.from_config(config)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    engine.add_request("a", list(range(5, 45)), params)
    engine.add_request("b", list(range(60, 90)), params)
    tokens: dict[str, list[int]] = {"a": [], "b": []}
    threads = []
    while engine.has_work():
        for event in engine.step():
            if event.token_id >= 0:
                tokens[event.request_id].append(event.token_id)
        threads.append(torch.get_num_threads())
    return tokens["a"] + tokens["b"], threads


def test_large_steps_get_more_threads_and_the_same_tokens():
    saved = torch.get_num_threads()
    try:
        plain, plain_threads = run(EngineConfig(threads=1, warmup=False))
        adaptive, threads = run(EngineConfig(threads=1, large_step_threads=2, large_step_work=8 * 5_500_000,
                                    warmup=False))
    finally:
        torch.set_num_threads(saved)
    assert set(plain_threads) == {1}
    assert threads[0] == 2  # the two prompts' prefill: 70 tokens
    assert threads[-1] == 1  # the last decodes: 2 tokens a step, under 8 x the built-in model's 5.5M weights
    assert adaptive == plain and len(plain) == 12
