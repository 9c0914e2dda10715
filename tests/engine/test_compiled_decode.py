"""The compiled decode step (EngineConfig.compile, models/compiled_decode.py) against the eager one on the same
weights: the same greedy tokens over streams of unequal and equal lengths, logits (the head is in the graph) within
float tolerance, fp16 projections and the built-in model's own float32 weights alike,
and every way it can fail (a model it cannot take, a compile that fails, a context no graph was traced for) serving
eager, logged."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.profiler import profile

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams
from seedance.models import compiled_decode, float_gemv, int8_linear, onednn_linear
from seedance.models.compiled_decode import CompiledDecode
from seedance.models.fp16_linear import Fp16Linear
from seedance.models.loader import load_model
from seedance.models.paged_attention import AttentionMetadata, PrefillChunk, kv_cache_shape

pytestmark = pytest.mark.skipif(not int8_linear.available(), reason="this torch has no fbgemm quantized ops")

PROMPTS = [list(range(5, 45)), list(range(60, 77)), list(range(100, 103)), list(range(200, 240))]


def greedy(engine: LLMEngine, prompts: list[list[int]], max_tokens: int = 12) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    while engine.has_work():
        for event in engine.step():
            if event.token_id >= 0:
                tokens[event.request_id].append(event.token_id)
    return [tokens[str(i)] for i in range(len(prompts))]


def top_two(engine: LLMEngine, prompt: list[int]) -> list[tuple[int, float]]:
    """The next token's two likeliest (token, logprob) under greedy decoding of `prompt`."""
    engine.add_request("top", prompt, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True, logprobs=2))
    events = [e for _ in iter(engine.has_work, False) for e in engine.step() if e.token_id >= 0]
    return list(events[0].top_logprobs)


def same_but_near_ties(engine: LLMEngine, prompts, got, want, margin: float = 0.05) -> None:
    """got == want, or each stream parts from want only where `engine` (want's) sees its two likeliest next
    tokens within `margin` nats of each other: a tie that bf16 rounding may break either way."""
    for prompt, a, b in zip(prompts, got, want, strict=True):
        if a == b:
            continue
        k = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        (t1, l1), (t2, l2) = top_two(engine, prompt + b[:k])
        assert {t1, t2} == {a[k], b[k]} and abs(l1 - l2) < margin, (k, a, b, (t1, l1), (t2, l2))


def config(**kw) -> EngineConfig:
    return EngineConfig(**{"threads": 1, "quantize": "fp16", "dtype": "float32", "warmup": False, **kw})


@pytest.fixture(scope="module")
def engines():
    """The built-in model with fp16 projections (the custom op's path), compiled and eager; steps of 3+ tokens on
    2 torch threads (large_step_threads), 1-2 on 1: dynamo guards the thread count, so both must be warmed."""
    saved = torch.get_num_threads()
    threads = dict(large_step_threads=2, large_step_work=3 * 5_000_000)
    compiled = LLMEngine.from_config(config(compile=True, **threads))
    eager = LLMEngine.from_config(config(**threads))
    assert compiled.runner.large_step_tokens == 3
    yield compiled, eager
    torch.set_num_threads(saved)


def test_compiled_steps_give_the_eager_greedy_tokens(engines):
    compiled, eager = engines
    assert compiled.runner.compiled is not None
    # unequal lengths (a padding mask), 4 -> 1 rows as they finish; then two of equal length (no mask of its own)
    for prompts in (PROMPTS, [PROMPTS[0], PROMPTS[3]], [PROMPTS[1]]):
        assert greedy(compiled, prompts) == greedy(eager, prompts)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    for rows in (1, 2, 4):  # 1 and 2 rows on 1 thread, 4 on 2: each decode step runs a compiled graph
        for i in range(rows):
            compiled.add_request(f"p{rows}-{i}", PROMPTS[i][:9], params)
        compiled.step()  # the prefills: eager
        with profile() as prof:
            compiled.step()
        assert compiled_regions(prof), rows
        while compiled.has_work():
            compiled.step()


