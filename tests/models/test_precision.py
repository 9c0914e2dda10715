"""The default dtype per CPU: bfloat16 only where the CPU computes it natively, float32 otherwise."""

from __future__ import annotations

import pytest
import torch

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.models.precision import cpu_flags, default_dtype, resolve_dtype


def test_default_dtype_follows_the_cpu_flags(tmp_path):
    assert default_dtype("cpu", frozenset({"avx2", "fma", "amx_bf16", "amx_tile"})) == "bfloat16"
    assert default_dtype("cpu", frozenset({"avx512f", "avx512_bf16"})) == "bfloat16"
    assert default_dtype("cpu", frozenset({"avx2", "fma", "avx512f"})) == "float32"
    assert default_dtype("cpu", frozenset()) == "float32"
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "sse", "avx2", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_resolve_dtype():
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16" and resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("auto", "cpu") == default_dtype("cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", "cpu")


@pytest.mark.parametrize("name", ["auto", "bfloat16"])
def test_engine_runs_in_the_resolved_dtype(name):
    engine = LLMEngine.from_config(EngineConfig(dtype=name, num_kv_blocks=16, warmup=False))
    expected = getattr(torch, resolve_dtype(name, "cpu"))
    assert engine.config.dtype == resolve_dtype(name, "cpu")
    assert engine.runner.model.norm.weight.dtype == expected
    assert engine.runner.kv_caches[0][0].dtype == expected


@pytest.mark.parametrize(("cores", "threads"), [({0}, 1), ({0, 1}, 1), (set(range(16)), 15)])
def test_engine_threads_leave_a_core_for_the_event_loop(monkeypatch, cores, threads):
    from seedance.engine import model_runner

    monkeypatch.setattr(model_runner.os, "sched_getaffinity", lambda pid: cores)
    assert model_runner.default_threads() == threads


def test_fbgemm_models_default_to_float32():
    """fbgemm's int8 / fp16 GEMMs take float32 activations: bfloat16 around them only adds casts."""
    assert default_dtype("cpu", frozenset({"avx512_bf16"}), fbgemm=True) == "float32"
    assert default_dtype("cpu", frozenset({"avx512_bf16"}), fbgemm=False) == "bfloat16"
    assert resolve_dtype("bfloat16", "cpu", fbgemm=True) == "bfloat16"  # an explicit dtype stands


def test_engine_takes_the_loaders_dtype_for_an_int8_model():
    engine = LLMEngine.from_config(EngineConfig(dtype="auto", quantize="int8", num_kv_blocks=16, warmup=False))
    assert engine.config.dtype == "float32" and engine.runner.kv_caches[0][0].dtype == torch.float32
