"""Batched sampling: penalties, logit_bias, grammar masks, greedy, temperature, top-k, top-p, per-request seeds,
logprobs.

A sampled row draws its token by inverse CDF: one uniform number per row against the cumulative sum of its
probabilities (an exact draw from p). A seeded request draws its number from its own generator, so its tokens do
not depend on what else is in the batch. Only the rows that sample pay for it, and top-k / top-p cut only the rows
that ask: on a CPU the per-token alternatives cost a batch-wide vocabulary's worth each, torch's exponential noise
~1.2 ms and its sort ~4 ms per 32k-token row (1 thread, AMX box), against ~0.03 ms for a cumulative sum and a
search, and numpy's SIMD sort 0.13 ms (docs/benchmarks.md, "Sampling cost"). Penalties, logit_bias and grammar
masks touch only the rows that ask for them, so constrained and free requests share a step. Logprobs are the
model's own (before any of these).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from seedance.engine.guided import GuideCompiler, apply_bitmask, fill_bitmask
from seedance.engine.output_processor import SampledToken
from seedance.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x.argmax(-1), through numpy's SIMD argmax on a CPU tensor: torch 2.13's CPU argmax is scalar, 9.7 ms for a
    [64, 49152] float32 batch of logits against numpy's 0.7 (1 thread, AMX box; the same index, ties and NaN
    included: the first maximum, or the first NaN)."""
    if x.device.type != "cpu":
        return x.argmax(dim=-1)
    return torch.from_numpy(x.numpy().argmax(-1))


