"""QuantizedLinear against a dequantized float matmul, and GGUF's 4-bit blocks mapped onto int4 exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from seedance.models.gguf_loader import int4_blocks
from seedance.models.int8_linear import available as fbgemm_available
from seedance.models.quantized_linear import (
    QuantizedEmbedding,
    QuantizedLinear,
    dequantize_above_rows,
    int4_kernel_preferred,
    quantize_int4,
    quantize_int8,
    quantize_model,
    unpack_int4,
)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [(1,), (2, 3), (3, 5)])  # up to 8 rows the kernel; more: dequantize per call
def test_kernel_equals_dequantized_matmul(bits, dtype, rows):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(192, 576, generator=gen) * 0.05
    bias = torch.randn(192, generator=gen)
    layer = QuantizedLinear.from_float(weight, bits, 32, bias).to(dtype)
    x = torch.randn(*rows, 576, generator=gen)  # leading batch shapes, as the runner's [T, hidden] or more
    expected = x.float() @ layer.dequantize().T + bias
    got = layer(x.to(dtype)).float()
    assert got.shape == (*rows, 192)
    tol = 1e-4 if dtype == torch.float32 else 0.05 * expected.abs().max().item()
    torch.testing.assert_close(got, expected, atol=tol, rtol=0.02 if dtype == torch.bfloat16 else 1e-4)


def test_quantization_error_is_bounded():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 256, generator=gen)
    codes, scales = quantize_int8(weight)
    assert (codes.float() * scales[:, None] - weight).abs().max() <= scales.max() / 2 + 1e-6
    q, scale, zero = quantize_int4(weight, 32)
    rebuilt = ((q.float() - 8).reshape(64, 8, 32) * scale[..., None] + zero[..., None]).reshape(64, 256)
    assert (rebuilt - weight).abs().max() <= scale.max() / 2 + 1e-5
    assert q.min() >= 0 and q.max() <= 15


def _random_q4k_rows(rows: int, k: int, seed: int) -> np.ndarray:
    """Random Q4_K blocks (144 bytes per 256 weights) with sane f16 d / dmin: every byte pattern is valid."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows, k // 256, 144), dtype=np.uint8)
    blocks[..., 0:2] = np.float16(0.01 * rng.random((rows, k // 256)) + 1e-3)[..., None].view(np.uint8)
    blocks[..., 2:4] = np.float16(0.01 * rng.random((rows, k // 256)))[..., None].view(np.uint8)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K"])
def test_gguf_4bit_blocks_map_onto_int4_exactly(kind):
    qtype = GGMLQuantizationType[kind]
    rows, k = 48, 512
    if kind == "Q4_K":  # gguf has no Q4_K quantizer: random blocks
        data = _random_q4k_rows(rows, k, 0)
    else:
        data = quantize(np.random.default_rng(0).standard_normal((rows, k)).astype(np.float32), qtype)
    reference = torch.from_numpy(dequantize(data, qtype))
    codes, scale, zero = int4_blocks(SimpleNamespace(tensor_type=qtype), data)
    layer = QuantizedLinear.from_int4(codes, scale, zero, 32)
    torch.testing.assert_close(layer.dequantize(), reference, atol=1e-5, rtol=1e-5)
    x = torch.randn(4, k)
    torch.testing.assert_close(layer(x), x @ reference.T, atol=1e-3, rtol=1e-4)


def test_quantized_embedding_is_the_tied_head():
    """The head is the embedding's own int8 rows: shared buffers on the weight-only kernel, the same codes
    packed for fbgemm's (int8_linear.py)."""
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(512, 64, generator=gen)
    emb = QuantizedEmbedding.from_float(table)
    ids = torch.tensor([0, 7, 511])
    torch.testing.assert_close(emb(ids), table[ids], atol=0.02, rtol=0)
    head = emb.as_linear()
    if isinstance(head, QuantizedLinear):
        assert head.weight_int8.data_ptr() == emb.weight_int8.data_ptr()
    else:
        assert torch.equal(head.int8_weight()[0], emb.weight_int8)
    h = torch.randn(2, 64, generator=gen)
    torch.testing.assert_close(head(h), h @ (emb.weight_int8.float() * emb.scales[:, None]).T, atol=1e-2, rtol=1e-3)


def test_quantize_model_shrinks_a_model():
    from seedance.models.loader import load_model

    loaded = load_model(None)
    float_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    quantize_model(loaded.model, 4)
    params = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    buffers = sum(b.numel() * b.element_size() for n, b in loaded.model.named_buffers() if "rope" not in n)
    assert params + buffers < float_bytes / 3


@pytest.mark.parametrize(("n", "k"), [(32, 64), (960, 576), (576, 1536)])
def test_unpack_reads_the_kernels_packed_layout(n, k):
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(n))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    assert torch.equal(unpack_int4(packed, n, k).to(torch.int32), codes)


def test_int4_dequantize_for_n_not_a_multiple_of_32_uses_the_kernel():
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(3))
    layer = QuantizedLinear.from_float(weight, 4, 32)
    x = torch.randn(12, 64)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("n", "k"), [(64, 32), (80, 64), (112, 32), (16, 32)])
def test_unpack_reads_the_packed_layout_with_a_partial_last_block(n, k):
    """AVX-512 packs 64-row blocks and a 16-48-row last one; AVX2 has no such tail (those dequantize through the
    kernel): whichever this CPU packs, dequantize is the codes' own weight."""
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(n))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    got = unpack_int4(packed, n, k)
    if got is not None:
        assert torch.equal(got.to(torch.int32), codes)
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    layer = QuantizedLinear.from_float(weight, 4, 32)
    x = torch.randn(3, k)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("capability", ["avx2", "avx512"])
def test_unpack_follows_the_layout_of_each_cpu_build(capability):
    """ATen packs int4 per the build it dispatches to (64-row blocks on AVX-512, 32 on AVX2): a prefill chunk
    dequantizes with unpack_int4, which must read the layout of the CPU it runs on. ATEN_CPU_CAPABILITY selects
    the build (a CPU without AVX-512 runs AVX2's whatever is asked, and the check holds as well)."""
    code = ("import torch\n"
            "from seedance.models.quantized_linear import unpack_int4, int4_pack_block\n"
            "for n, k in ((960, 576), (64, 32), (128, 64)):\n"
            "    codes = torch.randint(0, 16, (n, k), dtype=torch.int32)\n"
            "    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)\n"
            "    assert torch.equal(unpack_int4(packed, n, k).to(torch.int32), codes), (n, k)\n"
            "print(int4_pack_block())\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    block = int(out.stdout.split()[-1])
    native_avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    assert block == (64 if capability == "avx512" and native_avx512 else 32)


@pytest.mark.skipif(not fbgemm_available(), reason="without fbgemm int4 is the only 4-bit path")
@pytest.mark.parametrize(("capability", "dtype", "kept"), [
    ("AVX512", "bfloat16", True),  # the AVX-512 int4 kernel's fast path (docs/model.md, "Formats")
    ("AVX512", "float32", False),  # its float32 path: 17x slower than fbgemm's fp16 at one row
    ("AVX2", "bfloat16", False), ("AVX2", "float32", False), ("DEFAULT", "bfloat16", False)])
def test_int4_kept_only_where_its_kernel_is_fast(monkeypatch, capability, dtype, kept):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert int4_kernel_preferred(dtype) is kept


def test_int4_bf16_on_avx512_keeps_the_kernel_for_decode_batches():
    """On AVX-512 the int4 kernel with bfloat16 activations beats dequantize + GEMM up to ~200 rows (a decode
    step of 64 streams stays on it); everywhere else, and for int8 / float32, past 8 rows the weight dequantizes."""
    assert dequantize_above_rows(4, torch.bfloat16, "AVX512") == 192
    for bits, dtype, cap in ((4, torch.float32, "AVX512"), (8, torch.bfloat16, "AVX512"),
                             (4, torch.bfloat16, "AVX2"), (4, torch.bfloat16, "DEFAULT")):
        assert dequantize_above_rows(bits, dtype, cap) == 8


@pytest.mark.parametrize("rows", [8, 64, 200])
def test_int4_bf16_kernel_and_dequantized_paths_agree(rows):
    """Whichever side of the threshold a call falls on, the product is the same (bfloat16's rounding)."""
    weight = torch.randn(96, 64, generator=torch.Generator().manual_seed(rows)) * 0.05
    layer = QuantizedLinear.from_float(weight, 4, 32).to(torch.bfloat16)
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
    exact = x.float() @ layer.dequantize().T
    torch.testing.assert_close(layer(x).float(), exact, atol=0.02, rtol=0.02)
