import math

import pytest
import torch

from seedance.engine.sampler import Sampler, argmax_rows
from seedance.engine.sampling_params import SamplingParams


def logits_for(probs):
    return torch.tensor(probs).log()[None, :]


def test_greedy_is_argmax():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    out = Sampler()(logits, [str(i) for i in range(5)], [SamplingParams(temperature=0)] * 5)
    assert [o.token_id for o in out] == logits.argmax(-1).tolist()


def test_top_k_1_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    s = Sampler(seed=3)
    k1 = s(logits, list("abcd"), [SamplingParams(temperature=1.5, top_k=1)] * 4)
    p0 = s(logits, list("abcd"), [SamplingParams(temperature=1.5, top_p=1e-6)] * 4)
    assert [o.token_id for o in k1] == [o.token_id for o in p0] == logits.argmax(-1).tolist()


def test_top_k_never_samples_outside_the_top_k():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(2))
    allowed = set(logits[0].topk(5).indices.tolist())
    s = Sampler(seed=0)
    for _ in range(200):
        assert s(logits, ["a"], [SamplingParams(temperature=2.0, top_k=5)])[0].token_id in allowed


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = logits_for([0.5, 0.3, 0.15, 0.05])
    s = Sampler(seed=0)
    seen = {s(logits, ["a"], [SamplingParams(top_p=0.8)])[0].token_id for _ in range(300)}
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.8; tokens 2 and 3 are cut


def test_sampling_follows_the_distribution():
    probs = [0.6, 0.3, 0.1]
    s = Sampler(seed=123)
    n = 4000
    rows = logits_for(probs).repeat(n, 1)
    out = s(rows, [str(i) for i in range(n)], [SamplingParams(temperature=1.0)] * n)
    counts = [sum(o.token_id == t for o in out) / n for t in range(3)]
    for got, want in zip(counts, probs, strict=True):
        assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / n)


def test_seeded_request_is_independent_of_its_batch():
    logits = torch.randn(6, 64, generator=torch.Generator().manual_seed(4))
    seeded = SamplingParams(temperature=1.0, seed=42)
    alone, batched = Sampler(seed=1), Sampler(seed=99)
    alone_seq = [alone(logits[:1], ["x"], [seeded])[0].token_id for _ in range(20)]
    others = [SamplingParams(temperature=1.0)] * 5
    batched_seq = [batched(logits, list("xbcdef"), [seeded, *others])[0].token_id for _ in range(20)]
    assert alone_seq == batched_seq
    assert len(set(alone_seq)) > 1  # it really samples


def test_logprobs_of_chosen_and_top_alternatives():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(5))
    out = Sampler()(logits, ["a", "b"], [SamplingParams(temperature=0, logprobs=3), SamplingParams(temperature=0)])
    ref = logits.log_softmax(-1)
    assert out[0].logprob == pytest.approx(ref[0].max().item(), abs=1e-6)
    top = ref[0].topk(3)
    assert [t for t, _ in out[0].top_logprobs] == top.indices.tolist()
    assert [v for _, v in out[0].top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert out[1].logprob is None and out[1].top_logprobs is None


def test_argmax_rows_is_torch_argmax_ties_and_nan_included():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5000, generator=gen)
    x[1, 10] = x[1, 4000] = x[1].max() + 1  # a tie: the first one
    x[2, 77] = float("nan")  # NaN wins, as in torch
    x[3] = float("-inf")  # all -inf: index 0
    x[4, 4999] = float("inf")
    strided = x.T.contiguous().T  # a non-contiguous view of the same values
    for t in (x, strided, x[:, ::2]):
        got = argmax_rows(t)
        assert got.dtype == torch.int64 and torch.equal(got, t.argmax(dim=-1))


def test_top_p_counts_the_share_left_after_top_k():
    # top_k 2 leaves 0.4 and 0.3, i.e. 4/7 and 3/7 of what is left: 4/7 alone reaches top_p 0.5, so token 1 is cut
    # too (on the unrenormalized 0.4 it would stay)
    logits = logits_for([0.4, 0.3, 0.2, 0.1])
    s = Sampler(seed=0)
    seen = {s(logits, ["a"], [SamplingParams(top_k=2, top_p=0.5)])[0].token_id for _ in range(200)}
    assert seen == {0}
    seen = {s(logits, ["a"], [SamplingParams(top_k=3, top_p=0.75)])[0].token_id for _ in range(300)}
    assert seen == {0, 1}  # 4/9 + 3/9 of the 0.9 left reaches 0.75 (0.4 + 0.3 of the whole would not)


def test_cuts_apply_to_the_rows_that_ask_only():
    logits = torch.randn(1, 40, generator=torch.Generator().manual_seed(6)).repeat(4, 1)
    params = [SamplingParams(temperature=3.0, top_k=1), SamplingParams(temperature=3.0),
              SamplingParams(temperature=3.0, top_p=1e-6), SamplingParams(temperature=0)]
    s = Sampler(seed=7)
    runs = [[o.token_id for o in s(logits, list("abcd"), params)] for _ in range(100)]
    best = logits[0].argmax().item()
    assert {r[0] for r in runs} == {r[2] for r in runs} == {r[3] for r in runs} == {best}
    assert len({r[1] for r in runs}) > 5  # the free row samples the whole vocabulary


def test_a_token_with_no_probability_is_never_drawn():
    logits = torch.full((3, 1000), float("-inf"))
    logits[:, 0] = 0.0
    logits[:, 500] = 0.0  # two allowed tokens (a grammar's mask, a ban: -inf everywhere else, the last included)
    s = Sampler(seed=8)
    params = [SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, seed=5),
              SamplingParams(temperature=1.0, top_p=0.9, top_k=5)]
    seen = {o.token_id for _ in range(300) for o in s(logits, list("abc"), params)}
    assert seen == {0, 500}
