"""Batched sampling: penalties, logit_bias, grammar masks, greedy, temperature, top-k, top-p, per-request seeds,
logprobs.

Sampling uses the exponential race (argmax p_i / E_i with E_i ~ Exp(1) is an exact draw from p), so the
whole batch samples in one op while a seeded request draws its noise from its own generator: its tokens
do not depend on what else is in the batch. Penalties, logit_bias and grammar masks touch only the rows that ask
for them, so constrained and free requests share a step. Logprobs are the model's own (before any of these).
"""

from __future__ import annotations

import logging

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
        _n, vocab = logits.shape
        raw = logits
        if any(p.penalized or p.logit_bias or p.guided is not None for p in params):
            logits = self.process_logits(logits.clone(), params, token_ids, num_prompt)
        matchers = self._apply_guides(logits, request_ids, params)
        greedy = [p.greedy for p in params]
        if all(greedy):
            tokens = argmax_rows(logits)
        else:
            temps = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=logits.device)
            scaled = logits / temps[:, None]
            top_ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
            if any(top_ks):
                scaled = _apply_top_k(scaled, top_ks)
            top_ps = [p.top_p for p in params]
            if any(p < 1.0 for p in top_ps):
                scaled = _apply_top_p(scaled, torch.tensor(top_ps, device=logits.device))
            probs = scaled.softmax(dim=-1)
            noise = torch.empty_like(probs).exponential_(generator=self.generator)
            for i, p in enumerate(params):
                if p.seed is not None and not greedy[i]:
                    noise[i].exponential_(generator=self._generator_for(request_ids[i], p.seed))
            tokens = argmax_rows(probs / noise)
            if any(greedy):
                tokens = torch.where(torch.tensor(greedy, device=logits.device), argmax_rows(logits), tokens)

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


def _apply_top_k(logits: torch.Tensor, top_ks: list[int]) -> torch.Tensor:
    k_max = max(top_ks)
    kth = logits.topk(k_max, dim=-1).values  # [N, k_max], descending
    ks = torch.tensor([k if k else k_max for k in top_ks], device=logits.device)
    threshold = kth.gather(1, (ks - 1)[:, None])
    no_cut = torch.tensor([k == 0 for k in top_ks], device=logits.device)[:, None]
    return logits.masked_fill((logits < threshold) & ~no_cut, float("-inf"))


def _apply_top_p(logits: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the mass strictly before it already reaches top_p; the first token always stays.
    drop = (probs.cumsum(dim=-1) - probs) >= top_ps[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