class Sampler:
    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", guides: GuideCompiler | None = None) -> None:
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._request_generators: dict[str, torch.Generator] = {}
        self.guides = guides
        self._matchers: dict[str, object] = {}  # request id -> its llguidance matcher, advanced per token

    def forget(self, request_id: str) -> None:
        self._request_generators.pop(request_id, None)
        self._matchers.pop(request_id, None)

    def process_logits(self, logits: torch.Tensor, params: list[SamplingParams],
                       token_ids: list[list[int]] | None = None, num_prompt: list[int] | None = None) -> torch.Tensor:
        """Penalties (from each row's tokens: token_ids[i], of which the first num_prompt[i] are the prompt),
        then logit_bias, in place on float logits."""
        vocab = logits.shape[1]
        for i, p in enumerate(params):
            if p.penalized and token_ids is not None:
                ids = torch.tensor(token_ids[i], dtype=torch.long, device=logits.device)
                ids = ids[ids < vocab]
                row = logits[i]
                if p.repetition_penalty != 1.0 and len(ids):
                    seen = ids.unique()
                    vals = row[seen]
                    row[seen] = torch.where(vals < 0, vals * p.repetition_penalty, vals / p.repetition_penalty)
                out = ids[num_prompt[i]:] if num_prompt is not None else ids
                if (p.frequency_penalty or p.presence_penalty) and len(out):
                    counts = torch.bincount(out, minlength=vocab)[:vocab].to(row.dtype)
                    row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
            if p.logit_bias:
                bias = [(t, b) for t, b in p.logit_bias.items() if t < vocab]
                if bias:
                    index = torch.tensor([t for t, _ in bias], dtype=torch.long, device=logits.device)
                    logits[i].index_add_(0, index, torch.tensor([b for _, b in bias], device=logits.device))
        return logits

    def _apply_guides(self, logits: torch.Tensor, request_ids: list[str], params: list[SamplingParams]) -> list:
        """Mask each guided row to the tokens its grammar allows next; the matchers, None for free rows."""
        matchers: list = [None] * len(params)
        rows = [i for i, p in enumerate(params) if p.guided is not None and self.guides is not None]
        if not rows:
            return matchers
        for i in rows:
            m = self._matchers.get(request_ids[i])
            if m is None:
                m = self._matchers[request_ids[i]] = self.guides.matcher(params[i].guided)
            matchers[i] = m
        bitmask = torch.zeros(len(rows), (self.guides.vocab_size + 31) // 32, dtype=torch.int32)
        fill_bitmask([matchers[i] for i in rows], bitmask)
        alive = bitmask.any(dim=1).tolist()
        for j, i in enumerate(rows):
            if matchers[i].is_error() or not alive[j]:  # a dead end: only an end of sequence is left
                log.warning("grammar of request %s failed: %s", request_ids[i], matchers[i].get_error())
                bitmask[j].zero_()
                for eos in self.guides.eos_token_ids:
                    bitmask[j, eos // 32] |= 1 << (eos % 32)
        apply_bitmask(logits, rows, bitmask)
        return matchers

    def _generator_for(self, request_id: str, seed: int) -> torch.Generator:
        gen = self._request_generators.get(request_id)
        if gen is None:
            gen = torch.Generator(device=self.device).manual_seed(seed)
            self._request_generators[request_id] = gen
        return gen

    @torch.inference_mode()
    def __call__(
        self, logits: torch.Tensor, request_ids: list[str], params: list[SamplingParams],
        token_ids: list[list[int]] | None = None, num_prompt: list[int] | None = None,
    ) -> list[SampledToken]:
        logits = logits.float()
        raw = logits
        if any(p.penalized or p.logit_bias or p.guided is not None for p in params):
            logits = self.process_logits(logits.clone(), params, token_ids, num_prompt)
        matchers = self._apply_guides(logits, request_ids, params)
        rows = [i for i, p in enumerate(params) if not p.greedy]
        if len(rows) == len(params):  # every row samples: no argmax, no index copy
            tokens = self._draw(logits, params, request_ids)
        else:
            tokens = argmax_rows(logits)  # the greedy rows'; the sampled ones are drawn over them
            if rows:
                tokens[rows] = self._draw(logits[rows], [params[i] for i in rows], [request_ids[i] for i in rows])
        token_list = tokens.tolist()
        out = [SampledToken(t) for t in token_list]
        for i, m in enumerate(matchers):
            if m is not None:
                m.consume_token(token_list[i])
                out[i].grammar_done = m.is_stopped()
        logits = raw
        wants = [i for i, p in enumerate(params) if p.logprobs is not None]
        if wants:
            logprobs = logits[wants].log_softmax(dim=-1)
            rows = torch.arange(len(wants), device=logits.device)
            chosen = logprobs[rows, tokens[wants]].tolist()
            max_top = max(params[i].logprobs for i in wants)
            top_vals, top_ids = logprobs.topk(max_top, dim=-1) if max_top else (None, None)
            for j, i in enumerate(wants):
                out[i].logprob = chosen[j]
                k = params[i].logprobs
                if k:
                    out[i].top_logprobs = tuple(zip(top_ids[j, :k].tolist(), top_vals[j, :k].tolist(), strict=True))
        return out


    def _draw(self, logits: torch.Tensor, params: list[SamplingParams], request_ids: list[str]) -> torch.Tensor:
        """One token for each of these (sampled) rows: temperature, then top-k and top-p on the rows that ask (as
        zeroed probabilities: the draw needs no renormalizing), then an inverse-CDF draw; a seeded row's uniform
        number from its own generator, the others' from the sampler's."""
        temps = [p.temperature for p in params]
        scaled = logits if all(t == 1.0 for t in temps) else logits / torch.tensor(temps, device=logits.device)[:, None]
        probs = scaled.softmax(dim=-1)  # a new tensor: logits (maybe the model's own, for logprobs) stay as they are
        vocab = probs.shape[1]
        cut_k = [j for j, p in enumerate(params) if 0 < p.top_k < vocab]
        if cut_k:
            probs = _on_rows(probs, cut_k, _top_k_probs, [params[j].top_k for j in cut_k])
        cut_p = [j for j, p in enumerate(params) if p.top_p < 1.0]
        if cut_p:
            probs = _on_rows(probs, cut_p, _top_p_probs, [params[j].top_p for j in cut_p])
        cdf = probs.cumsum_(dim=-1)  # non-decreasing; its last entry the mass kept
        free = [j for j, p in enumerate(params) if p.seed is None]
        u = torch.empty(len(params), device=logits.device)
        if free:
            u[free] = torch.rand(len(free), generator=self.generator, device=self.device)
        for j, p in enumerate(params):
            if p.seed is not None:
                u[j] = torch.rand(1, generator=self._generator_for(request_ids[j], p.seed), device=self.device)[0]
        total = cdf[:, -1]
        # below the last entry, so the first entry above it has a probability > 0 (never a masked token)
        u = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cdf, u[:, None], right=True)[:, 0]


def _on_rows(probs: torch.Tensor, rows: list[int], cut: Callable, values: list) -> torch.Tensor:
    """cut(probs[rows], values) put back in place of those rows (the whole tensor when every row asks)."""
    if len(rows) == len(probs):
        return cut(probs, values)
    probs[rows] = cut(probs[rows], values)
    return probs


def _zero_below(probs: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """probs with every entry under its row's threshold set to 0 (numpy's multiply by the mask: torch's CPU
    masked_fill is ~13x slower on a vocabulary row)."""
    if probs.device.type != "cpu":
        return probs * (probs >= threshold)
    p = probs.numpy()
    return torch.from_numpy(p * (p >= threshold.numpy()))


def _top_k_probs(probs: torch.Tensor, top_ks: list[int]) -> torch.Tensor:
    """Each row keeps its top_ks[i] most probable tokens (and any tied with the last of them)."""
    kth = probs.topk(max(top_ks), dim=-1).values  # [N, k_max], descending
    return _zero_below(probs, kth.gather(1, torch.tensor(top_ks, device=probs.device)[:, None] - 1))


def _top_p_probs(probs: torch.Tensor, top_ps: list[float]) -> torch.Tensor:
    """Each row keeps the smallest set of its most probable tokens whose share of the row's mass reaches top_ps[i]
    (rows a top-k cut already zeroed count only what is left): a token is dropped when the share strictly before it
    already reaches top_p; the first always stays, and tokens tied with the last one kept stay too. The cut is
    found on the sorted probabilities with numpy's sort (torch's CPU sort is ~30x slower on a vocabulary row)."""
    asc = torch.from_numpy(np.sort(probs.float().cpu().numpy(), axis=-1)).to(probs.device)
    cum = asc.double().cumsum(dim=-1)  # float64: the cut is a comparison of sums of up to a vocabulary of terms
    # a share within a millionth of top_p counts as reaching it: 0.5 + 0.3 reaches 0.8 whatever the rounding
    limit = torch.tensor(top_ps, dtype=torch.float64, device=probs.device)[:, None] * (1 - 1e-6) * cum[:, -1:]
    # the first (ascending) token kept: the first whose cumulative mass is over total - limit (the mass of the
    # tokens more probable than it, total - cum, is under the limit)
    first = torch.searchsorted(cum, cum[:, -1:] - limit, right=True).clamp_(max=asc.shape[1] - 1)
    return _zero_below(probs, asc.gather(1, first))
