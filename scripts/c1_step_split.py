"""Where one C = 1 decode step goes: the thread CPU time of the runner's parts (RMSNorms, GEMMs, paged attention,
the head, the sampler, prepare), by wrapping the modules of a loaded engine; the wrappers' own cost lands in
"layers". docs/benchmarks.md ("C = 1 decode") has a run:

    python scripts/c1_step_split.py 1 fp16 /path/smollm2-135m-instruct-f32
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams

acc: dict[str, float] = defaultdict(float)


def wrap(obj, name: str, key: str) -> None:
    inner = getattr(obj, name)

    def timed(*args, **kwargs):
        t = time.thread_time()
        out = inner(*args, **kwargs)
        acc[key] += time.thread_time() - t
        return out

    setattr(obj, name, timed)


def main() -> None:
    threads, quantize, model = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    eng = LLMEngine.from_config(EngineConfig(model=model, threads=threads, quantize=quantize, dtype="float32",
                                             kv_cache_bytes=256 << 20))
    eng.warmup()
    runner, net = eng.runner, eng.runner.model
    wrap(runner, "prepare", "prepare")
    wrap(runner, "sampler", "sampler")
    wrap(runner, "execute", "execute")
    wrap(net, "compute_logits", "head (norm + GEMM)")
    import seedance.models.llama as llama

    wrap(llama, "paged_attention", "paged attention")
    for layer in net.layers:
        wrap(layer, "forward", "layers")
        wrap(layer.input_layernorm, "forward", "RMSNorm")
        wrap(layer.post_attention_layernorm, "forward", "RMSNorm")
        for proj in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            wrap(proj, "forward", "GEMMs (layers)")
    eng.add_request("r", list(range(100, 164)), SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True))
    for _ in range(20):
        eng.step()
    acc.clear()
    steps = 60
    t, cpu = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        eng.step()
    print(f"per step: wall {1000 * (time.perf_counter() - t) / steps:.1f} ms, "
          f"CPU {1000 * (time.thread_time() - cpu) / steps:.1f} ms")
    for key, value in acc.items():
        print(f"  {key}: {1000 * value / steps:.2f} ms")


if __name__ == "__main__":
    main()
