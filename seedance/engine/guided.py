"""Constrained decoding with llguidance: a request's grammar (JSON schema, regex, choice list, Lark) becomes a
token mask each step, so its output parses by construction.

llguidance was picked on measured per-token mask cost (docs/openai-compatibility.md): 25 us median on
SmolLM2's 49k vocabulary and a 3 ms compile, against outlines-core's 1.3 ms per token and 0.5 s index build;
xgrammar pulls triton onto a CPU install. A grammar is compiled once per distinct spec, off the event loop
(AsyncEngine.submit; in the engine process on its guide thread, before the request is admitted:
core_process.py), and kept in a bounded LRU cache; each request gets a cheap deep copy of the compiled
matcher, advanced by the sampler as its tokens are chosen.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict

import numpy as np
import torch

from seedance.engine.errors import InvalidRequest
from seedance.engine.sampling_params import GuidedDecoding

log = logging.getLogger(__name__)

# Compact JSON (no free whitespace): small models otherwise pad with newlines until max_tokens.
_JSON_OPTIONS = {"whitespace_flexible": False}


class GuideCompiler:
    """Compiles GuidedDecoding specs into llguidance matchers for one tokenizer; thread-safe."""

    def __init__(self, tokenizer, vocab_size: int, max_spec_bytes: int = 65536, cache_size: int = 64,
                 fuel: int = 1_000_000) -> None:
        self.tokenizer = tokenizer  # models.tokenizer.TextTokenizer
        self.vocab_size = vocab_size
        self.max_spec_bytes = max_spec_bytes
        self.cache_size = cache_size
        self.fuel = fuel
        self._lock = threading.Lock()  # the cache; never held while compiling (a hit must not wait for a compile)
        self._ll_lock = threading.Lock()
        self._ll = None  # llguidance.LLTokenizer, built on first use (about 0.5 s for a 49k vocabulary)
        self._cache: OrderedDict[GuidedDecoding, object] = OrderedDict()

    @property
    def eos_token_ids(self) -> list[int]:
        return sorted(self.tokenizer.eos_token_ids)

    def _lltokenizer(self):
        import llguidance

        with self._ll_lock:
            if self._ll is None:
                backend = self.tokenizer.backend
                eos = self.eos_token_ids
                self._ll = llguidance.LLTokenizer(backend.to_str(), n_vocab=self.vocab_size, eos_token=eos or None)
            return self._ll

    def grammar(self, guided: GuidedDecoding) -> str:
        """The llguidance grammar for a spec (raises InvalidRequest for a malformed one)."""
        import llguidance

        M = llguidance.LLMatcher
        if len(guided.spec.encode()) > self.max_spec_bytes:
            raise InvalidRequest(f"the {guided.kind} is {len(guided.spec.encode())} bytes; the limit is "
                                 f"{self.max_spec_bytes}")
        try:
            if guided.kind == "json_object":
                return M.grammar_from_json_schema({"type": "object"}, overrides=_JSON_OPTIONS)
            if guided.kind == "json_schema":
                options = dict(_JSON_OPTIONS, lenient=not guided.strict)
                return M.grammar_from_json_schema(guided.spec, overrides=options)
            if guided.kind == "regex":
                return M.grammar_from_regex(guided.spec)
            if guided.kind == "choice":
                choices = json.loads(guided.spec)  # Lark string literals take JSON's escapes
                return M.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
            if guided.kind == "grammar":
                return M.grammar_from_lark(guided.spec)
        except Exception as err:  # malformed JSON or schema: whatever the library raises, it is the request's fault
            raise InvalidRequest(f"invalid {guided.kind}: {err}") from None
        raise InvalidRequest(f"unknown guided decoding kind {guided.kind!r}")

    def compile(self, guided: GuidedDecoding):
        """The compiled (unstarted) matcher for a spec, from the cache or built now; InvalidRequest if the grammar
        does not compile or runs past the compile fuel."""
        import llguidance

        with self._lock:
            hit = self._cache.get(guided)
            if hit is not None:
                self._cache.move_to_end(guided)
                return hit
        limits = llguidance.LLParserLimits(initial_lexer_fuel=self.fuel, verbose_errors=False)
        grammar = self.grammar(guided)
        try:
            matcher = llguidance.LLMatcher(self._lltokenizer(), grammar, log_level=0, limits=limits)
        except Exception as err:  # documented never to raise for grammar errors; a request's fault either way
            raise InvalidRequest(f"invalid {guided.kind}: {err}") from None
        if matcher.is_error():
            raise InvalidRequest(f"invalid {guided.kind}: {matcher.get_error()}")
        with self._lock:
            self._cache[guided] = matcher
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return matcher

    def cached(self, guided: GuidedDecoding) -> bool:
        """Whether the spec's matcher is compiled already (compile() then returns at once)."""
        with self._lock:
            return guided in self._cache

    def matcher(self, guided: GuidedDecoding):
        """A fresh matcher for one request."""
        return self.compile(guided).deep_copy()


def fill_bitmask(matchers: list, bitmask: torch.Tensor) -> None:
    """Write each matcher's allowed-token bitmask into its row of bitmask ([N, ceil(V/32)] int32)."""
    for row, m in enumerate(matchers):
        v = bitmask[row]
        m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())


def apply_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """logits[rows] = -inf wherever the row's bitmask bit is 0, in place; ids past the bitmask are never allowed."""
    vocab = logits.shape[1]
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")  # [R, 32 * words]
    width = min(vocab, bits.shape[1])
    banned = torch.from_numpy(bits[:, :width] == 0).to(logits.device)
    for j, i in enumerate(rows):
        row = logits[i]
        row[:width].masked_fill_(banned[j], float("-inf"))
        row[width:] = float("-inf")
