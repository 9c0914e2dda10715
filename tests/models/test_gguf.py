"""GGUF files made from the built-in model (tests/models/gguf_files.py) against the Hugging Face directory path:
F32 token for token, quantized within a stated logits tolerance, int4-kept equal to its own dequantization."""

from __future__ import annotations

import random

import pytest
import torch
from gguf import GGMLQuantizationType as T

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams
from seedance.models.fp16_linear import Fp16Linear
from seedance.models.gguf_tokenizer import gguf_tokenizer
from seedance.models.int8_linear import Int8Linear
from seedance.models.loader import BUILTIN_MODEL_DIR, ModelLoadError, load_model
from seedance.models.quantized_linear import QuantizedEmbedding, QuantizedLinear, int4_kernel_preferred
from tests.models.gguf_files import write_gguf
from tests.models.test_llama_vs_transformers import PagedHarness

PROMPTS = ["And God said, Let there be light:", "In the beginning", "Blessed are the meek: for they"]
# Max |logit difference| from the float32 Hugging Face path over a 30-token prompt (logits span about ±15):
# measured 0.11 (Q8_0 dequantized), 0.20 (Q8_0 requantized to int8 per channel); bounds with headroom.
Q8_NONE_ATOL, Q8_INT8_ATOL = 0.25, 0.4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    # 4-bit files keep an F32 embedding: a quantized one is requantized to int8 rows (lossy), which the
    # kept-vs-dequantized comparison would then measure instead of the int4 kernel.
    return {q: write_gguf(BUILTIN_MODEL_DIR, out / f"tiny-{q.name}.gguf", q,
                          embed_qtype=T.F32 if q in (T.Q4_0, T.Q4_1) else None)
            for q in (T.F32, T.Q8_0, T.Q4_0, T.Q4_1)}


def greedy(model, quantize="auto", n=24, dtype="float32") -> list[list[int]]:
    """Greedy tokens in `dtype` (explicit: the engine's default follows the CPU, bfloat16 with AVX512_BF16)."""
    engine = LLMEngine.from_config(EngineConfig(model=str(model) if model else None, quantize=quantize,
                                                num_kv_blocks=128, warmup=False, dtype=dtype))
    out = {}
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), engine.tokenizer.encode(prompt), SamplingParams(max_tokens=n, temperature=0.0,
                                                                                   ignore_eos=True))
        out[str(i)] = []
    while engine.has_work():
        for event in engine.step():
            if event.token_id >= 0:
                out[event.request_id].append(event.token_id)
    return [out[str(i)] for i in range(len(PROMPTS))]


class Logits(PagedHarness):
    def __init__(self, loaded):
        from seedance.engine.block_manager import BlockManager
        from seedance.engine.model_runner import TorchModelRunner

        self.config = EngineConfig(block_size=16, num_kv_blocks=64)
        self.runner = TorchModelRunner(loaded, self.config)
        self.bm = BlockManager(64, 16, enable_prefix_caching=False)

    def of(self, ids):
        return self.run([(self.new_seq(list(ids), "x"), len(ids))])[0]


@pytest.fixture(scope="module")
def reference():
    loaded = load_model(None)
    ids = loaded.tokenizer.encode("And God said, Let there be light: and there was light. And God saw the light")
    return ids, Logits(loaded).of(ids)


def test_f32_gguf_equals_the_hf_directory_token_for_token(files, reference):
    assert greedy(files[T.F32]) == greedy(None)
    ids, expected = reference
    torch.testing.assert_close(Logits(load_model(files[T.F32])).of(ids), expected, atol=1e-5, rtol=1e-5)


def test_q8_0_within_tolerance_dequantized_and_kept_int8(files, reference):
    ids, expected = reference
    dequantized = load_model(files[T.Q8_0], quantize="none")
    assert isinstance(dequantized.model.layers[0].self_attn.qkv_proj, torch.nn.Linear)
    kept = load_model(files[T.Q8_0])  # auto: Q8_0 requantized to int8 per channel, embedding int8 rows
    assert kept.model.layers[0].self_attn.qkv_proj.bits == 8
    assert isinstance(kept.model.embed_tokens, QuantizedEmbedding)
    for loaded, atol in ((dequantized, Q8_NONE_ATOL), (kept, Q8_INT8_ATOL)):
        got = Logits(loaded).of(ids)
        assert (got - expected).abs().max() < atol
        assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("kind", [T.Q4_0, T.Q4_1])
def test_q4_kept_int4_equals_its_dequantization(files, reference, kind, monkeypatch):
    """The int4 kernel on the file's own blocks computes what the float path on gguf's dequantization does
    (`auto` where the kernel is AVX-512, forced here; the next test has this CPU's own choice)."""
    monkeypatch.setattr("seedance.models.gguf_loader.int4_kernel_preferred", lambda *_: True)
    ids, _ = reference
    kept = load_model(files[kind])
    layer = kept.model.layers[0]
    assert isinstance(layer.mlp.gate_up_proj, QuantizedLinear) and layer.mlp.gate_up_proj.bits == 4
    dequantized = load_model(files[kind], quantize="none")
    torch.testing.assert_close(Logits(kept).of(ids), Logits(dequantized).of(ids), atol=2e-3, rtol=1e-4)
    assert greedy(files[kind], n=12) == greedy(files[kind], "none", n=12)


