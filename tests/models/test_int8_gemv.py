"""int8_gemv (the compiled decode step's one-row int8 GEMV) against the float product of the same int8 weight:
the word layout holds the codes exactly, and the GEMV, eager and compiled by inductor, is that product within
float32 rounding (it accumulates in float32: no activation quantization, unlike fbgemm's two passes)."""

from __future__ import annotations

import pytest
import torch

from seedance.models import int8_gemv, int8_linear
from seedance.models.int8_linear import Int8Linear
from seedance.models.quantized_linear import quantize_int8

pytestmark = pytest.mark.skipif(not int8_linear.available(), reason="this torch has no fbgemm quantized ops")


def weights(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return quantize_int8(torch.randn(n, k, generator=gen) * 0.05)


def float_bound(x: torch.Tensor, dequantized: torch.Tensor) -> torch.Tensor:
    """float32 summation error over K terms: K * eps * sum |x_k w_k| per output (a loose, not a tight, bound)."""
    return x.shape[-1] * 1.2e-7 * (x.abs() @ dequantized.abs().T) + 1e-6


def test_the_word_layout_holds_every_code():
    codes, _ = weights(7, 64, 0)
    codes[0, :4] = torch.tensor([-128, -1, 0, 127], dtype=torch.int8)  # the extremes and sign bits survive
    words = int8_gemv.word_layout(codes).view(torch.int32)
    k4 = codes.shape[1] // 4
    for b, shift in enumerate((24, 16, 8, 0)):
        assert torch.equal((words << shift) >> 24, codes[:, b * k4:(b + 1) * k4].int())


@pytest.mark.parametrize("n,k", [(960, 576), (576, 1536), (7, 32)])
def test_eager_gemv_is_the_float_product_of_the_int8_weight(n, k):
    codes, scales = weights(n, k, n + k)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(1))
    dequantized = codes.float() * scales[:, None]
    got = int8_gemv.gemv(x, int8_gemv.word_layout(codes), scales)
    assert got.shape == (1, n)
    assert ((got - x @ dequantized.T).abs() <= float_bound(x, dequantized)).all()


def test_a_compiled_layer_runs_the_gemv_at_one_row_and_fbgemm_above():
    """Under torch.compile an Int8Linear with words takes the GEMV at 1 row (the float product, no custom op) and
    the op (fbgemm's two passes, eager's own result) at 3; bias added either way."""
    codes, scales = weights(96, 128, 3)
    bias = torch.randn(96, generator=torch.Generator().manual_seed(4))
    layer = Int8Linear(codes, scales, bias)
    int8_gemv.register_compile_op()
    from seedance.models.fp16_linear import set_handle

    set_handle(layer, 987_654)
    model = torch.nn.Module()
    model.up_proj = layer
    assert int8_gemv.attach(model) == 1
    dequantized = codes.float() * scales[:, None]
    fn = torch.compile(lambda x: layer(x), dynamic=False)
    with torch.inference_mode():
        one = torch.randn(1, 128, generator=torch.Generator().manual_seed(5))
        with torch.profiler.profile() as prof:
            got = fn(one)
        assert not [e for e in prof.events() if "int8_linear" in e.name]
        assert ((got - (one @ dequantized.T + bias)).abs() <= float_bound(one, dequantized)).all()
        three = torch.randn(3, 128, generator=torch.Generator().manual_seed(6))
        with torch.profiler.profile() as prof:
            got = fn(three)
        assert [e for e in prof.events() if "int8_linear" in e.name]
        torch.testing.assert_close(got, layer(three), atol=1e-5, rtol=1e-5)
