"""The `seedance` command."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Seedance: a streaming LLM inference server.", no_args_is_help=True, pretty_exceptions_enable=False
)
bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)

ModelOpt = Annotated[str | None, typer.Option("--model", help="local HF model directory (default: built-in)")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda[:N]")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16")]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (env SEEDANCE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port; 0 picks a free one (env SEEDANCE_PORT)")] = None,
    model: ModelOpt = None,
    config: Annotated[str | None, typer.Option("--config", help="TOML config file")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda[:N]")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16")] = None,
    model_name: Annotated[str | None, typer.Option(help="model id reported to clients")] = None,
    keepalive: Annotated[str | None, typer.Option(help="TCP keepalive: conservative, aggressive, off")] = None,
    log_level: str = "info",
) -> None:
    """Start the server (WebSocket /v1/stream, OpenAI-compatible SSE, HTTP polling)."""
    import logging

    from seedance.server.app import serve as run_server
    from seedance.server.config import ServerConfig

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = ServerConfig.load(config, host=host, port=port, model=model, device=device, dtype=dtype,
                            model_name=model_name, keepalive=keepalive)
    try:
        import uvloop

        uvloop.run(run_server(cfg))
    except ImportError:
        asyncio.run(run_server(cfg))


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="text to continue")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.8,
    top_p: float = 0.95,
    top_k: int = 40,
    seed: int | None = None,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
) -> None:
    """Stream a completion of PROMPT from the model to stdout."""
    from seedance.engine.async_engine import AsyncEngine, GenerateRequest
    from seedance.engine.config import EngineConfig
    from seedance.engine.sampling_params import SamplingParams

    async def run() -> None:
        t0 = time.perf_counter()
        engine = await AsyncEngine.create(EngineConfig(model=model, device=device, dtype=dtype))
        loaded = time.perf_counter()
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop or [],
        )
        sys.stdout.write(prompt)
        first = None
        count = 0
        reason = None
        try:
            async for event in engine.generate(GenerateRequest(prompt=prompt, params=params)):
                if first is None:
                    first = time.perf_counter()
                count += event.token_id >= 0
                sys.stdout.write(event.text_delta)
                sys.stdout.flush()
                reason = event.finish_reason
        finally:
            await engine.close()
        end = time.perf_counter()
        sys.stdout.write("\n")
        decode = (end - first) / max(1, count - 1) if first else 0.0
        console.print(
            f"[dim]{count} tokens, finish={reason}, load {loaded - t0:.2f}s, "
            f"TTFT {(first or end) - loaded:.3f}s, {1 / decode if decode else 0:.0f} tok/s[/dim]"
        )

    asyncio.run(run())


@bench_app.command("engine")
def bench_engine(
    concurrency: Annotated[list[int] | None, typer.Option(help="streams (repeatable)")] = None,
    max_tokens: int = 128,
    prompt_tokens: int = 64,
    requests: Annotated[int, typer.Option(help="requests per Poisson run")] = 64,
    rate: Annotated[float, typer.Option(help="Poisson arrival rate, requests/s")] = 10.0,
    model: ModelOpt = None,
    output: Annotated[str | None, typer.Option(help="write results JSON here")] = None,
) -> None:
    """Continuous batching vs one-at-a-time and static batching with transformers, in one run."""
    from seedance.bench.engine_bench import run_engine_bench

    run_engine_bench(concurrency or [1, 8, 32], max_tokens, prompt_tokens, requests, rate, model, output)


if __name__ == "__main__":
    app()