def test_q4_auto_takes_the_faster_kernel_of_this_cpu(files, reference):
    """`auto` on Q4_1: int4 where ATen's int4 kernel is AVX-512 and the activations bfloat16 (its fast path),
    else loaded as `fp16` (fbgemm's fp16 GEMM): within 1e-2 of its own float dequantization and greedy token
    for token. float32 takes fp16 on every CPU (the int4 kernel's float32 path is the slow one)."""
    ids, _ = reference
    bf16 = load_model(files[T.Q4_1], dtype="bfloat16")
    layer = bf16.model.layers[0].mlp.gate_up_proj
    if int4_kernel_preferred("bfloat16"):
        assert isinstance(layer, QuantizedLinear) and layer.bits == 4
        dequantized = Logits(load_model(files[T.Q4_1], quantize="none", dtype="bfloat16")).of(ids).float()
        got = Logits(bf16).of(ids).float()
        assert (got - dequantized).abs().max() < 0.25  # bfloat16 logits: a step is 1/16 at |logit| 8-16
        assert (got.argmax(-1) == dequantized.argmax(-1)).float().mean() >= 0.9
        assert greedy(files[T.Q4_1], n=12, dtype="bfloat16") == greedy(files[T.Q4_1], "none", n=12, dtype="bfloat16")
    else:
        assert isinstance(layer, Fp16Linear)
    loaded = load_model(files[T.Q4_1])  # float32
    layer = loaded.model.layers[0].mlp.gate_up_proj
    assert isinstance(layer, Fp16Linear) and isinstance(loaded.model.lm_head, Fp16Linear)
    dequantized = Logits(load_model(files[T.Q4_1], quantize="none")).of(ids)
    assert (Logits(loaded).of(ids) - dequantized).abs().max() < 1e-2
    assert greedy(files[T.Q4_1], n=12) == greedy(files[T.Q4_1], "none", n=12)


def test_quantized_memory_is_a_fraction_of_float(files, monkeypatch):
    def weight_bytes(loaded):
        tensors = [*loaded.model.parameters(), *(b for n, b in loaded.model.named_buffers() if "rope" not in n)]
        packed = sum(m.nbytes for m in loaded.model.modules() if isinstance(m, Int8Linear | Fp16Linear))  # fbgemm's
        return sum({t.data_ptr(): t.numel() * t.element_size() for t in tensors}.values()) + packed

    f32 = weight_bytes(load_model(files[T.F32]))
    assert weight_bytes(load_model(files[T.Q8_0])) < f32 / 3
    assert weight_bytes(load_model(files[T.Q4_1], quantize="fp16")) < f32 * 0.75  # float embedding, fp16 head
    monkeypatch.setattr("seedance.models.gguf_loader.int4_kernel_preferred", lambda *_: True)
    assert weight_bytes(load_model(files[T.Q4_1])) < f32 / 2.5  # int4; its embedding (a fifth of the model) is F32


def test_hf_directory_quantize_on_load():
    ids = load_model(None).tokenizer.encode("And God said unto Moses")
    expected = Logits(load_model(None)).of(ids)
    for mode, atol in (("int8", 0.4), ("int4", 2.5)):
        loaded = load_model(None, quantize=mode)
        assert loaded.model.layers[0].self_attn.o_proj.bits == int(mode[3])
        assert (Logits(loaded).of(ids) - expected).abs().max() < atol


def _strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = ["And God said", " unto", "  double  spaces", "\ttab", "\n\nnew lines\n", "1234567", " 3.14159",
              "naïve café", "日本語のテキスト", "emoji 🎉🚀", "Ünïcödé", "def f(x):\n    return x ** 2",
              "<|endoftext|>",
              "x<|endoftext|>y", "    indented", "it's we're they'll", "ALL CAPS", "mixed123abc", "¿Qué?", "–—…",
              "    ", " ", "", "Ελληνικά", "Русский текст", "العربية", "a\u200bb", "\r\n", "{'json': [1, 2]}"]
    out = []
    for _ in range(n):
        out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 5))))
    return out


def test_gguf_tokenizer_equals_the_original_and_transformers_gguf_tokenizer(files):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    path = files[T.F32]
    ours = gguf_tokenizer(GGUFReader(str(path)), path)
    original = load_model(None).tokenizer
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in _strings(1000, 0):
        ids = ours.encode(text)
        assert ids == original.encode(text), text
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == original.decode(ids)
    messages = [{"role": "user", "content": "Blessed are"}]
    assert ours.apply_chat_template(messages) == original.apply_chat_template(messages)
    assert ours.eos_token_ids == original.eos_token_ids


