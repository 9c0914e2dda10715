"""oneDNN's reordered bfloat16 projections (models/onednn_linear.py): the same products as F.linear, int4 layers
split by rows between their kernel and a bf16 copy, and the mode's choice per CPU, dtype and device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as T

from seedance.engine.config import EngineConfig
from seedance.models import onednn_linear as onednn
from seedance.models.loader import BUILTIN_MODEL_DIR, ModelLoadError, load_model, model_weights
from seedance.models.onednn_linear import PackedLinear, RowSplitLinear
from seedance.models.quantized_linear import QuantizedLinear
from seedance.server.http.config import ServerConfig
from tests.models.gguf_files import write_gguf
from tests.models.test_gguf import Logits

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN")


@pytest.mark.parametrize("shape", [(1,), (5,), (64,), (3, 7)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_equals_f_linear(shape, bias):
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(320, 576, generator=gen) * 0.05).bfloat16()
    b = torch.randn(320, generator=gen).bfloat16() if bias else None
    layer = PackedLinear(weight, b)
    x = torch.randn(*shape, 576, generator=gen).bfloat16()
    expected = F.linear(x, weight, b)
    got = layer(x)
    assert got.shape == expected.shape and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), atol=0.02, rtol=0.01)  # one bf16 rounding apart at most
    assert torch.equal(layer.dequantize(torch.bfloat16), weight)  # the weight itself, reordered back
    assert layer(x.float()).dtype == torch.float32  # other activations are cast around the call


def test_row_split_takes_the_kernel_up_to_its_rows_and_the_copy_past_them():
    gen = torch.Generator().manual_seed(1)
    small = QuantizedLinear.from_float(torch.randn(192, 576, generator=gen) * 0.05, 4, 32).to(torch.bfloat16)
    split = RowSplitLinear(small, above_rows=4)
    dense = small.dequantize(torch.float32).bfloat16()
    for rows in (1, 4):
        x = torch.randn(rows, 576, generator=gen).bfloat16()
        assert torch.equal(split(x), small(x))  # the int4 kernel itself
    for rows in (5, 33):
        x = torch.randn(rows, 576, generator=gen).bfloat16()
        torch.testing.assert_close(split(x).float(), F.linear(x, dense).float(), atol=0.02, rtol=0.01)
    assert torch.equal(split.dequantize(), small.dequantize())


def test_the_mode_per_cpu_dtype_and_device():
    amx, avx512 = frozenset({"amx_bf16", "avx512_bf16"}), frozenset({"avx512_bf16"})
    assert onednn.enabled("auto", torch.bfloat16, "cpu", amx)
    assert onednn.enabled("auto", torch.bfloat16, "cpu", amx, weights=135_000_000)  # SmolLM2
    assert not onednn.enabled("auto", torch.bfloat16, "cpu", amx, weights=5_500_000)  # the built-in model: slower
    assert onednn.enabled("on", torch.bfloat16, "cpu", amx, weights=5_500_000)
    assert onednn.enabled("auto", torch.bfloat16, "cpu", avx512)  # AVX512_BF16 without AMX (measured on Zen 4)
    assert not onednn.enabled("auto", torch.bfloat16, "cpu", frozenset({"avx2", "avx512f"}))  # no native bf16
    assert onednn.enabled("on", torch.bfloat16, "cpu", avx512)
    assert not onednn.enabled("on", torch.float32, "cpu", amx)  # bfloat16 models only
    assert not onednn.enabled("on", torch.bfloat16, "cuda", amx)
    assert not onednn.enabled("off", torch.bfloat16, "cpu", amx)
    with pytest.raises(ValueError):
        onednn.enabled("fast", torch.bfloat16, "cpu", amx)
    # an int4 model's bf16 copies (a rounding the int4 kernel never does): auto on AMX only, "on" everywhere
    assert onednn.int4_copies("auto", amx) and not onednn.int4_copies("auto", avx512)
    assert onednn.int4_copies("on", avx512)


def test_a_bad_mode_is_refused_before_the_server_binds():
    cfg = ServerConfig()
    cfg.engine = EngineConfig(onednn_linear="fast")
    with pytest.raises(ValueError, match="onednn_linear"):
        cfg.validate_model()
    with pytest.raises(ModelLoadError, match="onednn_linear"):
        load_model(None, onednn_linear="fast")


def test_the_built_in_model_on_it_computes_what_plain_bf16_does():
    plain = load_model(None, dtype="bfloat16")
    packed = load_model(None, dtype="bfloat16", onednn_linear="on")
    net = packed.model
    assert isinstance(net.layers[0].self_attn.qkv_proj, PackedLinear)
    assert isinstance(net.layers[-1].mlp.down_proj, PackedLinear)
    assert isinstance(net.lm_head, PackedLinear) and plain.model.lm_head is None  # the tied head, reordered
    assert model_weights(net) == model_weights(plain.model)  # the head's copy is not counted twice
    ids = plain.tokenizer.encode("And God said, Let there be light: and there was light. And God saw the light")
    want, got = Logits(plain).of(ids).float(), Logits(packed).of(ids).float()
    assert (got - want).abs().max() < 0.25  # bfloat16 logits: a step is 1/16 at |logit| 8-16
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_an_int4_model_keeps_int4_for_one_row_and_bf16_past_its_rows(tmp_path, monkeypatch):
    monkeypatch.setattr("seedance.models.gguf_loader.int4_kernel_preferred", lambda *_: True)
    path = write_gguf(BUILTIN_MODEL_DIR, tmp_path / "tiny-q4_1.gguf", T.Q4_1, embed_qtype=T.F32)
    plain = load_model(path, dtype="bfloat16", quantize="int4")
    split = load_model(path, dtype="bfloat16", quantize="int4", onednn_linear="on")
    layer = split.model.layers[0].mlp.gate_up_proj
    assert isinstance(layer, RowSplitLinear) and layer.small.bits == 4
    assert model_weights(split.model) == model_weights(plain.model)
    ids = plain.tokenizer.encode("And God said, Let there be light: and there was light.")
    # the prompt (more rows than INT4_ABOVE_ROWS) on the bf16 copy: the file's weights rounded to bf16 once
    want, got = Logits(plain).of(ids).float(), Logits(split).of(ids).float()
    assert (got - want).abs().max() < 0.25
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    x = torch.randn(1, layer.in_features).bfloat16()
    assert torch.equal(layer(x), plain.model.layers[0].mlp.gate_up_proj(x))  # one row: the int4 kernel


def test_auto_gives_an_int4_model_its_copies_on_amx_only(tmp_path, monkeypatch):
    """`auto` on an AVX512_BF16 CPU without AMX: an int4 model keeps its int4 kernel at every row count (no bf16
    copy to round its weights); with AMX it gets the copies. Both above the built-in model's size bound."""
    monkeypatch.setattr("seedance.models.gguf_loader.int4_kernel_preferred", lambda *_: True)
    monkeypatch.setattr("seedance.models.onednn_linear.AUTO_MIN_WEIGHTS", 0)
    path = write_gguf(BUILTIN_MODEL_DIR, tmp_path / "tiny-q4_1.gguf", T.Q4_1, embed_qtype=T.F32)
    for flags, copies in ((frozenset({"avx512_bf16"}), False), (frozenset({"amx_bf16", "avx512_bf16"}), True)):
        monkeypatch.setattr("seedance.models.onednn_linear.cpu_flags", lambda flags=flags: flags)
        net = load_model(path, dtype="bfloat16", quantize="int4", onednn_linear="auto").model
        layer = net.layers[0].mlp.gate_up_proj
        assert isinstance(layer, RowSplitLinear) == copies, flags
        assert isinstance(layer.small if copies else layer, QuantizedLinear)


def test_auto_leaves_the_built_in_model_plain(monkeypatch):
    monkeypatch.setattr("seedance.models.onednn_linear.cpu_flags", lambda: frozenset({"amx_bf16"}))
    net = load_model(None, dtype="bfloat16", onednn_linear="auto").model
    assert not any(isinstance(m, PackedLinear | RowSplitLinear) for m in net.modules())
