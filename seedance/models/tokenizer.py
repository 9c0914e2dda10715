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