def test_float32_weights_compiled_give_the_eager_greedy_tokens():
    """The built-in model as served by default (float32 weights, no --quantize) with --compile, at one stream
    (max_num_seqs=1: one graph to compile, half the test's time; 2+ rows are the fp16 engines' above): the same
    greedy tokens as eager, one prompt after another."""
    compiled = LLMEngine.from_config(EngineConfig(threads=1, dtype="float32", warmup=False, compile=True,
                                                  max_num_seqs=1, kv_cache_bytes=16 << 20))
    eager = LLMEngine.from_config(EngineConfig(threads=1, dtype="float32", warmup=False, max_num_seqs=1,
                                               kv_cache_bytes=16 << 20))
    assert compiled.runner.compiled is not None
    for prompt in (PROMPTS[0], PROMPTS[1], PROMPTS[2]):
        assert greedy(compiled, [prompt], 16) == greedy(eager, [prompt], 16)
    compiled.add_request("x", PROMPTS[3], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    compiled.step()  # the prefill: eager
    with profile() as prof:
        compiled.step()
    assert compiled_regions(prof)


def test_bfloat16_weights_compile_one_row_through_the_gemv_nearer_float32_than_eager(monkeypatch):
    """The built-in model in bfloat16 (the default dtype on AVX512_BF16 / AMX CPUs) with --compile: the one-row
    graph traces float_gemv's GEMV for all 24 projections and the tied head (no extern GEMM), and its logits are
    within bfloat16 rounding of float32 eager's on the same weights (the built-in model's are bf16), no further
    off than bf16 eager's (measured: 1.6-1.9e-3 relative against eager's 2.0-3.0e-3). Greedy tokens are not
    compared: in bf16 a one-ulp change in a logit (0.0625 at 10) can swap near-tied tokens, whichever is nearer."""
    traced = []
    real = float_gemv.gemv
    monkeypatch.setattr(float_gemv, "gemv", lambda x, w: traced.append(tuple(w.shape)) or real(x, w))
    kw = dict(threads=1, warmup=False, max_num_seqs=1)
    compiled = LLMEngine.from_config(EngineConfig(dtype="bfloat16", compile=True, kv_cache_bytes=8 << 20, **kw))
    reference = LLMEngine.from_config(EngineConfig(dtype="float32", kv_cache_bytes=16 << 20, **kw))
    runner, ref = compiled.runner, reference.runner
    assert runner.compiled is not None and runner.kv_caches[0].dtype == torch.bfloat16
    layers = len(runner.model.layers)
    assert len(traced) == 4 * layers + 1 and traced[-1] == tuple(runner.model.embed_tokens.weight.shape)
    for length in (9, 40):
        ids, positions, meta, first = decode_inputs(runner, 1, length)
        gen = torch.Generator().manual_seed(length)
        for cache, ref_cache in zip(runner.kv_caches, ref.kv_caches, strict=True):
            values = torch.randn(cache[:, :, first:].shape, generator=gen).bfloat16()
            cache[:, :, first:] = values
            ref_cache[:, :, first:first + values.shape[2]] = values.float()  # the same slots (twice the pool's bytes)
        with torch.inference_mode():
            with profile() as prof:
                got = runner.compiled(ids, positions, runner.kv_caches, meta).float()
            eager = runner.model.compute_logits(runner.model(ids, positions, runner.kv_caches, meta)).float()
            want = ref.model.compute_logits(ref.model(ids, positions, ref.kv_caches, meta))
        for cache in (*runner.kv_caches, *ref.kv_caches):
            cache[:, :, first:] = 0
        assert compiled_regions(prof)
        error, eager_error = (got - want).norm() / want.norm(), (eager - want).norm() / want.norm()
        assert error < 4e-3 and error < 1.25 * eager_error, (error, eager_error)  # bf16: 2^-8 = 3.9e-3 an element
        assert got.argmax() == want.argmax()


def compiled_regions(prof) -> list[str]:
    return [e.name for e in prof.events() if e.name.startswith("Torch-Compiled Region")]


def decode_inputs(runner, rows: int, length: int):
    """A decode batch over the pool's last slots (no request's: the prefix cache keeps what the others wrote)."""
    first_slot = runner.num_kv_blocks * runner.block_size - rows * length
    gen = torch.Generator().manual_seed(rows * 100 + length)
    ids = torch.randint(10, 400, (rows,), generator=gen)
    slots = first_slot + torch.arange(rows * length).view(rows, length)
    lengths = torch.randint(2, length + 1, (rows,), generator=gen)
    lengths[0] = length
    positions = lengths - 1
    mask = torch.where(torch.arange(length)[None, :] < lengths[:, None], 0.0, float("-inf"))
    meta = AttentionMetadata(slots[torch.arange(rows), positions].contiguous(), rows, slots,
                             mask[:, None, None, :] if rows > 1 else None)
    return ids, positions, meta, first_slot


@pytest.mark.parametrize("rows,length", [(1, 9), (3, 21), (6, 40)])
def test_logits_match_eager_within_float_tolerance(engines, rows, length):
    runner = engines[0].runner
    ids, positions, meta, first = decode_inputs(runner, rows, length)
    torch.set_num_threads(runner.step_threads(rows))  # as execute would: the graphs are per thread count
    caches = runner.kv_caches
    gen = torch.Generator().manual_seed(7)
    for cache in caches:
        cache[:, :, first:] = torch.randn(cache[:, :, first:].shape, generator=gen)
    with torch.inference_mode():
        want = runner.model.compute_logits(runner.model(ids, positions, caches, meta))  # the head is in the graph
        with profile() as prof:
            got = runner.compiled(ids, positions, caches, meta)
    for cache in caches:
        cache[:, :, first:] = 0
    assert compiled_regions(prof)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_inputs_of_another_dtype_or_layout_take_the_graph_as_the_runner_gives_them(engines):
    """int32 ids, a column-major slot table: `args` hands the graph int64, row-major inputs (dynamo checks only
    the guards that tell the graphs apart, so it must), and the logits are eager's."""
    runner = engines[0].runner
    ids, positions, meta, first = decode_inputs(runner, 2, 9)
    torch.set_num_threads(runner.step_threads(2))
    with torch.inference_mode():
        want = runner.model.compute_logits(runner.model(ids, positions, runner.kv_caches, meta))
        odd = AttentionMetadata(meta.slot_mapping.int(), 2, meta.decode_slots.t().contiguous().t(), meta.decode_mask)
        with profile() as prof:
            got = runner.compiled(ids.int(), positions.int(), runner.kv_caches, odd)
        assert compiled_regions(prof)
    for cache in runner.kv_caches:
        cache[:, :, first:] = 0
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_context_of_one_token_runs_eager(engines):
    """A one-token prompt's first step is a 1-token chunk with a context of 1: no graph was traced for that
    (size 1 is specialized), so it runs eager, with eager's logits; and a one-token prompt decodes as eager does."""
    compiled, eager = engines
    runner = compiled.runner
    torch.set_num_threads(runner.step_threads(1))
    slots = torch.tensor([[runner.num_kv_blocks * runner.block_size - 1]])
    meta = AttentionMetadata(slots[:, 0].contiguous(), 1, slots)
    ids, positions = torch.tensor([42]), torch.tensor([0])
    with torch.inference_mode():
        want = runner.model.compute_logits(runner.model(ids, positions, runner.kv_caches, meta))
        with profile() as prof:
            got = runner.compiled(ids, positions, runner.kv_caches, meta)
    assert not compiled_regions(prof) and torch.equal(got, want)
    for cache in runner.kv_caches:
        cache[:, :, slots.reshape(-1)] = 0
    assert greedy(compiled, [[42]], 8) == greedy(eager, [[42]], 8)


def test_a_failing_compile_serves_eager(engines, monkeypatch, caplog):
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(compiled_decode, "BACKEND", broken)
    with caplog.at_level(logging.WARNING, logger=compiled_decode.__name__):
        engine = LLMEngine.from_config(config(compile=True))
    assert engine.runner.compiled is None and "compile: failed" in caplog.text
    assert greedy(engine, PROMPTS[:2], 6) == greedy(engines[1], PROMPTS[:2], 6)


def test_a_model_it_cannot_take_stays_eager(caplog):
    loaded = load_model(None, quantize="fp16")
    loaded.model.layers[0].mlp.down_proj = Opaque(loaded.model.layers[0].mlp.down_proj)  # a kind it cannot know
    with caplog.at_level(logging.WARNING, logger=compiled_decode.__name__):
        assert CompiledDecode.create(loaded.model, []) is None
    assert "Opaque" in caplog.text
    for quantize in ("fp16", "int8", "int4"):
        assert compiled_decode.unsupported_layers(load_model(None, quantize=quantize).model) == []
    assert not any(isinstance(m, Fp16Linear) for m in load_model(None).model.modules())


class Opaque(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@pytest.mark.skipif(not onednn_linear.available(), reason="this torch has no oneDNN linear ops")
def test_an_int4_model_on_onednn_compiles_a_graph_per_kernel():
    """--quantize int4 in bfloat16 with onednn_linear on (RowSplitLinear: the int4 kernel up to 6 rows, the
    reordered bf16 copy past them, as the custom op seedance::packed_linear): graphs for 1, 2 and 7 rows, each
    calling the kernel eager calls at that many rows, within bf16 rounding of eager's logits, and the same
    greedy tokens over 8 -> 1 streams but where eager's two likeliest are within bf16 rounding of a tie."""
    kw = dict(compile=True, quantize="int4", dtype="bfloat16", onednn_linear="on", max_num_seqs=8)
    compiled = LLMEngine.from_config(config(**kw))
    eager = LLMEngine.from_config(config(**{**kw, "compile": False}))
    runner = compiled.runner
    assert runner.compiled is not None
    assert compiled_decode.row_splits(runner.model) == {onednn_linear.INT4_ABOVE_ROWS + 1}
    int4 = "aten::_weight_int4pack_mm_for_cpu"
    for rows, length, kernel in ((1, 9, int4), (3, 21, int4),
                                 (8, 30, "seedance::packed_linear")):
        ids, positions, meta, first = decode_inputs(runner, rows, length)
        gen = torch.Generator().manual_seed(rows)
        for cache in runner.kv_caches:
            cache[:, :, first:] = torch.randn(cache[:, :, first:].shape, generator=gen).to(cache.dtype)
        with torch.inference_mode():
            with profile() as prof:
                got = runner.compiled(ids, positions, runner.kv_caches, meta)
            want = runner.model.compute_logits(runner.model(ids, positions, runner.kv_caches, meta))
        for cache in runner.kv_caches:
            cache[:, :, first:] = 0
        assert compiled_regions(prof), rows
        assert any(e.name == kernel for e in prof.events()), (rows, kernel)
        assert (got.float() - want.float()).norm() < 0.02 * want.float().norm(), rows
    prompts = [list(range(5 + 7 * i, 30 + 9 * i)) for i in range(8)]
    # bf16 all through: the graph's fused ops round differently from eager's (and eager's attention runs over
    # whole blocks, the graph's over the longest context), which may break a near tie the other way
    same_but_near_ties(eager, prompts, greedy(compiled, prompts, 8), greedy(eager, prompts, 8))


def test_the_setting_is_off_by_default_and_read_from_the_environment():
    from seedance.server.http.config import ServerConfig

    assert EngineConfig().compile is False and ServerConfig.load(env={}).engine.compile is False
    assert ServerConfig.load(env={"SEEDANCE_COMPILE": "1"}).engine.compile is True


def test_an_int8_model_compiles_one_row_through_the_gemv(monkeypatch):
    """--quantize int8 (fbgemm Int8Linear): the same greedy tokens as eager (1 and 4 -> 1 rows); one row runs
    int8_gemv's GEMV, within float rounding of the float product of the int8 weights (measured 2.4e-7 relative;
    eager's two fbgemm passes are further off: 7-bit activations), and 3 rows fbgemm as the custom op, eager's."""
    compiled = LLMEngine.from_config(config(compile=True, quantize="int8"))
    eager = LLMEngine.from_config(config(quantize="int8"))
    runner = compiled.runner
    assert runner.compiled is not None
    for prompts in (PROMPTS, [PROMPTS[1]]):
        assert greedy(compiled, prompts) == greedy(eager, prompts)
    for rows, length in ((1, 9), (3, 21)):
        ids, positions, meta, first = decode_inputs(runner, rows, length)
        gen = torch.Generator().manual_seed(8)
        for cache in runner.kv_caches:
            cache[:, :, first:] = torch.randn(cache[:, :, first:].shape, generator=gen)
        with torch.inference_mode():
            with profile() as prof:
                got = runner.compiled(ids, positions, runner.kv_caches, meta)
            fbgemm = [e for e in prof.events() if e.name == "seedance::int8_linear"]
            if rows == 1:
                with monkeypatch.context() as m:  # the float product of the same int8 weights
                    m.setattr(int8_linear.Int8Linear, "_two_passes", lambda self, x: x @ self.dequantize().T)
                    want = runner.model.compute_logits(runner.model(ids, positions, runner.kv_caches, meta))
                assert not fbgemm  # the projections and the head: all GEMV
            else:
                want = runner.model.compute_logits(runner.model(ids, positions, runner.kv_caches, meta))
                assert fbgemm
        for cache in runner.kv_caches:
            cache[:, :, first:] = 0
        assert compiled_regions(prof)
        if rows == 1:
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        else:  # the graph's float rounding (fused RMSNorm, FMA) moves a few activations across a step of fbgemm's
            # 7-bit grid, so single outputs move by up to a few % (measured 2.7 %) while the whole stays close
            assert (got - want).norm() < 1e-4 * want.norm()  # measured 2.1e-5


@pytest.mark.skipif(not onednn_linear.available(), reason="this torch has no oneDNN linear ops")
def test_compile_takes_float_projections_back_to_plain_weights():
    """A bfloat16 model on oneDNN's reordered weights (onednn_linear on) is compiled on its plain weights (the
    one-row graph's GEMV reads them): every float projection an nn.Linear again with the very weights, the tied
    head the embedding itself, the logits eager's on the reordered weights."""
    plain = load_model(None, dtype="bfloat16").model
    packed = load_model(None, dtype="bfloat16", onednn_linear="on").model
    assert isinstance(packed.lm_head, onednn_linear.PackedLinear)
    ids, positions = torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2])
    slots = torch.arange(3)
    meta = AttentionMetadata(slots, 0, None, None, [PrefillChunk(0, 3, 0, None)])
    heads, dim = plain.config.num_key_value_heads, plain.layers[0].self_attn.head_dim
    caches = [torch.zeros(kv_cache_shape(16, heads, dim), dtype=torch.bfloat16) for _ in plain.layers]
    with torch.inference_mode():
        before = packed.compute_logits(packed(ids, positions, caches, meta))
        assert compiled_decode.plain_float_projections(packed) == 4 * len(packed.layers) + 1
        after = packed.compute_logits(packed(ids, positions, caches, meta))
    assert packed.lm_head is None
    assert not any(isinstance(m, onednn_linear.PackedLinear) for m in packed.modules())
    for (name, a), (_, b) in zip(plain.named_parameters(), packed.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    torch.testing.assert_close(after, before, atol=0, rtol=0)
