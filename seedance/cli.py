"""The `seedance` command."""

from __future__ import annotations

import asyncio
import re
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
models_app = typer.Typer(help="Models one command away (docs/model.md).", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)

ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="a .gguf file, a local HF model directory, or a pulled name like smollm2 (default: built-in)")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda[:N]")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bfloat16 on AMX / AVX512_BF16 CPUs, else float32), float32, "
                                             "bfloat16 or float16")]
QuantizeOpt = Annotated[str | None, typer.Option(
    help="auto (a GGUF keeps its quantization), none (dequantize to --dtype), int8 or int4 (quantize on load)")]


def parse_bytes(text: str) -> int:
    """A memory size flag: 268435456, 256MiB, 256M, 1.5GiB, 2G (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size (268435456, 256MiB, 1.5GiB)")
    return int(float(m.group(1)) * 1024 ** ("KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (env SEEDANCE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port; 0 picks a free one (env SEEDANCE_PORT)")] = None,
    model: ModelOpt = None,
    config: Annotated[str | None, typer.Option("--config", help="TOML config file")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda[:N]")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto (the default: bfloat16 on AMX / AVX512_BF16 CPUs, else "
                                                   "float32), float32, bfloat16, float16")] = None,
    model_name: Annotated[str | None, typer.Option(help="model id reported to clients (default: the model's own)")]
    = None,
    quantize: QuantizeOpt = None,
    kv_cache_memory: Annotated[str | None, typer.Option(
        help="KV pool size, e.g. 512MiB (default: follows the model, docs/model.md)")] = None,
    keepalive: Annotated[str | None, typer.Option(help="TCP keepalive: conservative, aggressive, off")] = None,
    tls_cert: Annotated[str | None, typer.Option(help="PEM certificate chain: serve https:// and wss://")] = None,
    tls_key: Annotated[str | None, typer.Option(help="PEM private key for --tls-cert")] = None,
    tls_client_ca: Annotated[str | None, typer.Option(help="PEM CA: require client certificates (mTLS)")] = None,
    tls_min_version: Annotated[str | None, typer.Option(help="1.3 (default) or 1.2")] = None,
    jwt_secret: Annotated[str | None, typer.Option(help="HS256 secret (prefer env SEEDANCE_JWT_SECRET)")] = None,
    jwt_public_key: Annotated[str | None, typer.Option(help="PEM public key file: RS256 / ES256 tokens")] = None,
    jwt_jwks_file: Annotated[str | None, typer.Option(help="JWKS file; keys picked by kid")] = None,
    jwt_audience: Annotated[str | None, typer.Option(help="required token aud")] = None,
    jwt_issuer: Annotated[str | None, typer.Option(help="required token iss")] = None,
    allowed_origins: Annotated[str | None, typer.Option(help="browser origins allowed (comma list)")] = None,
    trusted_proxies: Annotated[str | None, typer.Option(help="proxies whose X-Forwarded-* count (IPs/CIDRs)")] = None,
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="allow no auth off loopback")] = False,
    max_connections_per_ip: Annotated[int | None, typer.Option(help="concurrent connections per IP; 0: off")] = None,
    max_connections_per_token: Annotated[int | None, typer.Option(help="the same per token; 0: off")] = None,
    ws_messages_per_s: Annotated[float | None, typer.Option(help="messages/s per WebSocket; 0: off")] = None,
    http_requests_per_s: Annotated[float | None, typer.Option(help="HTTP requests/s per IP; 0: off")] = None,
    max_message_bytes: Annotated[int | None, typer.Option(help="largest client message / HTTP body")] = None,
    max_prompt_tokens: Annotated[int | None, typer.Option(help="longest prompt in tokens")] = None,
    max_tokens_limit: Annotated[int | None, typer.Option(help="largest max_tokens a request may ask")] = None,
    log_level: str = "info",
    log_format: Annotated[str | None, typer.Option(help="text or json (one JSON object per line)")] = None,
    tracing: Annotated[str | None, typer.Option(help="OpenTelemetry spans: off, console, file, otlp")] = None,
    tracing_file: Annotated[str | None, typer.Option(help="JSON-lines span file for --tracing file")] = None,
    trace_slow_ms: Annotated[float | None, typer.Option(help="always trace requests slower than this")] = None,
    trace_sample_rate: Annotated[float | None, typer.Option(help="fraction of other requests traced")] = None,
    session_store: Annotated[str | None, typer.Option(help="sqlite:///path.db or redis://host:port/db")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="where the engine core runs: process (its own, "
                                               "the default) or thread (in this one; docs/server-stack.md)")] = None,
    workers: Annotated[int | None, typer.Option(help="gateway processes sharing the port in front of one engine "
                                                "process (docs/server-stack.md)")] = None,
) -> None:
    """Start the server (WebSocket /v1/stream, OpenAI-compatible SSE, HTTP polling)."""
    import gc
    import logging

    gc.disable()  # until the model is loaded (server.app.settle_heap): start-up builds objects that all live on

    from seedance.server.app import serve as run_server
    from seedance.server.http.config import ServerConfig
    from seedance.server.http.security import preflight

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    security = dict(tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca, tls_min_version=tls_min_version,
                    jwt_secret=jwt_secret, jwt_public_key=jwt_public_key, jwt_jwks_file=jwt_jwks_file,
                    jwt_audience=jwt_audience, jwt_issuer=jwt_issuer, allowed_origins=allowed_origins,
                    trusted_proxies=trusted_proxies, insecure_no_auth=True if insecure_no_auth else None,
                    max_connections_per_ip=max_connections_per_ip, max_connections_per_token=max_connections_per_token,
                    ws_messages_per_s=ws_messages_per_s, http_requests_per_s=http_requests_per_s,
                    max_message_bytes=max_message_bytes, max_prompt_tokens=max_prompt_tokens,
                    max_tokens_limit=max_tokens_limit)
    observability = dict(log_format=log_format, tracing=tracing, tracing_file=tracing_file,
                         trace_slow_ms=trace_slow_ms, trace_sample_rate=trace_sample_rate)
    try:
        kv_bytes = parse_bytes(kv_cache_memory) if kv_cache_memory is not None else None
        cfg = ServerConfig.load(config, host=host, port=port, model=model, device=device, dtype=dtype,
                                model_name=model_name, keepalive=keepalive, session_store=session_store,
                                quantize=quantize, kv_cache_bytes=kv_bytes, engine_mode=engine, workers=workers,
                                **security, **observability)
        preflight(cfg)  # refuses unsafe settings and unreadable keys/certificates before binding
    except (ValueError, typer.BadParameter) as err:
        print(f"seedance serve: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    from seedance.observability.logs import configure_logging

    configure_logging(log_level, cfg.log_format)
    if cfg.workers > 1:
        from seedance.server.workers import run_workers

        raise typer.Exit(run_workers(cfg, log_level))
    try:
        import uvloop

        failure = uvloop.run(run_server(cfg))
    except ImportError:
        failure = asyncio.run(run_server(cfg))
    if failure:  # already logged, on one line
        raise typer.Exit(1)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="a known model: smollm2")]) -> None:
    """Download a known model into the cache (SEEDANCE_CACHE or ~/.cache/seedance), verify its sha256, print its
    path. Idempotent; `seedance serve --model NAME` then serves it."""
    from seedance.models.registry import PullError, pull

    try:
        path = pull(name, log=lambda line: console.print(f"[dim]{line}[/dim]"))
    except (PullError, OSError) as err:
        print(f"seedance models pull: {err}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(path)


@models_app.command("list")
def models_list() -> None:
    """The models `models pull` knows, and whether each is in the cache."""
    from seedance.models.registry import REGISTRY, target_path

    for name, entry in REGISTRY.items():
        path = target_path(name)
        state = str(path) if path.is_file() else "not pulled"
        print(f"{name}\t{entry.package}=={entry.version}\t{entry.size / 1e6:.0f} MB\t{entry.licence}\t{state}")


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
    dtype: DtypeOpt = "auto",
    quantize: QuantizeOpt = "auto",
) -> None:
    """Stream a completion of PROMPT from the model to stdout."""
    from seedance.engine.async_engine import AsyncEngine, GenerateRequest
    from seedance.engine.config import EngineConfig
    from seedance.engine.sampling_params import SamplingParams

    async def run() -> None:
        t0 = time.perf_counter()
        engine = await AsyncEngine.create(EngineConfig(model=model, device=device, dtype=dtype, quantize=quantize))
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


UrlOpt = Annotated[str, typer.Option("--url", help="server WebSocket URL (env SEEDANCE_URL)", envvar="SEEDANCE_URL")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="JWT bearer token (env SEEDANCE_TOKEN)",
                                              envvar="SEEDANCE_TOKEN")]


@app.command()
def client(
    prompt: Annotated[str, typer.Argument(help="text to continue")],
    url: UrlOpt = "ws://127.0.0.1:8000/v1/stream",
    token: TokenOpt = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.8,
    seed: int | None = None,
    session: Annotated[str | None, typer.Option(help="continue this session (multi-turn)")] = None,
) -> None:
    """One-shot: stream a completion from a running server (the Python SDK, with reconnect and resume)."""
    from seedance.client import SeedanceClient, SeedanceError

    async def run() -> int:
        try:
            async with SeedanceClient(url, token=token) as c:
                stream = c.generate(prompt, session=session, max_tokens=max_tokens, temperature=temperature,
                                    seed=seed)
                async for chunk in stream:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
                sys.stdout.write("\n")
                console.print(f"[dim]{stream.done.usage['completion_tokens']} tokens, "
                              f"finish={stream.done.finish_reason}[/dim]")
        except (SeedanceError, OSError) as err:
            console.print(f"[red]error:[/red] {err}")
            return 1
        return 0

    raise typer.Exit(asyncio.run(run()))


@app.command()
def chat(
    url: UrlOpt = "ws://127.0.0.1:8000/v1/stream",
    token: TokenOpt = None,
    session: Annotated[str | None, typer.Option(help="session id (default: a new one)")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.8,
) -> None:
    """Interactive multi-turn chat on a session; each turn reuses the server's KV of the previous ones."""
    import uuid

    from seedance.client import SeedanceClient, SeedanceError

    session_id = session or f"chat-{uuid.uuid4().hex[:12]}"

    async def run() -> None:
        async with SeedanceClient(url, token=token) as c:
            console.print(f"[dim]session {session_id}; empty line or Ctrl-D to quit[/dim]")
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, _read_line, "> ")
                if not line:
                    return
                try:
                    stream = c.generate(line, session=session_id, max_tokens=max_tokens, temperature=temperature)
                    async for chunk in stream:
                        sys.stdout.write(chunk.text)
                        sys.stdout.flush()
                except SeedanceError as err:
                    console.print(f"[red]error:[/red] {err}")
                    continue
                sys.stdout.write("\n")
                reuse = stream.done.kv_reuse
                console.print(f"[dim]{stream.done.usage['completion_tokens']} tokens"
                              + (f", KV reused {reuse:.0%}" if reuse is not None else "") + "[/dim]")

    asyncio.run(run())


