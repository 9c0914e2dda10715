"""The default weight/KV dtype for a device: bfloat16 where the hardware computes it natively (AMX or
AVX512_BF16 on x86 CPUs, bf16-capable GPUs), float32 elsewhere. On a CPU without them (AVX2 only) torch
emulates bf16 matmuls through conversions and they run several times slower than float32 (docs/benchmarks.md,
"Precision"), so there the default stays float32. A model whose projections run on fbgemm's int8 / fp16 GEMMs
(a Q8_0 GGUF under `auto`, `--quantize int8|fp16`) takes float32 everywhere: those GEMMs take float32
activations, and bfloat16 around them only adds casts and slower elementwise ops (SmolLM2 int8 at one stream,
loaded AVX-512 box: 28 tokens per CPU-second in float32, 19 in bfloat16; docs/model.md, "Formats"). Sampling
and logprobs are float32 whatever the model runs in.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from seedance.models.registry import DTYPE_NAMES

BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def default_dtype(device: str, flags: frozenset[str] | None = None, fbgemm: bool = False) -> str:
    """fbgemm: the model's projections run on fbgemm's float32-activation GEMMs (int8 / fp16), CPU only."""
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if fbgemm:
        return "float32"
    return "bfloat16" if (cpu_flags() if flags is None else flags) & BF16_CPU_FLAGS else "float32"


def resolve_dtype(name: str, device: str, fbgemm: bool = False) -> str:
    """'auto' → default_dtype(device, fbgemm=...); any other name must be one of DTYPE_NAMES."""
    if name == "auto":
        return default_dtype(device, fbgemm=fbgemm)
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPE_NAMES)}")
    return name
