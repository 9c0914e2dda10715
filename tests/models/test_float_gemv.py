"""float_gemv (the compiled one-row decode step's GEMV over float weights) against F.linear: eager its Linear is
nn.Linear's forward exactly; traced by inductor at one row it is the reduction (no extern GEMM call left in the
graph), within float32 summation order of F.linear; at 2+ rows (a symbolic row count) it keeps F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from seedance.models import float_gemv


def layer(dtype: torch.dtype, bias: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.up_proj = torch.nn.Linear(128, 96, bias=bias).to(dtype)
    model.other = torch.nn.Linear(8, 8)  # not a projection's name: left alone
    assert float_gemv.attach(model) == 1
    assert type(model.up_proj) is float_gemv.Linear and type(model.other) is torch.nn.Linear
    return model


def aten_ops(fn, x) -> list[str]:
    with profile() as prof:
        fn(x)
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_is_f_linear_exactly(dtype):
    model = layer(dtype)
    x = torch.randn(3, 128).to(dtype)
    with torch.inference_mode():
        assert torch.equal(model.up_proj(x), F.linear(x, model.up_proj.weight, model.up_proj.bias))
        assert torch.equal(float_gemv.linear(x[:1], model.up_proj.weight), F.linear(x[:1], model.up_proj.weight))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_one_row_traced_is_the_reduction_within_rounding(dtype, tol):
    model = layer(dtype)
    fn = torch.compile(lambda x: model.up_proj(x), dynamic=False, options={"cpp_wrapper": True})
    x = torch.randn(1, 128).to(dtype)
    with torch.inference_mode():
        want = (x.float() @ model.up_proj.weight.float().T + model.up_proj.bias.float())
        got = fn(x)
        assert got.dtype == dtype and got.shape == (1, 96)
        assert aten_ops(fn, x) == []  # the whole product is inductor's kernel: no extern GEMM call
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


def test_two_rows_and_more_keep_f_linear_in_the_graph():
    model = layer(torch.float32, bias=False)
    traced = []
    real = float_gemv.gemv

    def counting(x, w):
        traced.append(x.shape[0])
        return real(x, w)

    fn = torch.compile(lambda x: model.up_proj(x), dynamic=True)
    x = torch.randn(3, 128)
    try:
        float_gemv.gemv = counting
        with torch.inference_mode():
            got = fn(x)
    finally:
        float_gemv.gemv = real
    assert traced == []
    torch.testing.assert_close(got, F.linear(x, model.up_proj.weight))
