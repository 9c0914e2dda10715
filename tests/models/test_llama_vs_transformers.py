"""Correctness oracle: our paged runner's logits equal transformers' own forward."""

from __future__ import annotations

import pytest
import torch
import transformers

from seedance.engine.block_manager import BlockManager
from seedance.engine.config import EngineConfig
from seedance.engine.model_runner import TorchModelRunner
from seedance.engine.sampling_params import SamplingParams
from seedance.engine.scheduler import ScheduledChunk
from seedance.engine.sequence import Sequence
from seedance.models.loader import BUILTIN_MODEL_DIR, load_model
from seedance.models.tokenizer import TextTokenizer

ATOL = 2e-4


def save_random_model(tmp_path, family: str):
    torch.manual_seed(0)
    common = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    if family == "llama":
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    elif family == "qwen2":
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.MistralConfig(**common, sliding_window=None)
        model = transformers.MistralForCausalLM(config)
    # Random init leaves biases at zero; make them count so a missed bias would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path)
    return model.eval()


class PagedHarness:
    """Drive the real runner (scheduler-shaped chunks, block manager, paged cache) and keep all logits."""

    def __init__(self, model_dir, block_size: int = 4):
        loaded = load_model(model_dir)
        self.config = EngineConfig(block_size=block_size, num_kv_blocks=128)
        self.runner = TorchModelRunner(loaded, self.config)
        self.bm = BlockManager(128, block_size, enable_prefix_caching=False)

    def new_seq(self, token_ids, rid):
        return Sequence(rid, token_ids, SamplingParams(temperature=0.0))

    @torch.inference_mode()
    def run(self, chunks: list[tuple[Sequence, int]]) -> list[torch.Tensor]:
        """Compute the given (sequence, num_tokens) chunks in one step; logits for every token, per chunk."""
        scheduled = []
        for seq, n in chunks:
            assert self.bm.allocate(seq, n)
            scheduled.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
        batch = self.runner.prepare(scheduled)
        hidden = self.runner.model(batch.input_ids, batch.positions, self.runner.kv_caches, batch.meta)
        logits = self.runner.model.compute_logits(hidden)
        # prepare() orders decodes (1 token) before prefill chunks
        order = [c for c in scheduled if c.num_tokens == 1] + [c for c in scheduled if c.num_tokens > 1]
        out, offset = {}, 0
        for c in order:
            out[id(c)] = logits[offset : offset + c.num_tokens]
            offset += c.num_tokens
        for seq, n in chunks:
            seq.num_computed_tokens += n
        return [out[id(c)] for c in scheduled]


def hf_logits(model, token_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_chunked_prefill_and_decode_match_transformers(tmp_path, family):
    hf = save_random_model(tmp_path, family)
    harness = PagedHarness(tmp_path)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 512, (37,), generator=gen).tolist()
    expected = hf_logits(hf, tokens)

    seq = harness.new_seq(tokens, "a")
    got = []
    for n in (11, 9, 6):  # prefill in uneven chunks that straddle block boundaries
        got.append(harness.run([(seq, n)])[0])
    for _ in range(37 - 26):  # then one token at a time, the decode path
        got.append(harness.run([(seq, 1)])[0])
    torch.testing.assert_close(torch.cat(got), expected, atol=ATOL, rtol=1e-4)


def test_mixed_batch_of_different_lengths_matches_transformers(tmp_path):
    hf = save_random_model(tmp_path, "llama")
    harness = PagedHarness(tmp_path)
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(0, 512, (23,), generator=gen).tolist()
    b = torch.randint(0, 512, (9,), generator=gen).tolist()
    c = torch.randint(0, 512, (30,), generator=gen).tolist()
    sa, sb, sc = harness.new_seq(a, "a"), harness.new_seq(b, "b"), harness.new_seq(c, "c")
    harness.run([(sa, 20), (sb, 8)])
    # One step: two decodes of different context lengths plus a fresh prefill of a third sequence.
    la, lb, lc = harness.run([(sa, 1), (sb, 1), (sc, 30)])
    torch.testing.assert_close(la[0], hf_logits(hf, a[:21])[-1], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(lb[0], hf_logits(hf, b)[-1], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(lc, hf_logits(hf, c), atol=ATOL, rtol=1e-4)


def test_builtin_model_matches_transformers():
    hf = transformers.AutoModelForCausalLM.from_pretrained(BUILTIN_MODEL_DIR, dtype=torch.float32).eval()
    harness = PagedHarness(BUILTIN_MODEL_DIR, block_size=16)
    tokens = TextTokenizer.from_dir(BUILTIN_MODEL_DIR).encode(
        "And God said, Let there be light: and there was light. And God saw the light, that it was good."
    )
    expected = hf_logits(hf, tokens)
    seq = harness.new_seq(tokens, "x")
    got = [harness.run([(seq, len(tokens) - 3)])[0]]
    got += [harness.run([(seq, 1)])[0] for _ in range(3)]
    torch.testing.assert_close(torch.cat(got), expected, atol=ATOL, rtol=1e-4)
