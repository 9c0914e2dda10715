"""Oracle: the mean-pooled embedding equals transformers' forward on the same model (mean of
`last_hidden_state`, L2-normalised), and the engine's paged KV cache is left untouched."""

from __future__ import annotations

import torch
import transformers

from seedance.models.loader import BUILTIN_MODEL_DIR, load_model
from seedance.models.pooling import mean_pooled_embedding, mean_pooled_embeddings
from seedance.models.tokenizer import TextTokenizer

TEXTS = ["In the beginning God created the heaven and the earth.", "Amen", "And the LORD spake unto Moses, saying"]


def test_mean_pooled_embedding_matches_transformers_last_hidden_state():
    ours = load_model(BUILTIN_MODEL_DIR, "cpu", "float32").model
    hf = transformers.AutoModel.from_pretrained(BUILTIN_MODEL_DIR, dtype=torch.float32).eval()
    tokenizer = TextTokenizer.from_dir(BUILTIN_MODEL_DIR)
    vectors = []
    for text in TEXTS:
        ids = tokenizer.encode(text)
        with torch.inference_mode():
            hidden = hf(torch.tensor([ids])).last_hidden_state[0]
        want = torch.nn.functional.normalize(hidden.mean(0), dim=0)
        got = mean_pooled_embedding(ours, ids)
        assert got.shape == (hf.config.hidden_size,) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        assert abs(float(got.norm()) - 1.0) < 1e-5
        vectors.append(got)
    # Different texts give different vectors (not a constant), and the same text the same vector.
    assert float(vectors[0] @ vectors[1]) < 0.999
    torch.testing.assert_close(mean_pooled_embedding(ours, tokenizer.encode(TEXTS[0])), vectors[0])


def test_a_batch_in_one_forward_equals_each_alone():
    ours = load_model(BUILTIN_MODEL_DIR, "cpu", "float32").model
    tokenizer = TextTokenizer.from_dir(BUILTIN_MODEL_DIR)
    inputs = [tokenizer.encode(t) for t in TEXTS] + [[5]]
    together = mean_pooled_embeddings(ours, inputs)
    for ids, vector in zip(inputs, together, strict=True):
        torch.testing.assert_close(vector, mean_pooled_embedding(ours, ids), atol=1e-5, rtol=1e-4)


def test_groups_keep_order_and_the_budget():
    from seedance.engine.embedding import groups

    inputs = [[1] * 100, [2] * 100, [3] * 300, [4] * 10, [5] * 50]
    got = groups(inputs, 256)
    assert [[len(i) for i in g] for g in got] == [[100, 100], [300], [10, 50]]
    assert [i for g in got for i in g] == inputs
