"""The text side of a model: encoding, chat templates, EOS ids and the fast backend for streaming decode.

A model directory with a tokenizer.json saved by the `tokenizers` backend loads straight into
`tokenizers.Tokenizer`, its chat template rendered by chat_template.py: serving it never imports transformers
(about 2 s of a cold start). Anything else (sentencepiece-only directories, tokenizer classes that transformers
rewrites on load, templates only transformers can render) goes through transformers' AutoTokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

# tokenizer_config.json classes whose tokenizer.json transformers loads as-is (no rewrite of the pipeline)
PLAIN_TOKENIZER_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
_OPEN_MESSAGE = "\x00seedance-open-message\x00"  # marks where a message still arriving ends (chat_prefix_ids)


class TextTokenizer:
    def __init__(self, hf_tokenizer, eos_token_ids: frozenset[int], *, backend: Tokenizer | None = None,
                 chat_template: str | None = None, special_tokens: dict[str, str] | None = None) -> None:
        """From a transformers tokenizer (hf_tokenizer), or without one from its `tokenizers` backend, chat template
        and special-token strings."""
        self.hf = hf_tokenizer  # transformers PreTrainedTokenizerFast, or None on the fast path
        self.backend: Tokenizer = backend if backend is not None else hf_tokenizer.backend_tokenizer
        self.eos_token_ids = eos_token_ids
        self.chat_template = chat_template if hf_tokenizer is None else hf_tokenizer.chat_template
        self.special_tokens = special_tokens or {}
        # No token covers more characters of text than its vocabulary string has (a byte-level vocabulary
        # spells each byte as one character, so a character is at least one of them): a text of n characters
        # is at least n / max_token_chars tokens, which bounds a prompt's length before tokenizing it. A
        # normalizer may shrink the text first (NFC composes up to 3 characters into 1), hence the margin.
        longest = max((len(t) for t in self.backend.get_vocab()), default=1)
        self.max_token_chars = longest * (4 if self.backend.normalizer is not None else 1)

    @classmethod
    def from_dir(cls, path: Path) -> TextTokenizer:
        config = _read_json(path / "tokenizer_config.json")
        eos: set[int] = set()
        value = _read_json(path / "generation_config.json").get("eos_token_id")
        eos.update(value if isinstance(value, list) else [value] if value is not None else [])
        fast = (path / "tokenizer.json").is_file() and config.get("tokenizer_class") in PLAIN_TOKENIZER_CLASSES
        template = _chat_template(path, config) if fast else None
        if fast and (template is None or template_compiles(template)):
            backend = Tokenizer.from_file(str(path / "tokenizer.json"))
            special = {k: s for k in SPECIAL_TOKEN_KEYS if (s := _token_text(config.get(k))) is not None}
            eos_id = backend.token_to_id(special["eos_token"]) if "eos_token" in special else None
            if eos_id is not None:
                eos.add(eos_id)
            return cls(None, frozenset(eos), backend=backend, chat_template=template, special_tokens=special)
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if hf.eos_token_id is not None:
            eos.add(hf.eos_token_id)
        return cls(hf, frozenset(eos))

    @property
    def vocab_size(self) -> int:
        return len(self.hf) if self.hf is not None else self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Prompts are encoded without special tokens (a chat template writes its own); /tokenize may ask for
        them (a BOS, where the tokenizer's post-processor adds one)."""
        if self.hf is not None:
            return self.hf.encode(text, add_special_tokens=add_special_tokens)
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def token_strings(self, token_ids: list[int]) -> list[str | None]:
        """The vocabulary entry of each id (None for an id outside it), as vLLM's /tokenize token_strs."""
        return [self.backend.id_to_token(i) for i in token_ids]

    @property
    def template_takes_tools(self) -> bool:
        """The chat template renders a `tools` list (Qwen2, Llama 3.1 do; SmolLM2 and the built-in one do not)."""
        return "tools" in (self.chat_template or "")

    def apply_chat_template(self, messages: list[dict[str, str]], tools: list[dict] | None = None) -> list[int]:
        if not self.chat_template:
            text = "\n".join(m.get("content", "") for m in messages) + "\n"
            return self.encode(text)
        if self.hf is not None:
            return list(self.hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False))
        from seedance.models.chat_template import render_chat

        return self.encode(render_chat(self.chat_template, messages, self.special_tokens, tools))

    def chat_prefix_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation's tokens up to the end of the last message's content so far (no end of message, no
        generation prompt): what apply_chat_template of the finished conversation starts with while that message
        is still arriving, so it can be prefilled early. [] if the template does not keep the content as it is."""
        *head, last = messages
        probe = [*head, {**last, "content": last.get("content", "") + _OPEN_MESSAGE}]
        if not self.chat_template:
            text = "\n".join(m.get("content", "") for m in probe)
        elif self.hf is not None:
            text = self.hf.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
        else:
            from seedance.models.chat_template import render_chat

            text = render_chat(self.chat_template, probe, self.special_tokens)
        cut = text.find(_OPEN_MESSAGE)
        return self.encode(text[:cut]) if cut >= 0 else []

    def decode(self, token_ids: list[int]) -> str:
        return self.backend.decode(token_ids, skip_special_tokens=True)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(path: Path, config: dict) -> str | None:
    file = path / "chat_template.jinja"
    if file.is_file():
        return file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def template_compiles(template: str) -> bool:
    """Whether our renderer (chat_template.py) compiles the template: else transformers renders it."""
    from jinja2 import TemplateError

    from seedance.models.chat_template import compile_template

    try:
        compile_template(template)
    except TemplateError:
        return False
    return True
