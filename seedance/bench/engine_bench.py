"""`seedance bench engine`: continuous batching against transformers on the same model, in one run.

Three comparisons, all with the same weights, dtype and torch threads:
1. Closed loop at N concurrent streams: aggregate tokens/s of the Seedance engine vs one-at-a-time
   `transformers` `generate()`, printed as a ratio, with TTFT and inter-token latency (ITL) p50/p99.
2. Open loop (Poisson arrivals, varied prompt and output lengths): the engine vs static batching
   (`generate()` on left-padded batches of whatever has arrived while the previous batch ran):
   request latency mean/p99, TTFT, requests/s and goodput (share of requests meeting a TTFT and TPOT SLO).
3. Footprint: KV-cache bytes per token and peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seedance.bench.stats import poisson_arrivals, summarize_ms
from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.config import EngineConfig
from seedance.engine.sampling_params import SamplingParams
from seedance.engine.synthetic_runner import PASSAGE

SLO_TTFT_S = 1.0
SLO_TPOT_S = 0.1


@dataclass
class RequestSpec:
    prompt_ids: list[int]
    max_tokens: int
    arrival: float = 0.0


@dataclass
class RequestResult:
    arrival: float
    first_token: float
    finished: float
    num_tokens: int
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def latency(self) -> float:
        return self.finished - self.arrival

    @property
    def tpot(self) -> float:
        return (self.finished - self.first_token) / max(1, self.num_tokens - 1)

    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


def make_prompts(tokenizer, n: int, lengths: list[int]) -> list[list[int]]:
    """Distinct prompts of the given token lengths, cut from a public-domain passage at shifting offsets."""
    base = tokenizer.encode(PASSAGE * 8)
    return [base[i * 7 % 40 : i * 7 % 40 + lengths[i % len(lengths)]] for i in range(n)]


async def engine_run(engine: AsyncEngine, specs: list[RequestSpec], start: float) -> list[RequestResult]:
    async def one(spec: RequestSpec) -> RequestResult:
        delay = start + spec.arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        arrival = time.perf_counter()
        params = SamplingParams(max_tokens=spec.max_tokens, temperature=0.0, ignore_eos=True)
        times = []
        async for _event in engine.generate(GenerateRequest(prompt_token_ids=spec.prompt_ids, params=params)):
            times.append(time.perf_counter())
        return RequestResult(arrival, times[0], times[-1], len(times), times)

    return await asyncio.gather(*(one(s) for s in specs))


def hf_generate(model, batch: list[list[int]], max_new_tokens: int, pad_id: int) -> tuple[float, int]:
    """Static batch: left-pad, generate until the longest request is done. Returns (first-step time, tokens)."""
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    first: list[float] = []

    def mark_first_step(input_ids, scores):
        if not first:
            first.append(time.perf_counter())
        return scores

    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            logits_processor=[mark_first_step],
        )
    return first[0], (out.shape[1] - width) * len(batch)


def hf_one_at_a_time(model, specs: list[RequestSpec], pad_id: int) -> dict:
    start = time.perf_counter()
    tokens = 0
    for spec in specs:
        _, n = hf_generate(model, [spec.prompt_ids], spec.max_tokens, pad_id)
        tokens += n
    wall = time.perf_counter() - start
    return {"requests": len(specs), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def hf_static_batching(model, specs: list[RequestSpec], pad_id: int, max_batch: int) -> list[RequestResult]:
    """Real-time simulation: when idle, take every request that has arrived (up to max_batch) as one
    padded batch; each finishes only when its batch's longest generation does."""
    start = time.perf_counter()
    pending = sorted(specs, key=lambda s: s.arrival)
    results: list[RequestResult] = []
    while pending:
        now = time.perf_counter() - start
        if pending[0].arrival > now:
            time.sleep(pending[0].arrival - now)
            now = time.perf_counter() - start
        batch = [s for s in pending if s.arrival <= now][:max_batch]
        pending = [s for s in pending if s not in batch]
        first, _ = hf_generate(model, [s.prompt_ids for s in batch], max(s.max_tokens for s in batch), pad_id)
        done = time.perf_counter()
        for s in batch:
            results.append(RequestResult(start + s.arrival, first, done, s.max_tokens))
    return results


def summarize_open_loop(results: list[RequestResult]) -> dict:
    span = max(r.finished for r in results) - min(r.arrival for r in results)
    good = sum(r.ttft <= SLO_TTFT_S and r.tpot <= SLO_TPOT_S for r in results)
    return {
        "requests": len(results),
        "requests_per_s": len(results) / span,
        "output_tokens_per_s": sum(r.num_tokens for r in results) / span,
        "latency_ms": summarize_ms([r.latency for r in results]),
        "ttft_ms": summarize_ms([r.ttft for r in results]),
        "goodput_requests_per_s": good / span,
        "slo_attainment": good / len(results),
    }


