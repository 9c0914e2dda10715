"""Do quantized / bf16 SmolLM2 variants answer a few chat prompts as the float32 model does (greedy)?

    python scripts/greedy_agreement.py --reference /path/f32-dir --variant int8=/path/f32-dir:int8 \
        --variant q8_0=/path/model-q8_0.gguf --variant bf16=/path/f32-dir@bfloat16

A variant is PATH[:QUANTIZE][@DTYPE][+compile][+plain] (+compile: the compiled decode step, EngineConfig.compile;
the reference may take it too; +plain: onednn_linear off, the plain bf16 / int4 kernels, where the default `auto`
reorders bf16 weights on an AMX CPU and gives int4 models a bf16 copy for steps of 7+ rows).
--one-at-a-time runs each prompt alone (every decode step one row: the C = 1 path,
which a compiled int8 model runs on its own GEMV) instead of all in one batch. Prints, per variant, how many
answers equal the reference's token for token and the length of the common prefix of each; writes the answers
as JSON with --output. --int8-one-pass runs every fbgemm int8 layer as one pass with 8-bit activations
(reduce_range=False, as VNNI allows) instead of Int8Linear's two: the question docs/model.md ("On AVX-512")
answers with 0 / 8.
"""

from __future__ import annotations

import argparse
import json

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams

PROMPTS = ["What is the capital of France?", "Name three primary colours.", "How many legs does a spider have?",
           "Write a haiku about the sea.", "What is 12 times 12?", "Who wrote Romeo and Juliet?",
           "Give me one tip for better sleep.", "Translate 'good morning' into Spanish."]


def answers(spec: str, max_tokens: int, one_at_a_time: bool = False, kv_cache_bytes: int = 256 << 20):
    plain = spec.endswith("+plain")
    spec = spec.removesuffix("+plain")
    compile_ = spec.endswith("+compile")
    path, _, dtype = spec.removesuffix("+compile").partition("@")
    path, _, quantize = path.partition(":")
    engine = LLMEngine.from_config(EngineConfig(model=path, quantize=quantize or "auto", dtype=dtype or "float32",
                                                warmup=False, kv_cache_bytes=kv_cache_bytes, compile=compile_,
                                                onednn_linear="off" if plain else "auto"))
    out = {}
    for i, prompt in enumerate(PROMPTS):
        ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        engine.add_request(str(i), ids, SamplingParams(max_tokens=max_tokens, temperature=0))
        if one_at_a_time or i == len(PROMPTS) - 1:
            while engine.has_work():
                for event in engine.step():
                    if event.token_id >= 0 and event.token_id not in engine.eos_token_ids:
                        out.setdefault(event.request_id, []).append(event.token_id)
    return [out.get(str(i), []) for i in range(len(PROMPTS))], engine.tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", required=True)
    parser.add_argument("--variant", action="append", default=[], help="NAME=PATH[:QUANTIZE][@DTYPE][+compile]")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--output")
    parser.add_argument("--one-at-a-time", action="store_true", help="each prompt alone: one-row decode steps")
    parser.add_argument("--int8-one-pass", action="store_true",
                        help="fbgemm int8 layers as one 8-bit pass (reduce_range=False), not two")
    parser.add_argument("--kv-cache-bytes", type=int, default=256 << 20,
                        help="the pool (a compiled graph is per pool shape: match a run whose cache is warm)")
    args = parser.parse_args()
    if args.int8_one_pass:
        import torch

        from seedance.models.int8_linear import Int8Linear

        Int8Linear._two_passes = lambda self, x: torch.ops.quantized.linear_dynamic(x, self.packed, False)
    run = {"one_at_a_time": args.one_at_a_time, "kv_cache_bytes": args.kv_cache_bytes}
    ref, tok = answers(args.reference, args.max_tokens, **run)
    report = {"prompts": PROMPTS, **run, "reference": [tok.decode(a) for a in ref], "variants": {}}
    for item in args.variant:
        name, spec = item.split("=", 1)
        got, _ = answers(spec, args.max_tokens, **run)
        prefixes = [next((j for j, (a, b) in enumerate(zip(r, g, strict=False)) if a != b), min(len(r), len(g)))
                    for r, g in zip(ref, got, strict=True)]
        same = sum(r == g for r, g in zip(ref, got, strict=True))
        report["variants"][name] = {"same": same, "common_prefix_tokens": prefixes,
                                    "answers": [tok.decode(a) for a in got]}
        print(f"{name}: {same}/{len(PROMPTS)} answers identical to the reference; common prefix {prefixes}")
    for p, a in zip(PROMPTS, report["reference"], strict=True):
        print(f"  {p!r} -> {a!r}")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
