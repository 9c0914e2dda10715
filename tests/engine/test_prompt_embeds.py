"""Prompt embeddings on the real built-in model. The oracle: the model's own embedding-table rows for some token
ids must give exactly the output and logprobs those ids give, through chunked prefill, the prefix cache and
preemption alike."""

from __future__ import annotations

import pytest
import pytest_asyncio
import torch

from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.config import EngineConfig
from seedance.engine.errors import InvalidRequest
from seedance.engine.prompt_embeds import assemble_prompt, check_rows
from seedance.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.asyncio(loop_scope="module")
PROMPT = "And God said unto Moses, I AM THAT I AM: and he said, Thus shalt thou say"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine():
    # A 16-token step budget and 8-token blocks: every prompt here is prefilled in several chunks and spans blocks.
    eng = await AsyncEngine.create(EngineConfig(dtype="float32", num_kv_blocks=128, block_size=8,
                                                max_num_batched_tokens=16, max_num_seqs=4, warmup=False))
    yield eng
    await eng.close()


def table_rows(engine: AsyncEngine, ids: list[int]) -> torch.Tensor:
    return engine.engine.runner.model.embed_tokens.weight[ids].detach().clone()


def params(n: int = 12) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=2)


async def run(engine: AsyncEngine, **request):
    events = [e async for e in engine.generate(GenerateRequest(params=request.pop("params", params()), **request))]
    return [e.token_id for e in events if e.token_id >= 0], [e.logprob for e in events if e.token_id >= 0], events


async def test_embedding_rows_equal_their_token_ids(engine):
    ids = engine.tokenizer.encode(PROMPT)
    ref_tokens, ref_logprobs, _ = await run(engine, prompt_token_ids=ids)
    # All rows, and mixed: ids, then rows straddling block and chunk edges, then ids again.
    for parts in ([table_rows(engine, ids)], [ids[:5], table_rows(engine, ids[5:17]), ids[17:]]):
        tokens, logprobs, events = await run(engine, prompt_parts=parts)
        assert tokens == ref_tokens
        assert logprobs == ref_logprobs
        assert events[-1].num_prompt_tokens == len(ids)


async def test_text_parts_and_rows(engine):
    # Not a prefix of PROMPT: no block of the reference comes from the prefix cache, so both runs compute every
    # token in the same chunks (a cached prefix moves the chunk edges, and float GEMMs of other row counts round
    # differently in the last bits: oneDNN's AMX kernels do).
    head, tail = "Thus shalt thou say", " unto the children of Israel, I AM hath sent me unto you"
    head_ids, tail_ids = engine.tokenizer.encode(head), engine.tokenizer.encode(tail)
    ref_tokens, ref_logprobs, ref_events = await run(engine, prompt_token_ids=head_ids + tail_ids)
    tokens, logprobs, _ = await run(engine, prompt_parts=[head, table_rows(engine, tail_ids)])
    assert ref_events[-1].num_cached_tokens == 0
    assert (tokens, logprobs) == (ref_tokens, ref_logprobs)


async def test_prefix_cache_keys_embeddings_by_their_bytes(engine):
    ids = engine.tokenizer.encode(PROMPT)
    rows = table_rows(engine, ids[:24])
    first = (await run(engine, prompt_parts=[rows, ids[24:]]))[2][-1]
    again = (await run(engine, prompt_parts=[rows.clone(), ids[24:]]))[2][-1]
    assert again.num_cached_tokens >= 16  # the same bytes: the KV of its full blocks is reused
    other = rows.clone()
    other[0] += 1e-3  # one value differs: a different embedding, nothing of it may be reused
    changed = (await run(engine, prompt_parts=[other, ids[24:]]))[2][-1]
    assert changed.num_cached_tokens == 0
    assert first.num_prompt_tokens == again.num_prompt_tokens == changed.num_prompt_tokens == len(ids)


async def test_bf16_rows_are_accepted(engine):
    ids = engine.tokenizer.encode(PROMPT)[:10]
    tokens, _, events = await run(engine, prompt_parts=[table_rows(engine, ids).bfloat16()])
    assert len(tokens) == 12 and events[-1].finish_reason == "length"


@pytest.mark.parametrize(
    "part",
    [
        torch.zeros(4, 255),  # wrong width
        torch.zeros(0, 256),  # no rows
        torch.zeros(2, 3, 256),  # a batch of more than one
        torch.zeros(4, 256, dtype=torch.float64),
        torch.zeros(4, 256, dtype=torch.int32),
        torch.tensor([[float("nan")] * 256]),
        torch.tensor([[float("inf")] * 256]).bfloat16(),
    ],
)
async def test_bad_rows_are_invalid_requests(engine, part):
    with pytest.raises(InvalidRequest):
        await engine.submit(GenerateRequest(prompt_parts=[[1, 2], part], params=params()))


async def test_forged_content_ids_are_refused(engine):
    ids, embeds = assemble_prompt([check_rows(torch.zeros(3, 256), 256), [5, 6]])
    with pytest.raises(InvalidRequest):  # negative ids without the rows they stand for
        await engine.submit(GenerateRequest(prompt_token_ids=ids, params=params()))
    stream = await engine.submit(GenerateRequest(prompt_token_ids=ids, prompt_embeds=embeds, params=params(2)))
    assert len([e async for e in stream]) == 2


async def test_preemption_recomputes_embedding_prompts():
    """A pool too small for both requests: one is preempted and recomputed, its rows spliced in again."""
    eng = await AsyncEngine.create(EngineConfig(dtype="float32", num_kv_blocks=10, block_size=8,
                                                max_num_batched_tokens=32, max_num_seqs=4, warmup=False))
    try:
        ids = eng.tokenizer.encode(PROMPT)[:20]
        ref_tokens, ref_logprobs, _ = await run(eng, prompt_token_ids=ids, params=params(40))
        a = await eng.submit(GenerateRequest(prompt_parts=[table_rows(eng, ids)], params=params(40)))
        b = await eng.submit(GenerateRequest(prompt_parts=[ids[:3], table_rows(eng, ids[3:])], params=params(40)))
        outs = [[e async for e in s] for s in (a, b)]
        assert eng.stats().num_preemptions > 0
        for events in outs:
            assert [e.token_id for e in events if e.token_id >= 0] == ref_tokens
            # Batched with another sequence the matmuls differ in shape: logprobs agree to float rounding.
            assert [e.logprob for e in events if e.token_id >= 0] == pytest.approx(ref_logprobs, abs=1e-4)
    finally:
        await eng.close()
