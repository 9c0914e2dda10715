"""SmolLM2-135M-Instruct (Q4_1 GGUF, `seedance models pull smollm2`) against transformers' own GGUF loading:
the same tokenizer ids on 1,000 varied strings, the same first 32 greedy tokens of 3 chat prompts on the
dequantized-float path, a stated agreement on the `auto` path (int4 kept on AVX-512, fp16 on AVX2), and
/v1/embeddings' vectors."""

from __future__ import annotations

import pytest
import torch

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams
from seedance.models.quantized_linear import is_quantized
from tests.models.test_gguf import _strings

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three primary colours."}],
]
N = 32


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)


@pytest.fixture(scope="module")
def hf_model(smollm2_path):
    """transformers' own GGUF loading (it dequantizes Q4_1 to float32)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_greedy(hf_model, hf_tokenizer):
    """transformers' greedy ids per chat."""
    model = hf_model
    out = []
    for chat in CHATS:
        ids = hf_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=N, do_sample=False,
                                 pad_token_id=hf_tokenizer.pad_token_id)  # stops after EOS (<|im_end|>)
        out.append((list(ids), gen[0, len(ids):].tolist()))
    return out


def ours(path, quantize: str) -> tuple[LLMEngine, list[list[int]], list[list[int]]]:
    # float32 explicitly: the oracle is transformers in float32, and the default dtype follows the CPU
    engine = LLMEngine.from_config(EngineConfig(model=str(path), quantize=quantize, num_kv_blocks=64, warmup=False,
                                                dtype="float32"))
    prompts, out = [], {}
    for i, chat in enumerate(CHATS):
        ids = engine.tokenizer.apply_chat_template(chat)
        prompts.append(ids)
        engine.add_request(str(i), ids, SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True))
        out[str(i)] = []
    while engine.has_work():
        for event in engine.step():
            if event.token_id >= 0:
                out[event.request_id].append(event.token_id)
    return engine, prompts, [out[str(i)] for i in range(len(CHATS))]


def test_tokenizer_matches_transformers_gguf_tokenizer(smollm2_path, hf_tokenizer):
    """transformers (5.24) builds this file's tokenizer without its `tokenizer.ggml.pre` = "smollm" split, which
    isolates every digit (llama.cpp's llama-vocab.cpp; SmolLM2's own tokenizer.json: Digits(individual_digits)
    then ByteLevel). So: equal ids on every string without digits as transformers has it, and on all 1,000
    with transformers' tokenizer given SmolLM2's own pre-tokenizer."""
    from copy import deepcopy

    from gguf import GGUFReader
    from tokenizers import pre_tokenizers

    from seedance.models.gguf_tokenizer import gguf_tokenizer

    tok = gguf_tokenizer(GGUFReader(str(smollm2_path)), smollm2_path)
    fixed = deepcopy(hf_tokenizer)
    fixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    strings = _strings(1000, 1)
    assert sum(any(c.isdigit() for c in s) for s in strings) < 500  # most strings are compared both ways
    for text in strings:
        ids = tok.encode(text)
        assert ids == fixed.encode(text, add_special_tokens=False), text
        if not any(c.isdigit() for c in text):
            assert ids == hf_tokenizer.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True), text
    for chat in CHATS:
        assert tok.apply_chat_template(chat) == list(
            hf_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False))


def test_dequantized_path_equals_transformers_for_32_greedy_tokens(smollm2_path, hf_greedy):
    _, prompts, got = ours(smollm2_path, "none")
    assert prompts == [p for p, _ in hf_greedy]
    assert [g[: len(h)] for g, (_, h) in zip(got, hf_greedy, strict=True)] == [h for _, h in hf_greedy]
    assert sum(len(h) for _, h in hf_greedy) >= 24  # the comparison is not vacuous


def test_auto_quantized_path_agrees(smollm2_path, hf_greedy):
    """`auto`: Q4_1 stays int4 (exact) with the Q8_0 embedding as int8 rows (lossy) where the int4 kernel is
    AVX-512, else it loads as fp16: greedy tokens agree with transformers' float path up to EOS / 32 tokens on
    at least 2 of the 3 chats, and the first 8 on all."""
    engine, _, got = ours(smollm2_path, "auto")
    assert is_quantized(engine.runner.model.layers[0].mlp.down_proj)
    expected = [h for _, h in hf_greedy]
    got = [g[: len(h)] for g, h in zip(got, expected, strict=True)]
    assert sum(a == b for a, b in zip(got, expected, strict=True)) >= 2
    assert all(a[:8] == b[:8] for a, b in zip(got, expected, strict=True))


def test_embeddings_match_transformers_mean_pooled_last_hidden_state(smollm2_path, hf_model, hf_tokenizer):
    """The served (`auto`: int4 or fp16) model's mean-pooled embedding against transformers' float forward."""
    from seedance.models.loader import load_model
    from seedance.models.pooling import mean_pooled_embedding

    model = load_model(str(smollm2_path), "cpu", "float32").model
    vectors = []
    for text in ("The capital of France is Paris.", "A cat sat on the mat.", "Paris is the capital of France."):
        ids = hf_tokenizer.encode(text, add_special_tokens=False)
        with torch.inference_mode():
            hidden = hf_model.model(torch.tensor([ids])).last_hidden_state[0]
        want = torch.nn.functional.normalize(hidden.mean(0), dim=0)
        got = mean_pooled_embedding(model, ids)
        assert got.shape == (576,) and float(got @ want) > 0.999
        vectors.append(got)
    # A real model: the paraphrase is nearer than the unrelated sentence.
    assert float(vectors[0] @ vectors[2]) > float(vectors[0] @ vectors[1])
