"""Penalties, logit_bias and grammar masks in the batched sampler: against transformers' own logits processors
where it has one (repetition), against OpenAI's formula otherwise, and per row, so a constrained request and a free
one share a step without touching each other."""

import json
from collections import Counter

import jsonschema
import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from seedance.engine.guided import GuideCompiler
from seedance.engine.sampler import Sampler
from seedance.engine.sampling_params import GuidedDecoding, SamplingParams
from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.models.tokenizer import TextTokenizer

VOCAB = 64


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 4


def test_repetition_penalty_matches_transformers():
    logits = _logits(2)
    history = [[3, 5, 5, 9, 40], [1, 2, 3]]
    params = [SamplingParams(repetition_penalty=1.3), SamplingParams(repetition_penalty=0.7)]
    got = Sampler().process_logits(logits.clone(), params, history, [2, 1])
    for i, p in enumerate(params):
        oracle = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)
        want = oracle(torch.tensor([history[i]]), logits[i:i + 1].clone())[0]
        torch.testing.assert_close(got[i], want)


def test_frequency_and_presence_follow_openais_formula():
    """logit[j] -= c[j] * frequency + (c[j] > 0) * presence, c counting the generated tokens only."""
    logits = _logits(1, seed=1)
    prompt, output = [7, 7, 8], [8, 8, 8, 11, 30, 11]
    p = SamplingParams(frequency_penalty=0.5, presence_penalty=1.25)
    got = Sampler().process_logits(logits.clone(), [p], [prompt + output], [len(prompt)])[0]
    want = logits[0].clone()
    for token, count in Counter(output).items():
        want[token] -= count * 0.5 + 1.25
    torch.testing.assert_close(got, want)
    assert got[7] == logits[0, 7]  # in the prompt only: untouched


def test_logit_bias_adds_to_its_tokens_and_can_force_or_ban():
    logits = _logits(2, seed=2)
    best = int(logits[0].argmax())
    params = [SamplingParams(temperature=0, logit_bias={best: -100.0}), SamplingParams(temperature=0,
                                                                                     logit_bias={13: 100.0})]
    out = Sampler()(logits, ["a", "b"], params)
    assert out[0].token_id != best and out[1].token_id == 13
    processed = Sampler().process_logits(logits.clone(), params)
    torch.testing.assert_close(processed[0, best], logits[0, best] - 100)
    # logprobs stay the model's own, before the bias
    lp = Sampler()(logits, ["b"], [SamplingParams(temperature=0, logprobs=0, logit_bias={13: 100.0})])[0]
    assert lp.logprob == pytest.approx(float(logits[0].log_softmax(-1)[13]))


def test_rows_without_processors_are_untouched():
    logits = _logits(3, seed=3)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0, frequency_penalty=2.0),
              SamplingParams(temperature=0)]
    history = [[1, 2], [int(logits[1].argmax())] * 3, [3]]
    out = Sampler()(logits, list("abc"), params, history, [0, 0, 0])
    assert out[0].token_id == int(logits[0].argmax()) and out[2].token_id == int(logits[2].argmax())


@pytest.fixture(scope="module")
def guides() -> GuideCompiler:
    tokenizer = TextTokenizer.from_dir(BUILTIN_MODEL_DIR)
    return GuideCompiler(tokenizer, tokenizer.vocab_size)


def test_grammar_rows_validate_while_a_free_row_samples_freely(guides):
    """One constrained and one free row per step, random logits: the constrained row's text validates against
    its schema and ends by itself; the free row picks the plain argmax every step."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "ok": {"type": "boolean"}}, "required": ["n", "ok"],
              "additionalProperties": False}
    spec = GuidedDecoding("json_schema", json.dumps(schema))
    sampler = Sampler(seed=1, guides=guides)
    vocab = guides.vocab_size
    params = [SamplingParams(temperature=1.0, guided=spec), SamplingParams(temperature=0)]
    tokens: list[int] = []
    for step in range(60):
        logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(step))
        out = sampler(logits, ["g", "free"], params)
        assert out[1].token_id == int(logits[1].argmax()) and not out[1].grammar_done
        tokens.append(out[0].token_id)
        if out[0].grammar_done:
            break
    assert out[0].grammar_done
    jsonschema.validate(json.loads(guides.tokenizer.decode(tokens)), schema)
    sampler.forget("g")
    assert "g" not in sampler._matchers


def test_compiles_are_cached_and_bounded(guides):
    spec = GuidedDecoding("regex", "[a-z]+")
    assert guides.compile(spec) is guides.compile(spec)
    small = GuideCompiler(guides.tokenizer, guides.vocab_size, max_spec_bytes=10, cache_size=2)
    small._ll = guides._ll
    from seedance.engine.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="limit is 10"):
        small.compile(GuidedDecoding("regex", "x" * 11))
    for r in ("a", "b", "c"):
        small.compile(GuidedDecoding("regex", r))
    assert len(small._cache) == 2
    with pytest.raises(InvalidRequest):
        small.compile(GuidedDecoding("grammar", "start: nosuchrule"))
