"""`seedance bench serving` from its command-line options: levels, prompts, the server's pid, report, plots."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from seedance.bench.serving import Level, Slo, pid_listening_on, render, run_serving_bench, write_json
from seedance.bench.serving_dataset import jsonl_prompts, load_tokenizer, random_prompts


class BadOption(ValueError):
    """An option value that cannot work (the CLI shows it as a usage error)."""


@dataclass(slots=True)
class ServingOptions:
    base_url: str = "http://127.0.0.1:8000/v1"
    concurrency: str = "1,8,32,64"
    request_rate: str | None = None
    rounds: int = 1
    num_prompts: int | None = None
    max_concurrency: int | None = None
    prompt_tokens: int = 64
    max_tokens: int = 128
    dataset: str | None = None
    tokenizer: str | None = None
    endpoint: str = "completions"
    model: str | None = None
    ignore_eos: bool = True
    slo: str = "ttft=1000,tpot=100"
    warmup: int = 2
    seed: int = 0
    server_pid: int | None = None
    server_port: int | None = None
    label: str | None = None
    output: str | None = None
    plots: str | None = None
    compare: list[str] = field(default_factory=list)
    temperature: float = 0.0  # 0: greedy (the comparison's default: the same tokens on every server)
    top_p: float | None = None  # not sent when None: the server's default
    top_k: int | None = None


def _numbers(text: str, kind, name: str) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadOption(f"--{name} must be a comma list of numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise BadOption(f"--{name} needs positive numbers, got {text!r}")
    return values


def levels_of(o: ServingOptions) -> list[Level]:
    if o.rounds < 1 or (o.num_prompts is not None and o.num_prompts < 1):
        raise BadOption("--rounds and --num-prompts must be >= 1")
    if o.request_rate:
        return [Level(rate=r, num_prompts=o.num_prompts or 64) for r in _numbers(o.request_rate, float,
                                                                                 "request-rate")]
    return [Level(concurrency=c, num_prompts=o.num_prompts or c * o.rounds)
            for c in _numbers(o.concurrency, int, "concurrency")]


def run_serving(o: ServingOptions, console) -> dict:
    if o.endpoint not in ("completions", "chat"):
        raise BadOption("--endpoint must be completions or chat")
    try:
        slo = Slo.parse(o.slo)
    except ValueError as err:
        raise BadOption(str(err)) from None
    levels = levels_of(o)
    needed = o.warmup + sum(level.num_prompts for level in levels)
    if o.dataset:
        prompts = jsonl_prompts(o.dataset, needed)
    else:
        from seedance.models.loader import BUILTIN_MODEL_DIR

        prompts = random_prompts(load_tokenizer(o.tokenizer or BUILTIN_MODEL_DIR), needed, o.prompt_tokens, o.seed)
    pid = o.server_pid
    if pid is None and o.server_port is not None:
        pid = pid_listening_on(o.server_port)
        if pid is None:
            console.print(f"[yellow]no local process found listening on port {o.server_port}: no memory figures"
                          "[/yellow]")

    def progress(row: dict) -> None:
        at = f"C={row['concurrency']}" if row["rate"] is None else f"{row['rate']:g} req/s"
        console.print(f"{at}: {row['output_tok_s']:.1f} output tok/s, {row['errors']} errors")

    if not 0 <= o.temperature <= 2 or (o.top_p is not None and not 0 < o.top_p <= 1) or (o.top_k is not None
                                                                                        and o.top_k < 0):
        raise BadOption("--temperature must be in [0, 2], --top-p in (0, 1], --top-k >= 0")
    sampling = {"temperature": o.temperature, **({"top_p": o.top_p} if o.top_p is not None else {}),
                **({"top_k": o.top_k} if o.top_k is not None else {})}
    settings = {"prompt_tokens": None if o.dataset else o.prompt_tokens, "dataset": o.dataset,
                "tokenizer": o.tokenizer, "levels": [level.concurrency or level.rate for level in levels],
                "sampling": sampling}
    report = asyncio.run(run_serving_bench(
        o.base_url, levels, prompts, model=o.model, endpoint=o.endpoint, max_tokens=o.max_tokens,
        ignore_eos=o.ignore_eos, slo=slo, warmup=o.warmup, seed=o.seed, server_pid=pid,
        max_concurrency=o.max_concurrency, label=o.label, settings=settings, on_level=progress, sampling=sampling))
    render(console, report)
    if o.output:
        write_json(report, o.output)
        console.print(f"wrote {o.output}")
    if o.plots:
        from seedance.bench.plots import can_plot

        if can_plot(console):
            from seedance.bench.serving_plots import write_serving_plots

            others = [json.loads(Path(path).read_text()) for path in o.compare]
            for path in write_serving_plots([*others, report], Path(o.plots)):
                console.print(f"wrote {path}")
    return report