def test_unsupported_architecture_and_corrupt_files_fail_with_one_clear_line(files, tmp_path):
    wrong = write_gguf(BUILTIN_MODEL_DIR, tmp_path / "gpt2.gguf", T.F32, arch="gpt2")
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'gpt2'") as err:
        load_model(wrong)
    assert "\n" not in str(err.value)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(files[T.F32].read_bytes()[: 200_000])
    with pytest.raises(ModelLoadError, match=r"corrupt\.gguf") as err:
        load_model(corrupt)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(files[T.F32], dtype="float8")


def test_gguf_name_is_the_served_name(files):
    assert load_model(files[T.F32]).name == "tiny-test"
    assert load_model(None).name == "seedance-tiny"


def test_served_name_is_decided_before_the_load_as_the_loader_names_it(files, tmp_path):
    from seedance.models.registry import served_name

    assert served_name(files[T.F32]) == load_model(files[T.F32]).name == "tiny-test"  # general.name, not the stem
    assert served_name(None) == load_model(None).name
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00")
    assert served_name(broken) == "broken"  # unreadable: the stem; the load says why


def test_our_reader_reads_what_gguf_reader_reads(files, tmp_path):
    """gguf_reader.Reader (one struct pass) against the gguf library's GGUFReader: every metadata value, every
    tensor's name, shape, type and bytes; a file cut short fails in our reader, not later in a reshape."""
    import numpy as np
    from gguf import GGUFReader

    from seedance.models.gguf_reader import Reader

    for path in files.values():
        theirs, ours = GGUFReader(str(path)), Reader(path)
        want = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
        assert {k: f.contents() for k, f in ours.fields.items()} == want
        assert len(want["tokenizer.ggml.tokens"]) == 4096 and isinstance(want["tokenizer.ggml.tokens"][0], str)
        assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
        for a, b in zip(theirs.tensors, ours.tensors, strict=True):
            assert b.shape == tuple(int(d) for d in a.shape) and b.tensor_type == a.tensor_type
            assert b.data.dtype == a.data.dtype and b.data.shape == a.data.shape
            assert np.array_equal(b.data.view(np.uint8), a.data.view(np.uint8)), a.name
    raw = files[T.Q8_0].read_bytes()
    for cut in (100, 60_000, len(raw) - 1000):  # in the metadata, in the tensor index or data, in the last tensor
        short = tmp_path / f"short{cut}.gguf"
        short.write_bytes(raw[:cut])
        with pytest.raises(Exception):  # noqa: B017 - any error: open_gguf turns it into one line
            Reader(short)


def test_dequantize_rows_is_gguf_quants_bit_for_bit(files):
    """The torch dequantization of Q8_0 / Q4_0 / Q4_1 / F32 rows equals gguf.quants' numpy one exactly."""
    import numpy as np
    from gguf.quants import dequantize

    from seedance.models.gguf_loader import dequantize_rows
    from seedance.models.gguf_reader import Reader

    kinds = set()
    for path in files.values():
        for t in Reader(path).tensors:
            data = np.array(t.data)
            want = np.ascontiguousarray(dequantize(data, t.tensor_type), np.float32)
            got = dequantize_rows(data, t.tensor_type.name).numpy()
            assert got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32)), t.name
            kinds.add(t.tensor_type.name)
    assert {"F32", "Q8_0", "Q4_0", "Q4_1"} <= kinds


@pytest.mark.parametrize("flags", [frozenset({"avx512f", "avx512_bf16"}), frozenset({"avx2", "fma"})])
def test_auto_dtype_follows_the_kernels_the_projections_take(files, monkeypatch, flags):
    """dtype auto: bfloat16 on a CPU with native bf16, except where the projections run on fbgemm's GEMMs
    (float32 activations: a Q8_0 file's int8, `--quantize int8 | fp16`, a 4-bit file loaded as fp16), which
    take float32; on a CPU without it float32 throughout."""
    monkeypatch.setattr("seedance.models.precision.cpu_flags", lambda: flags)
    bf16 = "bfloat16" if "avx512_bf16" in flags else "float32"
    q8 = load_model(files[T.Q8_0], dtype="auto")
    assert q8.dtype == "float32" and q8.model.norm.weight.dtype == torch.float32
    assert load_model(files[T.F32], dtype="auto").dtype == bf16
    q4 = load_model(files[T.Q4_1], dtype="auto")
    int4 = isinstance(q4.model.layers[0].mlp.gate_up_proj, QuantizedLinear)
    assert int4 == (int4_kernel_preferred("bfloat16") and bf16 == "bfloat16")
    assert q4.dtype == (bf16 if int4 else "float32")
    assert load_model(None, dtype="auto").dtype == bf16
    for mode in ("int8", "fp16"):
        assert load_model(None, dtype="auto", quantize=mode).dtype == "float32"
    assert load_model(None, dtype="auto", quantize="int4").dtype == bf16