def _read_line(prompt: str) -> str:
    try:
        return input(prompt).strip()
    except EOFError:
        return ""


def _seconds(text: str) -> float:
    """A duration flag: 30, 30s, 500ms, 2m."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration (30, 30s, 500ms, 2m)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


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


@bench_app.command("transports")
def bench_transports(
    concurrency: Annotated[str, typer.Option(help="client counts, comma list")] = "20,50,100",
    transports: Annotated[str, typer.Option(help="comma list of polling, sse, websocket")] = "polling,sse,websocket",
    duration: Annotated[str, typer.Option(help="measured time per transport and level: 30, 30s, 500ms, 2m")] = "5s",
    ramp: Annotated[str, typer.Option(help="clients start spread over this long before measuring (0: at once)")] = "0",
    max_tokens: Annotated[int, typer.Option(help="tokens per request")] = 32,
    processes: Annotated[int, typer.Option(help="load-generator processes")] = 1,
    backend: Annotated[str, typer.Option(help="synthetic (no model compute) or model (built-in model)")] = "synthetic",
    rate: Annotated[float, typer.Option(help="synthetic backend: tokens/s per stream")] = 50.0,
    url: Annotated[str | None, typer.Option(help="target a running loopback server instead of starting one")] = None,
    p99_bound_ms: Annotated[float, typer.Option(help="knee: p99 TTFT / inter-chunk bound")] = 500.0,
    memory_connections: Annotated[int, typer.Option(help="K for the memory probe; 0 skips it")] = 100,
    wrk_clients: Annotated[int, typer.Option(help="cross-check with wrk at this level; 0 skips it")] = 0,
    wrk_transports: Annotated[str, typer.Option(help="HTTP transports wrk cross-checks")] = "sse,polling",
    baseline: Annotated[str | None, typer.Option(help="also run the WebSocket levels against a bare server "
                                                      "(picows) and print the ratios")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="the server's engine mode: thread or process "
                                               "(default: the server's own)")] = None,
    server_path: Annotated[str | None, typer.Option(help="run the server from this source tree (e.g. an older "
                                                         "commit's `git archive`) for a before/after")] = None,
    workers: Annotated[int | None, typer.Option(help="the server's --workers (gateway processes)")] = None,
    source_addresses: Annotated[int, typer.Option(help="clients connect from this many loopback addresses "
                                                  "(127.0.0.1, .2, ...): --workers routes by address")] = 1,
    engine_alone: Annotated[bool, typer.Option("--engine-alone", help="--backend model: then the same closed loop "
                                               "on an in-process engine, no server (the WebSocket figure's ceiling)")]
    = False,
    output: Annotated[str | None, typer.Option(help="write results JSON here")] = "bench/results/transports.json",
    plots: Annotated[str | None, typer.Option(help="write PNG plots into this folder")] = "docs/images",
) -> None:
    """The same streaming workload over HTTP polling, SSE and WebSocket: throughput, latency, server cost."""
    from seedance.bench.transports_bench import run_transports_bench

    if backend not in ("synthetic", "model"):
        raise typer.BadParameter("--backend must be synthetic or model")
    run_transports_bench([int(c) for c in concurrency.split(",") if c.strip()],
                         [t.strip() for t in transports.split(",") if t.strip()], _seconds(duration), max_tokens,
                         processes, backend, rate, url, p99_bound_ms, memory_connections, wrk_clients or None, output,
                         plots, ramp=_seconds(ramp),
                         wrk_transports=tuple(t.strip() for t in wrk_transports.split(",") if t.strip()),
                         baseline=baseline, engine_mode=engine, server_path=server_path,
                         with_engine_alone=engine_alone, workers=workers, source_addresses=source_addresses)


@bench_app.command("fuzz")
def bench_fuzz(
    ws_messages: Annotated[int, typer.Option(help="fuzzed WebSocket JSON messages")] = 100_000,
    binary_frames: Annotated[int, typer.Option(help="fuzzed client binary frames")] = 10_000,
    http_bodies: Annotated[int, typer.Option(help="fuzzed HTTP requests (all routes)")] = 50_000,
    seed: Annotated[int, typer.Option(help="seed of the mutations (a run is reproducible)")] = 0,
    ws_connections: Annotated[int, typer.Option(help="WebSocket fuzzing connections")] = 4,
    http_concurrency: Annotated[int, typer.Option(help="HTTP requests in flight")] = 8,
    hang_timeout: Annotated[float, typer.Option(help="seconds without an answer that count as a hang")] = 20.0,
    url: Annotated[str | None, typer.Option(help="target a running loopback server instead of starting one")] = None,
    output: Annotated[str | None, typer.Option(help="write the report JSON here")] = "bench/results/fuzz.json",
) -> None:
    """Fuzz WebSocket JSON, binary frames and HTTP bodies with a canary stream running; exit 1 on any defect."""
    from seedance.bench.fuzz import run_fuzz_bench

    report = run_fuzz_bench(url, output, ws_messages=ws_messages, binary_frames=binary_frames,
                            http_bodies=http_bodies, seed=seed, ws_connections=ws_connections,
                            http_concurrency=http_concurrency, hang_timeout_s=hang_timeout)
    console.print_json(data={"defects": report.defects, "canary_quiet": report.quiet, "canary_loaded": report.loaded,
                             "duration_s": report.duration_s})
    if any(report.defects.values()):
        raise typer.Exit(1)


@bench_app.command("slowloris")
def bench_slowloris(
    connections: Annotated[int, typer.Option(help="unfinished connections from one address")] = 5000,
    header_timeout: Annotated[float, typer.Option(help="the server's header_timeout_s")] = 10.0,
) -> None:
    """One address holds many connections with unfinished headers; is /healthz still answered for others?"""
    from seedance.bench.slowloris import run_slowloris_bench

    console.print_json(data=run_slowloris_bench(connections, {"header_timeout_s": header_timeout}))


@bench_app.command("cold-start")
def bench_cold_start(
    runs: Annotated[int, typer.Option(help="servers started per warm-up mode")] = 5,
    backend: Annotated[str, typer.Option(help="model (built-in model) or synthetic (no model compute)")] = "model",
    no_warmup: Annotated[bool, typer.Option("--no-warmup", help="servers with EngineConfig.warmup off")] = False,
    compare_warmup: Annotated[bool, typer.Option("--compare-warmup", help="as many again with warm-up off: "
                                                 "first-request TTFT with and without")] = False,
    rate: Annotated[float, typer.Option(help="synthetic backend: tokens/s per stream")] = 50.0,
    max_tokens: Annotated[int, typer.Option(help="tokens per request (two requests per server)")] = 8,
    output: Annotated[str | None, typer.Option(help="write results JSON here")] = "bench/results/cold-start.json",
    plot: Annotated[str | None, typer.Option(help="waterfall PNG")] = "docs/images/cold-start-waterfall.png",
) -> None:
    """Process start to first token, N times: each phase (imports, listener, config, weights, tokenizer, KV pool,
    warm-up, first connection, first token) as mean ± std, a JSON report and a waterfall plot."""
    from seedance.bench.cold_start import render, run_cold_start_bench

    if backend not in ("synthetic", "model"):
        raise typer.BadParameter("--backend must be synthetic or model")
    if runs < 1:
        raise typer.BadParameter("--runs must be >= 1")
    modes = (True, False) if compare_warmup else (not no_warmup,)
    render(console, run_cold_start_bench(runs, backend, modes, rate, max_tokens, output, plot, console=console))


@bench_app.command("workloads")
def bench_workloads(
    workloads: Annotated[str, typer.Option(help="comma list of short, summary, dialogue")] = "short,summary,dialogue",
    configs: Annotated[str, typer.Option(
        help="comma list of server configurations: default, kv-512, kv-160, kv-96, seqs-4, seqs-16, shed, "
             "chunk-1024, bf16, lean (all but seqs-16 and lean by default; docs/benchmarks.md says what each is)",
    )] = "default,kv-512,kv-160,kv-96,seqs-4,shed,chunk-1024,bf16",
    requests: Annotated[int | None, typer.Option(help="requests per cell (dialogue: conversations); "
                                                      "default 150 / 32 / 40")] = None,
    rate: Annotated[str | None, typer.Option(help="Poisson arrivals/s: one number for all, or "
                                                  "short=30,summary=3,dialogue=6 (the defaults)")] = None,
    deadline: Annotated[float, typer.Option(help="seconds a request (a dialogue turn) may take")] = 15.0,
    seed: Annotated[int, typer.Option(help="picks the passages and the arrival times")] = 0,
    retries: Annotated[int, typer.Option(help="reruns of a cell that other processes disturbed")] = 2,
    output: Annotated[str | None, typer.Option(help="write results JSON here")] = "bench/results/workloads.json",
    plots: Annotated[str | None, typer.Option(help="write PNG plots into this folder")] = "docs/images",
) -> None:
    """Short / long-context summary / multi-turn dialogue × server configurations: latency, memory and completion
    rate per cell, and the Pareto-optimal configurations per workload."""
    from seedance.bench.workloads_bench import parse_configs, parse_workloads, run_workloads_bench

    try:
        chosen, names = parse_workloads(workloads, requests, rate), parse_configs(configs)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    run_workloads_bench(chosen, names, deadline, output, plots, seed, console=console, retries=retries)


@bench_app.command("serving")
def bench_serving(
    base_url: Annotated[str, typer.Option(help="the server's OpenAI base URL (Seedance, vLLM, llama-server...)")] = (
        "http://127.0.0.1:8000/v1"),
    concurrency: Annotated[str, typer.Option(help="closed-loop levels: C clients started together")] = "1,8,32,64",
    request_rate: Annotated[str | None, typer.Option(help="open-loop levels instead: Poisson req/s, comma list")] = (
        None),
    rounds: Annotated[int, typer.Option(help="closed loop: prompts per level = C × rounds")] = 1,
    num_prompts: Annotated[int | None, typer.Option(help="prompts per level (overrides C × rounds; "
                                                          "open loop: default 64)")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="open loop: cap on requests in flight")] = None,
    prompt_tokens: Annotated[int, typer.Option(help="random prompts: tokens per prompt")] = 64,
    max_tokens: Annotated[int, typer.Option(help="output tokens per request")] = 128,
    dataset: Annotated[str | None, typer.Option(help="JSONL prompts ({\"prompt\"} or {\"messages\"} a line) "
                                                     "instead of random tokens")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="the served model's tokenizer.json or model dir, for "
                                                       "random prompts (default: the built-in model's)")] = None,
    endpoint: Annotated[str, typer.Option(help="completions or chat")] = "completions",
    model: Annotated[str | None, typer.Option("--model", help="model name to send (default: /v1/models' first)")] = (
        None),
    ignore_eos: Annotated[bool, typer.Option(help="every request generates max_tokens")] = True,
    slo: Annotated[str, typer.Option(help="goodput SLO in ms: ttft=,tpot=,e2e=")] = "ttft=1000,tpot=100",
    warmup: Annotated[int, typer.Option(help="unmeasured requests first")] = 2,
    seed: Annotated[int, typer.Option(help="picks the random prompts and the arrival times")] = 0,
    server_pid: Annotated[int | None, typer.Option(help="local server pid, for its RSS (children included)")] = None,
    server_port: Annotated[int | None, typer.Option(help="or find the local server's pid by its port")] = None,
    label: Annotated[str | None, typer.Option(help="name of this run in tables and plots")] = None,
    output: Annotated[str | None, typer.Option(help="write results JSON here")] = "bench/results/serving.json",
    plots: Annotated[str | None, typer.Option(help="write serving.png into this folder")] = None,
    compare: Annotated[list[str] | None, typer.Option(help="earlier result JSONs to plot beside this run")] = None,
) -> None:
    """Load any OpenAI-compatible server like `vllm bench serve`: output tok/s, TTFT / ITL / TPOT / E2E
    percentiles, goodput, errors and the server's memory, per concurrency level or request rate."""
    from seedance.bench.serving_run import BadOption, ServingOptions, run_serving

    options = ServingOptions(base_url, concurrency, request_rate, rounds, num_prompts, max_concurrency, prompt_tokens,
                             max_tokens, dataset, tokenizer, endpoint, model, ignore_eos, slo, warmup, seed,
                             server_pid, server_port, label, output, plots, compare or [])
    try:
        run_serving(options, console)
    except BadOption as err:
        raise typer.BadParameter(str(err)) from None


if __name__ == "__main__":
    app()
