"""The output processor's direct path (a request without stop strings) gives exactly the events of the hold-back
path, for random tokens of the real tokenizer (multi-byte characters split over tokens included), stop token ids,
EOS, max_tokens, the context length and a grammar's end."""

from __future__ import annotations

import random

import pytest

from seedance.engine.output_processor import RequestOutputState, SampledToken
from seedance.engine.sampling_params import SamplingParams
from seedance.engine.sequence import Sequence
from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.models.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_dir(BUILTIN_MODEL_DIR)


def _events(tokenizer, prompt, tokens, params, max_model_len, direct, grammar_end):
    seq = Sequence("r", prompt, params)
    state = RequestOutputState(seq, tokenizer.backend, tokenizer.eos_token_ids, max_model_len)
    if not direct:
        state.direct = False  # the general path, which holds text back for stop strings (none here)
    events = []
    for i, token in enumerate(tokens):
        seq.token_ids.append(token)
        events += state.process(SampledToken(token, logprob=-0.5 * i, grammar_done=i == grammar_end))
        if events and events[-1].finished:
            break
    return events


@pytest.mark.parametrize("seed", range(40))
def test_direct_path_matches_the_hold_back_path(tokenizer, seed):
    rng = random.Random(seed)
    vocab = tokenizer.vocab_size
    text = rng.choice(["naïve café ", "日本語のテキスト ", "emoji 🎉🎈 ", "plain words here "]) * 3
    pool = tokenizer.encode(text) + [rng.randrange(vocab) for _ in range(8)] + sorted(tokenizer.eos_token_ids)
    prompt = tokenizer.encode(rng.choice(["Hello", "Tell me", "é"])) or [1]
    tokens = [rng.choice(pool) for _ in range(rng.randrange(1, 40))]
    params = SamplingParams(max_tokens=rng.randrange(1, 45), ignore_eos=rng.random() < 0.5,
                            stop_token_ids=rng.sample(pool, k=rng.randrange(0, 2)))
    max_model_len = len(prompt) + rng.randrange(1, 60)
    grammar_end = rng.choice([-1, rng.randrange(40)])
    fast = _events(tokenizer, prompt, tokens, params, max_model_len, True, grammar_end)
    slow = _events(tokenizer, prompt, tokens, params, max_model_len, False, grammar_end)
    assert fast == slow
    assert fast and all(not e.finished for e in fast[:-1])


def test_stop_strings_take_the_hold_back_path(tokenizer):
    seq = Sequence("r", [1, 2], SamplingParams(stop=["light"]))
    assert not RequestOutputState(seq, tokenizer.backend, tokenizer.eos_token_ids, 100).direct
    seq = Sequence("r", [1, 2], SamplingParams())
    assert RequestOutputState(seq, tokenizer.backend, tokenizer.eos_token_ids, 100).direct
