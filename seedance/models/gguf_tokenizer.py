"""The tokenizer a GGUF file describes, built as a `tokenizers` byte-level BPE from its metadata.

A GGUF carries no tokenizer.json: llama.cpp stores the vocabulary, merges, token types, special ids, the
pre-tokenizer's name (`tokenizer.ggml.pre`) and the chat template as metadata. We rebuild the byte-level BPE
("gpt2" model: SmolLM, Llama 3, Qwen2) with the split llama.cpp uses for that pre-tokenizer name; a
sentencepiece vocabulary ("llama" model: Llama 2, Mistral) goes through transformers' own GGUF conversion.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from seedance.models.tokenizer import TextTokenizer

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), by tokenizer.ggml.pre; others use GPT-2's.
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"llama3": _LLAMA3, "llama-bpe": _LLAMA3, "llama-v3": _LLAMA3, "smaug-bpe": _LLAMA3, "dbrx": _LLAMA3,
          "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2}
DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


def pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    if pre in DIGITS_THEN_GPT2:  # every digit alone, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre in SPLITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLITS[pre]), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet (as transformers' convert_slow_tokenizer spells it): printable bytes as themselves,
    the rest shifted past 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def byte_level_bpe(tokens: list[str], merges: list[str], token_types: list[int], pre: str | None) -> Tokenizer:
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
             for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>...) match whole and are special; user-defined ones match whole, not special.
    # A "control" token spelt outside the byte alphabet is a converter mislabel: adding it would grow the vocab.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, token_types, strict=False)
                            if kind == CONTROL and set(t) <= alphabet])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, token_types, strict=False) if kind == USER_DEFINED])
    return tok


def gguf_tokenizer(reader, path: Path) -> TextTokenizer:
    """Our TextTokenizer (encode, chat template, EOS ids) from a GGUF's metadata. A byte-level BPE whose template
    our renderer compiles is served from its `tokenizers` backend alone, as tokenizer.py serves a plain
    tokenizer.json: no transformers import (seconds of a cold start)."""
    from seedance.models.gguf_loader import field_value
    from seedance.models.tokenizer import template_compiles

    kind = field_value(reader, "tokenizer.ggml.model")
    tokens = list(field_value(reader, "tokenizer.ggml.tokens") or [])
    if not tokens:
        raise ValueError(f"{path}: no tokenizer in the GGUF metadata")

    def special(key: str) -> str | None:
        index = field_value(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    template = field_value(reader, "tokenizer.chat_template")
    eos = {field_value(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")} - {None}
    eos_ids = frozenset(int(i) for i in eos)
    if kind == "gpt2":
        backend = byte_level_bpe(tokens, list(field_value(reader, "tokenizer.ggml.merges") or []),
                                 list(field_value(reader, "tokenizer.ggml.token_type") or []),
                                 field_value(reader, "tokenizer.ggml.pre"))
        specials = {f"{ours}_token": text for ours, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"),
                                                            ("pad", "padding")) if (text := special(key)) is not None}
        if template is None or template_compiles(template):
            # what PreTrainedTokenizerFast does with them: each matches whole, as a special token
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()])
            return TextTokenizer(None, eos_ids, backend=backend, chat_template=template, special_tokens=specials)
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=special("bos"), eos_token=special("eos"),
                                     unk_token=special("unknown"), pad_token=special("padding"),
                                     chat_template=template)
    else:  # sentencepiece and others: transformers' own GGUF tokenizer conversion
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    return TextTokenizer(hf, eos_ids)
