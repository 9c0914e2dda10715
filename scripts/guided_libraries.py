"""Per-token mask cost of the constrained-decoding libraries (the choice in docs/openai-compatibility.md): llguidance
and outlines-core on the built-in and SmolLM2 tokenizers, a random walk through one JSON schema's grammar.
outlines-core is not a dependency: `pip install outlines-core` first (xgrammar pulls triton, so it is not run).

    python scripts/guided_libraries.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.models.tokenizer import TextTokenizer

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"], "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}}


def tokenizers() -> dict[str, TextTokenizer]:
    out = {"built-in": TextTokenizer.from_dir(BUILTIN_MODEL_DIR)}
    try:
        from seedance.models.gguf_loader import open_gguf
        from seedance.models.gguf_tokenizer import gguf_tokenizer
        from seedance.models.registry import cached_path

        path = Path(cached_path("smollm2"))
        out["smollm2"] = gguf_tokenizer(open_gguf(path).reader, path)
    except FileNotFoundError:
        print("smollm2 not pulled: `seedance models pull smollm2`")
    return out


def walk(mask, advance, vocab: int, eos: int, rng, steps: int = 200) -> list[float]:
    """Time mask() at each step, then advance by a random allowed token (of the first 50)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        allowed = mask()
        times.append(time.perf_counter() - start)
        if allowed is None:
            break
        advance(int(rng.choice(allowed[:50])) if len(allowed) else eos)
    return times


def llguidance_run(tk: TextTokenizer, rng) -> str:
    import llguidance
    from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

    vocab, eos = tk.vocab_size, sorted(tk.eos_token_ids)
    start = time.perf_counter()
    ll = llguidance.LLTokenizer(tk.backend.to_str(), n_vocab=vocab, eos_token=eos)
    built = time.perf_counter()
    matcher = llguidance.LLMatcher(ll, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA))
    compiled = time.perf_counter()
    bitmask = allocate_token_bitmask(1, vocab)

    def mask():
        if matcher.is_stopped():
            return None
        fill_next_token_bitmask(matcher, bitmask, 0)
        return np.flatnonzero(np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")[:vocab])

    times = walk(mask, matcher.consume_token, vocab, eos[0], rng)
    return (f"llguidance: tokenizer {built - start:.3f} s, compile {1000 * (compiled - built):.1f} ms, mask median "
            f"{np.median(times) * 1e6:.0f} us p99 {np.percentile(times, 99) * 1e6:.0f} us over {len(times)} steps")


def outlines_run(tk: TextTokenizer, rng) -> str:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    eos = sorted(tk.eos_token_ids)
    start = time.perf_counter()
    tokens: dict[str, list[int]] = {}
    for text, i in tk.backend.get_vocab(with_added_tokens=True).items():
        if i not in tk.eos_token_ids:
            tokens.setdefault(text, []).append(i)
    vocabulary = Vocabulary(eos[0], tokens)
    built = time.perf_counter()
    guide = Guide(Index(build_regex_from_schema(json.dumps(SCHEMA)), vocabulary))
    compiled = time.perf_counter()

    def mask():
        return None if guide.is_finished() else guide.get_tokens()

    times = walk(mask, guide.advance, tk.vocab_size, eos[0], rng)
    return (f"outlines-core: vocabulary {built - start:.3f} s, index {1000 * (compiled - built):.0f} ms, mask median "
            f"{np.median(times) * 1e6:.0f} us p99 {np.percentile(times, 99) * 1e6:.0f} us over {len(times)} steps")


def main() -> None:
    for name, tk in tokenizers().items():
        print(f"{name} (vocabulary {tk.vocab_size}):")
        print("  " + llguidance_run(tk, np.random.default_rng(0)))
        try:
            print("  " + outlines_run(tk, np.random.default_rng(0)))
        except ImportError:
            print("  outlines-core not installed")


if __name__ == "__main__":
    main()
