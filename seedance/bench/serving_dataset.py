"""Prompts for `seedance bench serving`: random-token prompts of a fixed length (fixed seed), or a JSONL file.

Random prompts are drawn from the served model's own tokenizer (a local tokenizer.json or model directory),
so every server sees the same token ids. For /v1/completions they are sent as token-id lists, which vLLM,
llama-server and Seedance all take as-is, so each prompt is exactly the asked length on every server; chat
prompts (which must be text) are the same ids decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(slots=True)
class Prompt:
    token_ids: list[int] | None = None  # a completions prompt as token ids (exact length on every server)
    text: str | None = None  # a completions prompt as text, or the user message of a chat prompt
    messages: list[dict[str, str]] | None = None  # a chat prompt given as messages (JSONL)
    max_tokens: int | None = None  # per-prompt output length (JSONL); None: the run's --max-tokens

    def completions_prompt(self) -> str | list[int]:
        if self.token_ids is not None:
            return self.token_ids
        if self.text is not None:
            return self.text
        return "\n".join(m.get("content", "") for m in self.messages or [])

    def chat_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.text or ""}]


def load_tokenizer(path: str | Path):
    """A `tokenizers.Tokenizer` from a tokenizer.json or a directory holding one."""
    from tokenizers import Tokenizer

    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(str(file))


def random_prompts(tokenizer, count: int, length: int, seed: int) -> list[Prompt]:
    """`count` distinct prompts of `length` ordinary (non-special, non-added) tokens each, reproducible by seed."""
    special = set(tokenizer.get_added_tokens_decoder())
    ordinary = np.array(sorted(set(range(tokenizer.get_vocab_size(with_added_tokens=False))) - special))
    if len(ordinary) == 0:
        raise ValueError("the tokenizer has no ordinary tokens")
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(count):
        ids = rng.choice(ordinary, size=length).tolist()
        prompts.append(Prompt(token_ids=ids, text=tokenizer.decode(ids)))
    return prompts


def jsonl_prompts(path: str | Path, count: int) -> list[Prompt]:
    """Prompts from a JSONL file, one object a line: {"prompt": "..."} or {"messages": [...]}, optionally
    "max_tokens". Cycles through the file when more prompts are needed than it has lines."""
    rows = []
    for number, line in enumerate(Path(path).expanduser().read_text().splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt", obj.get("messages")), (str, list)):
            raise ValueError(f"{path}:{number}: expected an object with a 'prompt' string or 'messages' list")
        max_tokens = obj.get("max_tokens")
        if isinstance(obj.get("prompt"), str):
            rows.append(Prompt(text=obj["prompt"], max_tokens=max_tokens))
        else:
            rows.append(Prompt(messages=obj["messages"], max_tokens=max_tokens))
    if not rows:
        raise ValueError(f"{path} has no prompts")
    return [rows[i % len(rows)] for i in range(count)]
