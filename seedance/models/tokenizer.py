"""The text side of a model: encoding, chat templates, EOS ids and the fast backend for streaming decode."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer


class TextTokenizer:
    def __init__(self, hf_tokenizer, eos_token_ids: frozenset[int]) -> None:
        self.hf = hf_tokenizer  # transformers PreTrainedTokenizerFast
        self.backend: Tokenizer = hf_tokenizer.backend_tokenizer
        self.eos_token_ids = eos_token_ids
        # No token covers more characters of text than its vocabulary string has (a byte-level vocabulary
        # spells each byte as one character, so a character is at least one of them): a text of n characters
        # is at least n / max_token_chars tokens, which bounds a prompt's length before tokenizing it. A
        # normalizer may shrink the text first (NFC composes up to 3 characters into 1), hence the margin.
        longest = max((len(t) for t in hf_tokenizer.get_vocab()), default=1)
        self.max_token_chars = longest * (4 if self.backend.normalizer is not None else 1)

    @classmethod
    def from_dir(cls, path: Path) -> TextTokenizer:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        eos: set[int] = set()
        gen_cfg = path / "generation_config.json"
        if gen_cfg.is_file():
            value = json.loads(gen_cfg.read_text()).get("eos_token_id")
            eos.update(value if isinstance(value, list) else [value] if value is not None else [])
        if hf.eos_token_id is not None:
            eos.add(hf.eos_token_id)
        return cls(hf, frozenset(eos))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        if not self.hf.chat_template:
            text = "\n".join(m.get("content", "") for m in messages) + "\n"
            return self.encode(text)
        return list(self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))

    def decode(self, token_ids: list[int]) -> str:
        return self.backend.decode(token_ids, skip_special_tokens=True)
