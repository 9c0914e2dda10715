"""The engine end to end on the real built-in model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
import transformers

from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.config import EngineConfig
from seedance.engine.errors import EngineOverloaded, InvalidRequest
from seedance.engine.events import FinishReason
from seedance.engine.sampling_params import SamplingParams
from seedance.engine.sequence import SequenceStatus
from seedance.models.loader import BUILTIN_MODEL_DIR

PROMPT = "And God said unto Moses,"


@pytest.fixture
async def engine():
    eng = await AsyncEngine.create(EngineConfig(dtype="float32", num_kv_blocks=256, max_num_batched_tokens=128))
    yield eng
    await eng.close()


async def collect(engine: AsyncEngine, **kwargs):
    prompt = kwargs.pop("prompt", PROMPT)
    priority = kwargs.pop("priority", 0)
    events = [
        e
        async for e in engine.generate(
            GenerateRequest(prompt=prompt, params=SamplingParams(**kwargs), priority=priority)
        )
    ]
    return events


def text_of(events):
    return "".join(e.text_delta for e in events)


def tokens_of(events):
    return [e.token_id for e in events if e.token_id >= 0]


async def recomputed_tokens(prompt_ids: list[int], params: SamplingParams) -> list[int]:
    """What a fresh engine without prefix caching generates for the whole history: the oracle for a turn that
    continued from pinned KV."""
    fresh = await AsyncEngine.create(EngineConfig(dtype="float32", num_kv_blocks=256, enable_prefix_caching=False))
    try:
        return tokens_of([e async for e in fresh.generate(GenerateRequest(prompt_token_ids=prompt_ids, params=params))])
    finally:
        await fresh.close()


async def test_greedy_output_equals_transformers_generate(engine):
    events = await collect(engine, max_tokens=24, temperature=0, ignore_eos=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(BUILTIN_MODEL_DIR, dtype=torch.float32).eval()
    ids = engine.tokenizer.encode(PROMPT)
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :].tolist()
    assert tokens_of(events)[: len(ref)] == ref
    assert text_of(events) == engine.tokenizer.decode(tokens_of(events))
    assert [e.seq for e in events] == list(range(24))
    assert events[-1].finish_reason is FinishReason.LENGTH and sum(e.finished for e in events) == 1


async def test_seed_makes_sampling_reproducible_alone_or_batched(engine):
    params = dict(max_tokens=20, temperature=1.0, top_p=0.95, seed=7, ignore_eos=True)
    alone = tokens_of(await collect(engine, **params))
    again = tokens_of(await collect(engine, **params))
    crowd = [collect(engine, prompt=f"Verse {i}", max_tokens=20, temperature=1.0) for i in range(7)]
    batched, *_ = await asyncio.gather(collect(engine, **params), *crowd)
    other_seed = tokens_of(await collect(engine, **{**params, "seed": 8}))
    assert alone == again == tokens_of(batched)
    assert other_seed != alone


async def test_batched_greedy_streams_equal_their_solo_runs(engine):
    prompts = [f"{PROMPT} {word}" for word in ("Go", "Speak", "Behold", "Take", "Arise", "Hear")]
    solo = [tokens_of(await collect(engine, prompt=p, max_tokens=16, temperature=0, ignore_eos=True)) for p in prompts]
    together = await asyncio.gather(
        *[collect(engine, prompt=p, max_tokens=16, temperature=0, ignore_eos=True) for p in prompts]
    )
    assert [tokens_of(t) for t in together] == solo


async def test_stop_string_across_token_boundaries_is_not_leaked(engine):
    full = await collect(engine, max_tokens=30, temperature=0, ignore_eos=True)
    # Choose a stop string that starts inside one token's text and ends inside the next one's,
    # and whose first occurrence in the text is there.
    pieces = [e.text_delta for e in full]
    full_text = text_of(full)
    for k in range(2, len(pieces) - 1):
        a, b = min(2, len(pieces[k]) - 1), min(2, len(pieces[k + 1]))
        if a < 1 or b < 1:
            continue
        stop = pieces[k][-a:] + pieces[k + 1][:b]
        before = "".join(pieces[:k]) + pieces[k][:-a]
        if full_text.find(stop) == len(before):
            break
    else:
        pytest.fail(f"no boundary-straddling stop string found in {pieces!r}")
    stopped = await collect(engine, max_tokens=30, temperature=0, ignore_eos=True, stop=[stop])
    assert text_of(stopped) == before
    assert stopped[-1].finish_reason is FinishReason.STOP and stopped[-1].stop_reason == stop
    assert stop not in text_of(stopped)


async def test_eos_ends_with_stop_and_no_special_text(engine):
    eos = next(iter(engine.tokenizer.eos_token_ids))
    events = await collect(
        engine,
        max_tokens=5,
        temperature=0,
        stop_token_ids=[tokens_of(await collect(engine, max_tokens=3, temperature=0))[2]],
    )
    assert events[-1].finish_reason is FinishReason.STOP and len(events) <= 3
    assert "<|endoftext|>" not in text_of(events) and eos >= 0


async def test_cancel_mid_stream_frees_kv_blocks(engine):
    total = engine.stats().num_kv_blocks
    params = SamplingParams(max_tokens=500, ignore_eos=True)
    stream = await engine.submit(GenerateRequest(prompt=PROMPT * 4, params=params))
    seen = []
    async for event in stream:
        seen.append(event)
        if len(seen) == 5:
            stream.cancel()
    assert seen[-1].finish_reason is FinishReason.CANCELLED
    assert len(seen) < 50
    await asyncio.sleep(0.05)
    assert engine.stats().num_free_blocks == total and engine.stats().num_running == 0


async def test_leaving_the_iterator_cancels(engine):
    total = engine.stats().num_kv_blocks
    async for event in engine.generate(
        GenerateRequest(prompt=PROMPT, params=SamplingParams(max_tokens=500, ignore_eos=True))
    ):
        if event.seq == 3:
            break
    for _ in range(50):
        await asyncio.sleep(0.01)
        if engine.stats().num_free_blocks == total:
            break
    assert engine.stats().num_free_blocks == total and engine.num_open_requests == 0


async def test_repeated_prompt_hits_the_prefix_cache(engine):
    prompt = " ".join(["In the beginning God created the heaven and the earth."] * 6)
    first = await collect(engine, prompt=prompt, max_tokens=4, temperature=0)
    second = await collect(engine, prompt=prompt, max_tokens=4, temperature=0)
    n_prompt = first[0].num_prompt_tokens
    assert first[0].num_cached_tokens == 0
    assert second[0].num_cached_tokens >= n_prompt - engine.config.block_size
    assert tokens_of(first) == tokens_of(second)
    stats = engine.stats()
    assert stats.prefix_cache_hit_tokens >= second[0].num_cached_tokens


async def test_pause_stops_compute_and_resume_continues_identically(engine):
    reference = tokens_of(await collect(engine, max_tokens=40, temperature=0, ignore_eos=True))
    stream = await engine.submit(
        GenerateRequest(prompt=PROMPT, params=SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    )
    got = []
    async for event in stream:
        got.append(event)
        if len(got) == 10:
            engine.pause(stream.request_id)
            other = await collect(engine, prompt="Blessed are", max_tokens=20, temperature=0, ignore_eos=True)
            assert len(other) == 20  # the engine kept serving others
            assert stream.queue.qsize() <= 1  # at most the token already in flight when paused
            assert engine.engine.status_of(stream.request_id) is SequenceStatus.PAUSED
            assert engine.engine.requests[stream.request_id].seq.block_table  # KV kept
            engine.resume(stream.request_id)
    assert tokens_of(got) == reference


async def test_reprioritise_while_running(engine):
    stream = await engine.submit(GenerateRequest(prompt=PROMPT, params=SamplingParams(max_tokens=30, ignore_eos=True)))
    async for event in stream:
        if event.seq == 2:
            engine.set_priority(stream.request_id, -5)
            await asyncio.sleep(0.02)
            assert engine.engine.requests[stream.request_id].seq.priority == -5
    assert event.finish_reason is FinishReason.LENGTH


async def test_a_new_request_joins_the_running_batch():
    eng = await AsyncEngine.create(EngineConfig(num_kv_blocks=256))
    try:
        long = await eng.submit(GenerateRequest(prompt=PROMPT, params=SamplingParams(max_tokens=200, ignore_eos=True)))
        order = []

        async def consume(stream, name):
            async for event in stream:
                order.append((name, event.seq))

        long_task = asyncio.create_task(consume(long, "long"))
        while not any(n == "long" and s >= 5 for n, s in order):
            await asyncio.sleep(0.005)
        short = await eng.submit(GenerateRequest(prompt="Amen", params=SamplingParams(max_tokens=5, ignore_eos=True)))
        await consume(short, "short")
        short_done_at = len(order)
        await long_task
        # The short request finished while the long one was still streaming: it joined mid-flight.
        assert any(n == "long" for n, _ in order[short_done_at:])
    finally:
        await eng.close()


async def test_admission_limits_reject_with_clear_errors():
    # One running sequence at a time (the engine thread starts steps on its own): "dup" (100 tokens) runs while
    # the next one waits and fills the queue.
    eng = await AsyncEngine.create(EngineConfig(num_kv_blocks=64, max_waiting=1, max_tokens_limit=100,
                                                max_num_seqs=1))
    try:
        running = await eng.submit(GenerateRequest(prompt_token_ids=[5], request_id="dup",
                                                   params=SamplingParams(max_tokens=100, ignore_eos=True)))
        await running.queue.get()  # its first token: it is running, no longer waiting
        with pytest.raises(InvalidRequest, match="duplicate"):
            await eng.submit(GenerateRequest(prompt_token_ids=[5], request_id="dup"))
        await eng.submit(GenerateRequest(prompt_token_ids=[6], params=SamplingParams(max_tokens=5)))  # fills the queue
        with pytest.raises(EngineOverloaded, match="waiting queue is full"):
            await eng.submit(GenerateRequest(prompt_token_ids=[7], params=SamplingParams(max_tokens=5)))
        with pytest.raises(InvalidRequest, match="exactly one"):
            await eng.submit(GenerateRequest(prompt="a", messages=[{"role": "user", "content": "b"}]))
        with pytest.raises(InvalidRequest, match="max_tokens"):
            await eng.submit(GenerateRequest(prompt="a", params=SamplingParams(max_tokens=101)))
        with pytest.raises(InvalidRequest, match="context"):
            await eng.submit(GenerateRequest(prompt_token_ids=[5] * 5000))
        with pytest.raises(InvalidRequest, match="vocabulary"):
            await eng.submit(GenerateRequest(prompt_token_ids=[10**6]))
        with pytest.raises(InvalidRequest, match="KV cache"):
            await eng.submit(GenerateRequest(prompt_token_ids=[5] * 1500))  # 64 blocks hold 1024 tokens
    finally:
        await eng.close()


async def test_preemption_under_kv_pressure_keeps_outputs_exact():
    # 12 blocks of 16 tokens cannot hold four 60-token streams at once: the engine preempts and recomputes.
    eng = await AsyncEngine.create(EngineConfig(dtype="float32", num_kv_blocks=12, max_num_batched_tokens=64))
    roomy = await AsyncEngine.create(EngineConfig(dtype="float32", num_kv_blocks=256))
    try:
        prompts = [f"{PROMPT} {w}" for w in ("Go", "Speak", "Behold", "Arise")]
        kwargs = dict(max_tokens=50, temperature=0, ignore_eos=True)
        tight = await asyncio.gather(*[collect(eng, prompt=p, **kwargs) for p in prompts])
        ref = await asyncio.gather(*[collect(roomy, prompt=p, **kwargs) for p in prompts])
        assert eng.stats().num_preemptions > 0
        assert [tokens_of(t) for t in tight] == [tokens_of(r) for r in ref]
    finally:
        await eng.close()
        await roomy.close()


async def test_logprobs_match_the_model_distribution(engine):
    events = await collect(engine, max_tokens=3, temperature=0, logprobs=2, ignore_eos=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(BUILTIN_MODEL_DIR, dtype=torch.float32).eval()
    ids = engine.tokenizer.encode(PROMPT)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    assert events[0].logprob == pytest.approx(ref.max().item(), abs=1e-4)
    assert events[0].top_logprobs[0][0] == events[0].token_id
    assert len(events[0].top_logprobs) == 2


async def test_chat_messages_use_the_chat_template(engine):
    events = [
        e
        async for e in engine.generate(
            GenerateRequest(
                messages=[{"role": "user", "content": "Who made the heaven?"}],
                params=SamplingParams(max_tokens=4),
            )
        )
    ]
    expected = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Who made the heaven?"}])
    assert events[0].num_prompt_tokens == len(expected) > 0


async def test_session_pin_reuses_prior_turns_kv_across_a_three_turn_chat(engine):
    tok = engine.tokenizer
    history: list[int] = []
    reuse = []
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    for turn, message in enumerate(["And God said unto Moses,", " And Moses answered,", " Then said the LORD,"]):
        prompt = history + tok.encode(message)
        events = [e async for e in engine.generate(GenerateRequest(
            prompt_token_ids=prompt, params=params, pin_key="chat-1"))]
        if turn:
            reuse.append(events[0].num_cached_tokens / len(history))
        history = prompt + tokens_of(events)
        # Other traffic that would evict unpinned blocks from the LRU cache meanwhile.
        await asyncio.gather(*[collect(engine, prompt=f"Verse {i} " * 30, max_tokens=30) for i in range(6)])
    assert all(r >= 0.8 for r in reuse), reuse
    assert engine.stats().num_pinned_blocks > 0
    # Continuing from the pinned KV gives exactly what recomputing the whole history gives.
    assert await recomputed_tokens(prompt, params) == tokens_of(events)
    engine.unpin("chat-1")
    await asyncio.sleep(0.05)
    assert engine.stats().num_pinned_blocks == 0


@pytest.mark.parametrize("prompt, stop", [
    ("And the LORD spake unto Moses, saying, Speak unto all the", "congregation"),  # begins inside a token
    ("And the LORD spake unto Moses, saying, Speak unto all the", " children of"),  # at token boundaries
    ("And the LORD spake unto Moses, saying, Speak unto all the", "ren of Isr"),  # inside, across three
])
async def test_stop_string_tokens_do_not_leak_into_token_ids(engine, prompt, stop):
    full = await collect(engine, prompt=prompt, max_tokens=30, temperature=0, ignore_eos=True)
    full_text = text_of(full)
    assert stop in full_text  # the greedy continuation reaches it
    stopped = await collect(engine, prompt=prompt, max_tokens=30, temperature=0, ignore_eos=True, stop=[stop])
    text, ids = text_of(stopped), tokens_of(stopped)
    assert text == full_text[: full_text.index(stop)]
    # The ids are the longest run of the output's tokens whose text lies wholly before the stop string.
    assert ids == tokens_of(full)[: len(ids)]
    assert text.startswith(engine.tokenizer.decode(ids))
    assert not text.startswith(engine.tokenizer.decode(tokens_of(full)[: len(ids) + 1]))
    assert stopped[-1].finish_reason is FinishReason.STOP and stopped[-1].stop_reason == stop
    assert sum(e.finished for e in stopped) == 1


async def test_a_prompt_certainly_over_the_limit_is_refused_without_tokenizing():
    eng = await AsyncEngine.create(EngineConfig(num_kv_blocks=64, max_prompt_tokens=100, warmup=False))
    try:
        vocab = eng.tokenizer.backend.get_vocab()
        longest = max(vocab, key=len)  # e.g. "ĠNebuchadrezzar": one token, 15 chars
        word = eng.tokenizer.decode([vocab[longest]])
        assert eng.max_prompt_chars == 100 * len(word)
        # At the bound: tokenized, 100 tokens, admitted. One character more: refused before tokenizing.
        at_bound = await eng.submit(GenerateRequest(prompt=word * 100, params=SamplingParams(max_tokens=1)))
        assert at_bound.num_prompt_tokens == 100
        calls = []
        encode = eng.tokenizer.encode
        eng.tokenizer.encode = lambda text: calls.append(len(text)) or encode(text)
        started = time.perf_counter()
        for request in (GenerateRequest(prompt=word * 100 + "x"),
                        GenerateRequest(prompt="In the beginning " * 60_000),  # 1 MB
                        GenerateRequest(messages=[{"role": "user", "content": "Amen. " * 200_000}])):
            with pytest.raises(InvalidRequest, match="characters"):
                await eng.submit(request)
        assert time.perf_counter() - started < 0.1 and calls == []
    finally:
        await eng.close()


async def test_long_prompts_and_chats_are_tokenized_off_the_event_loop_short_text_prompts_on_it(engine):
    threads = []
    tokenizer = engine.tokenizer
    encode, template = tokenizer.encode, tokenizer.apply_chat_template
    tokenizer.encode = lambda text: threads.append((len(text), threading.current_thread())) or encode(text)
    tokenizer.apply_chat_template = lambda msgs: threads.append((-1, threading.current_thread())) or template(msgs)
    limit = engine.inline_tokenize_chars
    try:
        texts = [f"{PROMPT} {i}" for i in range(3)]  # short: on the loop, cheaper than the thread's hand-off
        texts += [f"{PROMPT} {i} " + "x" * (limit - len(PROMPT) - 2) for i in range(3)]  # one character over
        requests = [GenerateRequest(prompt=t) for t in texts]
        requests.append(GenerateRequest(messages=[{"role": "user", "content": "Amen"}]))
        ids = await asyncio.gather(*[engine.tokenize(r) for r in requests])
    finally:
        tokenizer.encode, tokenizer.apply_chat_template = encode, template
    assert ids[:6] == [encode(t) for t in texts]  # each its own, whatever the interleaving
    assert [len(t) > limit for t in texts] == [False] * 3 + [True] * 3
    main = threading.main_thread()
    assert sorted(n for n, t in threads if t is main) == sorted(len(t) for t in texts[:3])
    off_loop = [n for n, t in threads if t is not main]  # the long prompts and the chat's template
    assert -1 in off_loop and all(len(t) in off_loop for t in texts[3:])


async def test_grammars_compile_off_the_event_loop_once_and_bad_ones_are_refused(engine):
    import json

    from seedance.engine.sampling_params import GuidedDecoding

    guides = engine.engine.guides
    threads = []
    compile_ = guides.compile
    guides.compile = lambda spec: threads.append(threading.current_thread()) or compile_(spec)
    a = {"type": "integer", "minimum": 0, "maximum": 99}
    spec = GuidedDecoding("json_schema", json.dumps({"type": "object", "properties": {"a": a}, "required": ["a"],
                                                     "additionalProperties": False}))
    try:
        texts = []
        for _ in range(2):
            events = await collect(engine, max_tokens=40, temperature=0, guided=spec)
            texts.append("".join(e.text_delta for e in events))
            assert events[-1].finish_reason is FinishReason.STOP
        with pytest.raises(InvalidRequest, match="invalid grammar"):
            await engine.submit(GenerateRequest(prompt=PROMPT, params=SamplingParams(
                guided=GuidedDecoding("grammar", "start: undefined_rule"))))
    finally:
        guides.compile = compile_
    assert json.loads(texts[0]).keys() == {"a"} and texts[0] == texts[1]
    assert threads and threading.main_thread() not in threads
    assert len(guides._cache) == 1  # the second request reused the first one's compile


async def test_a_turn_cut_short_keeps_the_kv_of_what_it_kept(engine):
    """A cancel with keep_tokens (realtime barge-in) pins that prefix; the next turn continues from it and gets
    exactly what recomputing the kept history from scratch gives."""
    tok = engine.tokenizer
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    prompt = tok.encode("And God said unto Moses,")
    stream = await engine.submit(GenerateRequest(prompt_token_ids=prompt, params=params, pin_key="cut-1"))
    taken: list[int] = []
    async for event in stream:
        taken.append(event.token_id)
        if len(taken) == 7:
            break_at = len(prompt) + len(taken) - 2  # kept: less than was computed, inside a partial block
            engine.cancel(stream.request_id, keep_tokens=break_at)
            break
    await asyncio.sleep(0.05)
    kept = (prompt + taken)[:break_at]
    follow = kept + tok.encode(" And Moses answered,")
    short = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    events = [e async for e in engine.generate(GenerateRequest(prompt_token_ids=follow, params=short,
                                                               pin_key="cut-1"))]
    assert break_at % engine.engine.block_manager.block_size  # the cut is inside a block
    assert events[0].num_cached_tokens == break_at  # all of what was kept, the partial block's part included
    assert await recomputed_tokens(follow, short) == tokens_of(events)
    engine.unpin("cut-1")
