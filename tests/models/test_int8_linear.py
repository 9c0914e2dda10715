"""Int8Linear (fbgemm's dynamic int8 GEMM) against float matmuls: on its own int8 weight within the bound its
activation quantization allows, against the original float weight looser, and on the shapes and modes the runner
uses (1 to 512 rows, bias, bfloat16 activations, inference mode, 1 and 2 threads)."""

from __future__ import annotations

import pytest
import torch

from seedance.models import int8_linear
from seedance.models.int8_linear import Int8Linear
from seedance.models.quantized_linear import QuantizedEmbedding, quantize_int8
from seedance.models.quantized_linear import int8_linear as pick_int8

pytestmark = pytest.mark.skipif(not int8_linear.available(), reason="this torch has no fbgemm quantized ops")


def activation_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per output: how far the two 7-bit passes can move x @ w.T. The first pass's step is x's range (with 0)
    over 127; its residual spans about one such step, and the second pass rounds that to half of its 1/127:
    step / 254 times the row's sum of |w| (with 2x headroom), plus float32 rounding."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    step = (x2.max().clamp(min=0) - x2.min().clamp(max=0)) / 127
    return step / 127 * weight.abs().sum(1) + 1e-4


@pytest.mark.parametrize("rows", [1, 3, 8, 37, 128, 512])
def test_equals_the_float_matmul_on_its_own_int8_weight(rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(960, 576, generator=gen) * 0.05
    bias = torch.randn(960, generator=gen)
    codes, scales = quantize_int8(weight)
    layer = Int8Linear(codes, scales, bias)
    dequantized = codes.float() * scales[:, None]
    x = torch.randn(rows, 576, generator=gen)
    got = layer(x)
    exact = x @ dequantized.T + bias
    assert got.dtype == torch.float32 and got.shape == (rows, 960)
    assert ((got - exact).abs() <= activation_bound(x, dequantized)).all()
    assert (got - exact).norm() < 1e-3 * exact.norm()
    # against the original float weight: its int8 rounding on top, as the weight-only kernels have it
    assert (got - (x @ weight.T + bias)).norm() < 0.01 * exact.norm()


@pytest.mark.parametrize("rows", [1, 2, 5])  # stacked into one GEMM up to STACK_MAX_ROWS, two calls beyond
@pytest.mark.parametrize("kind", ["positive", "negative", "zeros", "constant"])
def test_one_signed_and_degenerate_inputs(rows, kind):
    """x's range without 0 inside it, or none at all: the stacked residual must still sit on x's grid."""
    gen = torch.Generator().manual_seed(rows)
    codes, scales = quantize_int8(torch.randn(64, 256, generator=gen) * 0.05)
    layer = Int8Linear(codes, scales)
    x = {"positive": torch.rand(rows, 256, generator=gen) + 0.5, "negative": -torch.rand(rows, 256, generator=gen),
         "zeros": torch.zeros(rows, 256), "constant": torch.full((rows, 256), 0.25)}[kind]
    table = codes.float() * scales[:, None]
    exact = x @ table.T
    got = layer(x)
    assert torch.isfinite(got).all()
    assert ((got - exact).abs() <= activation_bound(x, table)).all()


def test_one_pass_is_not_enough():
    """Why two passes: one 7-bit pass over activations with an outlier channel (as SmolLM2's down_proj has)
    is off by percents; the two passes are within 0.1 % of the int8 weight's exact product."""
    gen = torch.Generator().manual_seed(3)
    codes, scales = quantize_int8(torch.randn(256, 512, generator=gen) * 0.05)
    layer = Int8Linear(codes, scales)
    x = torch.randn(4, 512, generator=gen)
    x[:, 7] = 300.0
    exact = x @ (codes.float() * scales[:, None]).T
    one = torch.ops.quantized.linear_dynamic(x, layer.packed, True)
    assert (one - exact).norm() > 0.01 * exact.norm()
    assert (layer(x) - exact).norm() < 1e-3 * exact.norm()


def test_reduce_range_is_what_keeps_it_exact_without_vnni():
    """Non-negative activations at full scale and the largest codes: 8-bit activations would saturate
    vpmaddubsw's int16 sums on AVX2; the 7 bits used here do not."""
    codes = torch.full((16, 576), 127, dtype=torch.int8)
    layer = Int8Linear(codes, torch.ones(16))
    x = torch.rand(4, 576, generator=torch.Generator().manual_seed(5))
    exact = x @ codes.float().T
    torch.testing.assert_close(layer(x), exact, rtol=2e-3, atol=0)


def test_leading_shapes_bfloat16_inference_mode_and_threads():
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(192, 256, generator=gen) * 0.05
    layer = Int8Linear(*quantize_int8(weight))
    x = torch.randn(2, 5, 256, generator=gen)
    expected = layer(x.reshape(10, 256)).reshape(2, 5, 192)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.inference_mode():
                torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)
    got = layer(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), layer(x.bfloat16().float()), atol=0.05, rtol=0.02)


def test_packed_weight_holds_the_codes_and_no_float_copy():
    gen = torch.Generator().manual_seed(9)
    codes, scales = quantize_int8(torch.randn(64, 128, generator=gen))
    bias = torch.randn(64, generator=gen)
    layer = Int8Linear(codes, scales, bias)
    assert not list(layer.parameters()) and not list(layer.buffers())  # nothing but fbgemm's packed weight
    got_codes, got_scales, got_bias = layer.int8_weight()
    assert torch.equal(got_codes, codes)
    torch.testing.assert_close(got_scales, scales, rtol=1e-6, atol=0)
    torch.testing.assert_close(got_bias, bias)
    assert layer.nbytes == 64 * 128


def test_the_int8_choice_and_the_tied_head():
    """int8 projections and a tied int8 embedding's head take fbgemm's kernel where it exists."""
    gen = torch.Generator().manual_seed(11)
    codes, scales = quantize_int8(torch.randn(32, 64, generator=gen))
    assert isinstance(pick_int8(codes, scales), Int8Linear)
    emb = QuantizedEmbedding.from_float(torch.randn(512, 64, generator=gen))
    head = emb.as_linear()
    assert isinstance(head, Int8Linear)
    assert torch.equal(head.int8_weight()[0], emb.weight_int8)
    h = torch.randn(3, 64, generator=gen)
    table = emb.weight_int8.float() * emb.scales[:, None]
    assert ((head(h) - h @ table.T).abs() <= activation_bound(h, table)).all()


def test_int8_model_answers_as_float32():
    """`--quantize int8` on the built-in model: every projection and the tied head on fbgemm's kernel, logits
    near float32's and the same greedy tokens (measured: all 24 of each of the 3 prompts)."""
    from seedance.models.loader import load_model
    from tests.models.test_gguf import Logits, greedy

    loaded = load_model(None, quantize="int8")
    assert isinstance(loaded.model.layers[0].mlp.down_proj, Int8Linear)
    assert isinstance(loaded.model.lm_head, Int8Linear)
    ids = loaded.tokenizer.encode("And God said unto Moses, Let my people go")
    expected = Logits(load_model(None)).of(ids)
    got = Logits(loaded).of(ids)
    assert (got - expected).abs().max() < 0.4  # logits span about +-15
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9
    assert greedy(None, "int8") == greedy(None)