def run_engine_bench(
    concurrency: list[int],
    max_tokens: int,
    prompt_tokens: int,
    num_requests: int,
    rate: float,
    model: str | None,
    output: str | None,
) -> dict:
    from rich.console import Console
    from transformers import AutoModelForCausalLM

    console = Console(width=140)
    t0 = time.perf_counter()

    async def main() -> dict:
        engine = await AsyncEngine.create(EngineConfig(model=model, dtype="float32", max_num_seqs=64,
                                                         max_num_batched_tokens=512))
        cold_start = time.perf_counter() - t0
        tok = engine.tokenizer
        runner = engine.engine.runner
        async def on_engine_thread(fn, *args):
            # Same OS thread as the engine: one OpenMP pool, so neither side slows the other down.
            return await engine.run_on_engine_thread(lambda: fn(*args))

        hf = await on_engine_thread(
            lambda: AutoModelForCausalLM.from_pretrained(str(runner_model_path(engine)), dtype=torch.float32).eval())
        pad_id = next(iter(tok.eos_token_ids))
        report: dict = {
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            "model": {
                "path": str(runner_model_path(engine)),
                "parameters": sum(p.numel() for p in runner.model.parameters()),
            },
            "engine_cold_start_s": cold_start,
            "kv_cache_bytes_per_token": runner.kv_bytes_per_token,
            "closed_loop": [],
        }
        # Warm both paths once so neither pays first-call costs in the measurement.
        warm = make_prompts(tok, 2, [prompt_tokens])
        await engine_run(engine, [RequestSpec(p, 8) for p in warm], time.perf_counter())
        await on_engine_thread(hf_generate, hf, warm[:1], 8, pad_id)

        base_specs = [RequestSpec(p, max_tokens) for p in make_prompts(tok, 4, [prompt_tokens])]
        baseline = await on_engine_thread(hf_one_at_a_time, hf, base_specs, pad_id)
        report["hf_one_at_a_time"] = baseline
        console.print(f"transformers one-at-a-time: {baseline['tokens_per_s']:.0f} tok/s")
        for c in concurrency:
            specs = [RequestSpec(p, max_tokens) for p in make_prompts(tok, c, [prompt_tokens])]
            start = time.perf_counter()
            results = await engine_run(engine, specs, start)
            wall = time.perf_counter() - start
            tokens = sum(r.num_tokens for r in results)
            itl = [x for r in results for x in r.itls()]
            row = {
                "streams": c,
                "tokens": tokens,
                "wall_s": wall,
                "tokens_per_s": tokens / wall,
                "ratio_vs_hf_one_at_a_time": tokens / wall / baseline["tokens_per_s"],
                "ttft_ms": summarize_ms([r.ttft for r in results]),
                "itl_ms": summarize_ms(itl),
            }
            report["closed_loop"].append(row)
            console.print(f"{c:>3} streams: {row['tokens_per_s']:.0f} tok/s ({row['ratio_vs_hf_one_at_a_time']:.1f}x)")

        # Open loop: Poisson arrivals, varied lengths, same specs for both systems.
        arrivals = poisson_arrivals(num_requests, rate, seed=0)
        lengths = [prompt_tokens // 2, prompt_tokens, prompt_tokens * 3 // 2]
        prompts = make_prompts(tok, num_requests, lengths)
        outs = [max_tokens // 4, max_tokens // 2, max_tokens]
        specs = [RequestSpec(p, outs[i * 5 % 3], a) for i, (p, a) in enumerate(zip(prompts, arrivals, strict=True))]
        ours = summarize_open_loop(await engine_run(engine, specs, time.perf_counter()))
        static = summarize_open_loop(await on_engine_thread(hf_static_batching, hf, specs, pad_id, 32))
        report["poisson"] = {
            "rate_rps": rate,
            "requests": num_requests,
            "continuous": ours,
            "static_hf": static,
            "slo": {"ttft_s": SLO_TTFT_S, "tpot_s": SLO_TPOT_S},
        }
        stats = engine.stats()
        report["prefix_cache"] = {
            "query_tokens": stats.prefix_cache_query_tokens,
            "hit_tokens": stats.prefix_cache_hit_tokens,
        }
        report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        await engine.close()
        return report

    report = asyncio.run(main())
    render(console, report)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=2) + "\n")
    return report


def runner_model_path(engine: AsyncEngine) -> Path:
    from seedance.models.loader import resolve_model_dir

    return resolve_model_dir(engine.config.model)


def render(console, report: dict) -> None:
    from rich.table import Table

    table = Table(title="Closed loop: Seedance continuous batching vs transformers one-at-a-time")
    for col in (
        "streams",
        "tok/s",
        "x HF 1-at-a-time",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
    ):
        table.add_column(col, justify="right")
    for r in report["closed_loop"]:
        table.add_row(
            str(r["streams"]),
            f"{r['tokens_per_s']:.0f}",
            f"{r['ratio_vs_hf_one_at_a_time']:.1f}",
            f"{r['ttft_ms']['p50']:.1f}",
            f"{r['ttft_ms']['p99']:.1f}",
            f"{r['itl_ms']['p50']:.1f}",
            f"{r['itl_ms']['p99']:.1f}",
        )
    console.print(table)
    p = report["poisson"]
    table = Table(title=f"Poisson arrivals ({p['requests']} requests at {p['rate_rps']} req/s)")
    for col in (
        "system",
        "req/s",
        "out tok/s",
        "latency mean ms",
        "latency p99 ms",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "goodput req/s",
        "SLO met",
    ):
        table.add_column(col, justify="right")
    for name, key in (("Seedance continuous", "continuous"), ("transformers static", "static_hf")):
        r = p[key]
        table.add_row(
            name,
            f"{r['requests_per_s']:.2f}",
            f"{r['output_tokens_per_s']:.0f}",
            f"{r['latency_ms']['mean']:.0f}",
            f"{r['latency_ms']['p99']:.0f}",
            f"{r['ttft_ms']['p50']:.0f}",
            f"{r['ttft_ms']['p99']:.0f}",
            f"{r['goodput_requests_per_s']:.2f}",
            f"{r['slo_attainment']:.0%}",
        )
    console.print(table)
    console.print(
        f"KV cache: {report['kv_cache_bytes_per_token']} bytes/token; peak RSS "
        f"{report['peak_rss_mib']:.0f} MiB; engine cold start {report['engine_cold_start_s']:.2f} s"
    )
