"""Fp16Linear (fbgemm's fp16 GEMM) against the float matmul on its own fp16 weight, and `--quantize fp16` on the
built-in model: every projection and the tied head fp16, logits within 1e-2 of float32's, greedy the same."""

from __future__ import annotations

import pytest
import torch

from seedance.models import int8_linear
from seedance.models.fp16_linear import Fp16Linear
from seedance.models.loader import load_model
from tests.models.test_gguf import Logits

pytestmark = pytest.mark.skipif(not int8_linear.available(), reason="this torch has no fbgemm quantized ops")


@pytest.mark.parametrize("rows", [1, 8, 300])
def test_equals_the_float_matmul_on_its_fp16_weight(rows):
    gen = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(960, 576, generator=gen) * 0.05, torch.randn(960, generator=gen)
    layer = Fp16Linear(weight, bias)
    assert torch.equal(layer.dequantize(), weight.half().float())  # the packed weight is the fp16 rounding
    x = torch.randn(rows, 576, generator=gen)
    with torch.inference_mode():
        got = layer(x)
    torch.testing.assert_close(got, x @ weight.half().float().T + bias, atol=1e-4, rtol=1e-4)
    assert (got - (x @ weight.T + bias)).norm() < 1e-3 * got.norm()
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_quantize_fp16_on_a_model():
    expected_model = load_model(None)
    ids = expected_model.tokenizer.encode("And God said unto Moses, Let my people go")
    expected = Logits(expected_model).of(ids)
    loaded = load_model(None, quantize="fp16")
    net = loaded.model
    assert isinstance(net.layers[0].mlp.down_proj, Fp16Linear) and isinstance(net.lm_head, Fp16Linear)
    assert isinstance(net.embed_tokens, torch.nn.Embedding)  # lookups stay float
    got = Logits(loaded).of(ids)
    assert (got - expected).abs().max() < 1e-2  # logits span about +-15
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_quantize_fp16_on_a_gguf(tmp_path):
    """A Q8_0 GGUF under `fp16`: dequantized, then fp16; logits within 1e-2 of its float dequantization."""
    from gguf import GGMLQuantizationType as T

    from seedance.models.loader import BUILTIN_MODEL_DIR
    from tests.models.gguf_files import write_gguf

    path = write_gguf(BUILTIN_MODEL_DIR, tmp_path / "tiny-q8_0.gguf", T.Q8_0)
    loaded = load_model(path, quantize="fp16")
    assert isinstance(loaded.model.layers[0].self_attn.qkv_proj, Fp16Linear)
    assert isinstance(loaded.model.lm_head, Fp16Linear)
    ids = loaded.tokenizer.encode("In the beginning God created")
    diff = Logits(loaded).of(ids) - Logits(load_model(path, quantize="none")).of(ids)
    assert diff.abs().max() < 1e-2
