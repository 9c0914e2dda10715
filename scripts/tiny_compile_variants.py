"""Variants of the compiled decode step on the built-in model, in one engine, alternating step by step (so a
loaded box slows them alike): CPU ms per decode step, medians. docs/benchmarks.md ("Built-in tiny model, single
stream") has a run:

    python scripts/tiny_compile_variants.py eager,nohead,head,cppw,cppw-skipguards --rounds 4

eager: no graph; nohead: the model compiled, the head (final RMSNorm + lm_head) eager after it, as before the
head moved into the graph; head: model and head in the graph, inductor's Python wrapper; cppw: the same with
inductor's C++ wrapper (compiled_decode.OPTIONS, the shipped one); freeze / freeze-maxautotune: inductor's
`freezing` (and `max_autotune`) on top of head; cppw-skipguards: cppw under dynamo's `skip_guard_eval_unsafe`
stance, only the guards that tell the graphs apart checked (CompiledDecode as shipped); every other variant
checks all its guards. Float32 weights by default;
--quantize fp16 measures one variant per process (the fp16 layers' handles are graph constants).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types

import torch

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams
from seedance.models import compiled_decode
from seedance.models.paged_attention import AttentionMetadata


def _hidden(model, input_ids, positions, kv_caches, slot_mapping, decode_slots, decode_mask):
    """compiled_decode._decode without the head (what the graph held before it took the head)."""
    mask = None if decode_mask is None else decode_mask[:, None, None, :]
    meta = AttentionMetadata(slot_mapping, input_ids.shape[0], decode_slots, mask)
    return model(input_ids, positions, kv_caches, meta)


def variant(name: str, runner) -> compiled_decode.CompiledDecode | None:
    if name == "eager":
        return None
    options = {"cpp_wrapper": name.startswith("cppw")}
    if name.startswith("freeze"):
        options["freezing"] = True
    if name == "freeze-maxautotune":
        options["max_autotune"] = True
    compiled = compiled_decode.CompiledDecode(runner.model)
    fn = _hidden if name == "nohead" else compiled_decode._decode
    compiled.code = fn.__code__.replace(co_name=f"_variant_{name.replace('-', '_')}")
    compiled.fn = torch.compile(types.FunctionType(compiled.code, compiled_decode._decode.__globals__),
                                backend="inductor", dynamic=True, options=options)
    start = time.perf_counter()
    compiled.warm(runner.kv_caches, lambda rows: torch.get_num_threads(), 2)
    print(json.dumps({"variant": name, "compile_s": round(time.perf_counter() - start, 1)}), flush=True)
    inner = compiled.fn
    if name.endswith("skipguards"):
        return compiled  # CompiledDecode.__call__ runs it under the stance, as shipped

    def guarded(*args):  # every guard checked: the stance __call__ sets, undone for this variant
        with torch.compiler.set_stance(skip_guard_eval_unsafe=False):
            out = inner(*args)
        return runner.model.compute_logits(out) if name == "nohead" else out

    compiled.fn = guarded
    return compiled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", help="comma list: eager, nohead, head, cppw, freeze, freeze-maxautotune, "
                                     "cppw-skipguards")
    ap.add_argument("--rounds", type=int, default=4, help="requests of 128 greedy tokens, steps alternating")
    ap.add_argument("--quantize", default="none")
    args = ap.parse_args()
    engine = LLMEngine.from_config(EngineConfig(threads=1, dtype="float32", quantize=args.quantize))
    engine.warmup()
    runner = engine.runner
    names = args.variants.split(",")
    variants = {name: variant(name, runner) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        engine.add_request(f"r{r}", list(range(100 + r, 164 + r)),
                           SamplingParams(max_tokens=129, temperature=0, ignore_eos=True))
        engine.step()  # the prefill
        k = 0
        while engine.has_work():
            name = names[k % len(names)]
            k += 1
            runner.compiled = variants[name]
            cpu = time.thread_time()
            engine.step()
            times[name].append(time.thread_time() - cpu)
    print(json.dumps({"quantize": args.quantize, "cpu_ms_per_step": {
        name: round(statistics.median(v) * 1e3, 3) for name, v in times.items()}}), flush=True)


if __name__ == "__main__":
    main()
