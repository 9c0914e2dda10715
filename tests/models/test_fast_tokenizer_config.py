"""Start-up without transformers: the tokenizer (tokenizers + our jinja2 chat templates) and the plain Llama
config must equal what transformers loads from the same directory, and anything else falls back to it."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers

from seedance.models.hf_config import plain_llama_config
from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.models.tokenizer import TextTokenizer

TEXTS = ["In the beginning God created", "  leading spaces\nand lines\n\n", "naïve café — ünïcödé 🙂", "", "123 4567"]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And God said"}],
]
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}{{ eos_token | tojson }}")


def _model_dir(tmp_path, template: str):
    """The built-in tokenizer with ChatML special tokens and another chat template."""
    d = tmp_path / "tok"
    shutil.copytree(BUILTIN_MODEL_DIR, d)
    (d / "chat_template.jinja").write_text(template)
    tok = json.loads((d / "tokenizer.json").read_text())
    base = len(json.loads((BUILTIN_MODEL_DIR / "tokenizer.json").read_text())["model"]["vocab"])
    for i, content in enumerate(("<|im_start|>", "<|im_end|>")):
        tok["added_tokens"].append({"id": base + i, "content": content, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
    (d / "tokenizer.json").write_text(json.dumps(tok))
    config = json.loads((d / "tokenizer_config.json").read_text())
    config.update(bos_token="<|im_start|>", eos_token="<|im_end|>")
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


def _same_as_transformers(path) -> TextTokenizer:
    ours = TextTokenizer.from_dir(path)
    hf = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    assert ours.hf is None  # the fast path: no transformers tokenizer inside
    for text in TEXTS:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False), text
    for chat in CHATS:
        assert ours.apply_chat_template(chat) == list(hf.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=False)), chat
    assert ours.vocab_size == len(hf)
    assert hf.eos_token_id in ours.eos_token_ids
    return ours


def test_builtin_tokenizer_without_transformers_equals_transformers():
    _same_as_transformers(BUILTIN_MODEL_DIR)


def test_chatml_template_and_special_tokens_equal_transformers(tmp_path):
    ours = _same_as_transformers(_model_dir(tmp_path, CHATML))
    assert ours.special_tokens["eos_token"] == "<|im_end|>"
    assert ours.backend.token_to_id("<|im_end|>") in ours.eos_token_ids


def test_templates_only_transformers_renders_fall_back_to_it(tmp_path):
    template = "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    ours = TextTokenizer.from_dir(_model_dir(tmp_path, template))
    assert ours.hf is not None
    assert ours.apply_chat_template(CHATS[0]) == ours.encode(CHATS[0][0]["content"])


def test_plain_llama_config_equals_transformers(tmp_path):
    ours = plain_llama_config(BUILTIN_MODEL_DIR)
    theirs = transformers.AutoConfig.from_pretrained(str(BUILTIN_MODEL_DIR), local_files_only=True)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                 "attention_bias", "mlp_bias", "model_type"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.rope_parameters["rope_theta"] == theirs.rope_parameters["rope_theta"]
    # a config.json with only the required keys gets transformers' LlamaConfig defaults
    minimal = tmp_path / "minimal"
    minimal.mkdir()
    (minimal / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64,
                                                     "num_attention_heads": 4}))
    ours, theirs = plain_llama_config(minimal), transformers.AutoConfig.from_pretrained(str(minimal))
    for name in ("num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "vocab_size",
                 "max_position_embeddings"):
        assert getattr(ours, name) == getattr(theirs, name), name


@pytest.mark.parametrize("raw", [{"model_type": "qwen2"},
                                 {"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}])
def test_other_configs_go_through_transformers(tmp_path, raw):
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert plain_llama_config(tmp_path) is None


@pytest.mark.parametrize("template", [None, CHATML], ids=["builtin-template", "chatml"])
def test_chat_prefix_ids_is_what_the_finished_conversation_starts_with(tmp_path, template):
    """A message still arriving (cut before its last word) tokenizes as the start of the finished one, on the fast
    path and through transformers alike, so its prefill is reused when it completes."""
    path = BUILTIN_MODEL_DIR if template is None else _model_dir(tmp_path, template)
    fast = TextTokenizer.from_dir(path)
    hf = TextTokenizer(transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True),
                       fast.eos_token_ids)
    history = [{"role": "user", "content": "In the beginning"}, {"role": "assistant", "content": "God created."}]
    message = "And God said, Let there be light: and there was light."
    for tok in (fast, hf):
        full = tok.apply_chat_template([*history, {"role": "user", "content": message}])
        for cut in (4, 13, 30):
            head = message[:cut].rsplit(" ", 1)[0]
            prefix = tok.chat_prefix_ids([*history, {"role": "user", "content": head}])
            assert prefix and full[: len(prefix)] == prefix, (cut, head)
        assert len(prefix) < len(full)
