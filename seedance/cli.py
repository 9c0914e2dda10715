"""The `seedance` command."""

from __future__ import annotations

import asyncio
import functools
import re
import sys
import time
from typing import Annotated

import typer

from seedance.paths import results_dir

app = typer.Typer(
    help="Seedance: a streaming LLM inference server.", no_args_is_help=True, pretty_exceptions_enable=False
)
bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
models_app = typer.Typer(help="Models one command away (docs/model.md).", no_args_is_help=True)
app.add_typer(models_app, name="models")


@functools.cache
def _console():
    """rich's Console, made on first use: `seedance serve` prints nothing through it (~40 ms of its start-up)."""
    from rich.console import Console

    return Console(stderr=True)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


# Benchmarks write here unless told otherwise: outside the source tree, so a run never overwrites the committed
# results and figures (seedance/paths.py; SEEDANCE_STATE_DIR or XDG_STATE_HOME move it). "" skips a file.
RESULTS = str(results_dir())


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"seedance {version('seedance')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("seedance (not installed: no version metadata)")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", metavar="", callback=_version, is_eager=True,
                                               help="print the version and exit")] = False) -> None:
    """Seedance: a streaming LLM inference server."""

ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="a .gguf file, a local HF model directory, or a pulled name like smollm2 (default: built-in)")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda[:N]")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bfloat16 on AMX / AVX512_BF16 CPUs, else float32), float32, "
                                             "bfloat16 or float16")]
QuantizeOpt = Annotated[str | None, typer.Option(
    help="auto (a GGUF on the fastest kernel that holds it), none (dequantize to --dtype), int8, int4 or fp16 "
         "(quantize on load; docs/model.md)")]


def parse_bytes(text: str) -> int:
    """A memory size flag: 268435456, 256MiB, 256M, 1.5GiB, 2G (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size (268435456, 256MiB, 1.5GiB)")
    return int(float(m.group(1)) * 1024 ** ("KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0))


def _opt(metavar: str, help: str, *names: str) -> typer.models.OptionInfo:
    """A serve option: given or not (None: the config file, the env, then ServerConfig's default decide), with a
    plain metavar and its default in the help text."""
    return typer.Option(*names, metavar=metavar, help=help)


S = str | None
Int = int | None
F = float | None


@app.command()
def serve(
    host: Annotated[S, _opt("ADDR", "bind address (default: 127.0.0.1) (env SEEDANCE_HOST)")] = None,
    port: Annotated[Int, _opt("PORT", "port; 0 picks a free one (default: 8000) (env SEEDANCE_PORT)")] = None,
    model: Annotated[S, _opt("MODEL", "a .gguf file, a local HF model directory, or a pulled name like smollm2 "
                                      "(default: the built-in seedance-tiny)", "--model")] = None,
    config: Annotated[S, _opt("FILE", "TOML config file", "--config")] = None,
    device: Annotated[S, _opt("DEVICE", "cpu or cuda[:N] (default: cpu)")] = None,
    dtype: Annotated[S, _opt("DTYPE", "auto (bfloat16 on AMX / AVX512_BF16 CPUs and bf16 GPUs, else float32), "
                                      "float32, bfloat16, float16 (default: auto)")] = None,
    model_name: Annotated[S, _opt("NAME", "model id reported to clients (default: the model's own)")] = None,
    quantize: Annotated[S, _opt("MODE", "auto (a GGUF on the fastest kernel that holds it), none (dequantize to "
                                        "--dtype), int8, int4 or fp16 (quantize on load) (default: auto)")] = None,
    kv_cache_memory: Annotated[S, _opt("SIZE", "KV pool size, e.g. 512MiB (default: follows the model, "
                                               "docs/model.md)")] = None,
    compile_decode: Annotated[bool, _opt("", "decode steps through torch.compile: faster steps, a minute or more of "
                                      "compiling at start-up (docs/model.md) (env SEEDANCE_COMPILE)",
                                  "--compile")] = False,
    keepalive: Annotated[S, _opt("PRESET", "TCP keepalive: conservative, aggressive, off (default: "
                                           "conservative)")] = None,
    tls_cert: Annotated[S, _opt("FILE", "PEM certificate chain: serve https:// and wss://")] = None,
    tls_key: Annotated[S, _opt("FILE", "PEM private key for --tls-cert")] = None,
    tls_client_ca: Annotated[S, _opt("FILE", "PEM CA: require client certificates (mTLS)")] = None,
    tls_min_version: Annotated[S, _opt("VERSION", "1.3 or 1.2 (default: 1.3)")] = None,
    api_key: Annotated[list[str] | None, _opt("KEY", "shared bearer key clients send as 'Authorization: Bearer KEY' "
                                                     "(repeatable; env SEEDANCE_API_KEY, comma-separated)",
                                              "--api-key")] = None,
    jwt_secret: Annotated[S, _opt("SECRET", "HS256 secret (prefer env SEEDANCE_JWT_SECRET)")] = None,
    jwt_public_key: Annotated[S, _opt("FILE", "PEM public key file: RS256 / ES256 tokens")] = None,
    jwt_jwks_file: Annotated[S, _opt("FILE", "JWKS file; keys picked by kid")] = None,
    jwt_audience: Annotated[S, _opt("AUD", "required token aud")] = None,
    jwt_issuer: Annotated[S, _opt("ISS", "required token iss")] = None,
    allowed_origins: Annotated[S, _opt("ORIGINS", "browser origins allowed (comma list)")] = None,
    trusted_proxies: Annotated[S, _opt("CIDRS", "proxies whose X-Forwarded-* count (IPs/CIDRs)")] = None,
    insecure_no_auth: Annotated[bool, _opt("", "allow no auth off loopback", "--insecure-no-auth")] = False,
    max_connections_per_ip: Annotated[Int, _opt("N", "concurrent connections per IP; 0: off (default: 256)")] = None,
    max_connections_per_token: Annotated[Int, _opt("N", "the same per token; 0: off (default: 128)")] = None,
    ws_messages_per_s: Annotated[F, _opt("RATE", "messages/s per WebSocket; 0: off (default: 200)")] = None,
    http_requests_per_s: Annotated[F, _opt("RATE", "HTTP requests/s per IP; 0: off (default: 100)")] = None,
    max_message_bytes: Annotated[Int, _opt("BYTES", "largest client message / HTTP body (default: 1048576)")] = None,
    max_prompt_tokens: Annotated[Int, _opt("N", "longest prompt in tokens (default: the context length)")] = None,
    max_tokens_limit: Annotated[Int, _opt("N", "largest max_tokens a request may ask (default: 4096)")] = None,
    log_level: Annotated[str, _opt("LEVEL", "debug, info, warning, error")] = "info",
    log_format: Annotated[S, _opt("FORMAT", "text or json (one JSON object per line) (default: text)")] = None,
    tracing: Annotated[S, _opt("MODE", "OpenTelemetry spans: off, console, file, otlp (default: off)")] = None,
    tracing_file: Annotated[S, _opt("FILE", "JSON-lines span file for --tracing file")] = None,
    trace_slow_ms: Annotated[F, _opt("MS", "always trace requests slower than this (default: 2000)")] = None,
    trace_sample_rate: Annotated[F, _opt("FRACTION", "fraction of other requests traced (default: 0.01)")] = None,
    session_store: Annotated[S, _opt("URL", "sqlite:///path.db or redis://host:port/db (default: sessions.db in "
                                            "the state directory)")] = None,
    state_dir: Annotated[S, _opt("DIR", "the server's own files, the session database (env SEEDANCE_STATE_DIR) "
                                        "(default: $XDG_STATE_HOME/seedance, else ~/.local/state/seedance)")] = None,
    engine: Annotated[S, _opt("MODE", "where the engine core runs: thread (in this process) or process (its own; "
                                      "docs/server-stack.md) (default: process)", "--engine")] = None,
    workers: Annotated[Int, _opt("N", "gateway processes sharing the port in front of one engine process "
                                      "(docs/server-stack.md) (default: 1)")] = None,
    ws_stack: Annotated[S, _opt("STACK", "/v1/stream's WebSocket stack on the one port: picows or aiohttp "
                                         "(docs/server-stack.md) (default: picows)", "--ws-stack")] = None,
) -> None:
    """Start the server (WebSocket /v1/stream, OpenAI-compatible SSE, HTTP polling)."""
    import gc
    import logging

    gc.disable()  # until the model is loaded (server.app.settle_heap): start-up builds objects that all live on

    from seedance.server.http.config import ServerConfig

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    security = dict(api_key=",".join(api_key) if api_key else None,
                    tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca, tls_min_version=tls_min_version,
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
                                state_dir=state_dir, engine_mode=engine, workers=workers,
                                ws_stack=ws_stack, quantize=quantize, kv_cache_bytes=kv_bytes,
                                compile=True if compile_decode else None, **security,
                                **observability)
    except (ValueError, typer.BadParameter) as err:
        print(f"seedance serve: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    core = None
    if cfg.engine_mode == "process" and cfg.workers <= 1:
        # start the engine process first: its torch import and model load overlap the gateway's imports (the
        # preflight's aiohttp among them, ~0.5 s) and app construction below (docs/server-stack.md); /readyz
        # says `loading` until it is Ready. Refused settings or a busy port stop it again.
        from seedance.engine.core_spawn import spawn_core

        core = spawn_core(cfg.engine, logging.getLogger().level)
    from seedance.server.http.listen import check_can_listen
    from seedance.server.http.security import preflight

    try:
        preflight(cfg)  # refuses unsafe settings and unreadable keys/certificates before binding
    except (ValueError, typer.BadParameter) as err:
        if core is not None:
            core.stop()
        print(f"seedance serve: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    try:
        check_can_listen(cfg.host, cfg.port)
    except OSError as err:
        if core is not None:
            core.stop()
        print(f"seedance serve: {listen_error(cfg.host, cfg.port, err)}", file=sys.stderr)
        raise typer.Exit(1) from None
    from seedance.observability.logs import configure_logging

    configure_logging(log_level, cfg.log_format)
    if cfg.workers > 1:  # the supervisor imports no app and no torch: its engine process and workers do
        from seedance.server.workers import run_workers

        raise typer.Exit(run_workers(cfg, log_level))
    from seedance.server.app import serve as run_server
    try:
        try:
            import uvloop
        except ImportError:
            failure = asyncio.run(run_server(cfg, core=core))
        else:
            failure = uvloop.run(run_server(cfg, core=core))
    except OSError as err:  # the listener: port in use, no permission, no such address
        print(f"seedance serve: {listen_error(cfg.host, cfg.port, err)}", file=sys.stderr)
        raise typer.Exit(1) from None
    if failure:  # already logged, on one line
        raise typer.Exit(1)


def listen_error(host: str, port: int, err: OSError) -> str:
    """One line for a socket that cannot listen (the traceback says nothing more useful)."""
    import errno

    if err.errno == errno.EADDRINUSE:
        return (f"cannot listen on {host}:{port}: the address is already in use (another server running?); "
                "choose another with --port, or stop the one holding it")
    if err.errno == errno.EACCES:
        return f"cannot listen on {host}:{port}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on {host}:{port}: {err.strerror or err}"


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="a known model: smollm2")]) -> None:
    """Download a known model into the cache (SEEDANCE_CACHE or ~/.cache/seedance), verify its sha256, print its
    path. Idempotent; `seedance serve --model NAME` then serves it."""
    from seedance.models.registry import PullError, pull

    try:
        path = pull(name, log=lambda line: _console().print(f"[dim]{line}[/dim]"))
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


# Sampling defaults of the commands that print text for a person to read (generate, client, chat): one set,
# shared. They trim the tail (temperature 0.8, top-p 0.95, top-k 40), which reads better from small models.
# The APIs keep their own defaults, documented in docs/openai-endpoints.md: the OpenAI endpoints OpenAI's
# (temperature 1, top_p 1), which SDK users rely on, and the WebSocket protocol the engine's SamplingParams.
CLI_TEMPERATURE, CLI_TOP_P, CLI_TOP_K, CLI_MAX_TOKENS = 0.8, 0.95, 40, 64
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", metavar="N", help="tokens to generate")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "-t", metavar="T", help="0: greedy")]
TopPOpt = Annotated[float, typer.Option(metavar="P", help="nucleus sampling; 1: off")]
TopKOpt = Annotated[int, typer.Option(metavar="K", help="0: off")]
UrlOpt = Annotated[str, typer.Option("--url", metavar="URL", help="server WebSocket URL (env SEEDANCE_URL)",
                                     envvar="SEEDANCE_URL")]
TokenOpt = Annotated[str | None, typer.Option("--token", metavar="TOKEN", help="API key or JWT bearer token (env "
                                              "SEEDANCE_TOKEN)", envvar="SEEDANCE_TOKEN")]


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="text to continue")],
    url: Annotated[str | None, typer.Option(
        "--url", metavar="URL", help="stream from a running server (ws://HOST:PORT/v1/stream) instead of loading "
        "the model in this process")] = None,
    token: TokenOpt = None,
    max_tokens: MaxTokensOpt = CLI_MAX_TOKENS,
    temperature: TemperatureOpt = CLI_TEMPERATURE,
    top_p: TopPOpt = CLI_TOP_P,
    top_k: TopKOpt = CLI_TOP_K,
    seed: Annotated[int | None, typer.Option(metavar="N")] = None,
    stop: Annotated[list[str] | None, typer.Option(metavar="TEXT", help="stop string (repeatable)")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    quantize: QuantizeOpt = "auto",
) -> None:
    """Stream a completion of PROMPT to stdout: from a running server with --url, else from the model loaded in
    this process (no server needed; it says so)."""
    params = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                  stop=stop or [])
    if url is not None:
        if model is not None:
            raise typer.BadParameter("--model picks the model this process loads; with --url the server's is used")
        raise typer.Exit(_stream_from_server(url, token, prompt, params))
    _console().print("[dim]loading the model in this process (no server); --url ws://HOST:PORT/v1/stream streams "
                  "from a running one[/dim]")
    from seedance.engine.async_engine import AsyncEngine, GenerateRequest
    from seedance.engine.config import EngineConfig
    from seedance.engine.sampling_params import SamplingParams

    async def run() -> None:
        t0 = time.perf_counter()
        engine = await AsyncEngine.create(EngineConfig(model=model, device=device, dtype=dtype, quantize=quantize))
        loaded = time.perf_counter()
        sys.stdout.write(prompt)
        first = None
        count = 0
        reason = None
        try:
            async for event in engine.generate(GenerateRequest(prompt=prompt, params=SamplingParams(**params))):
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
        _console().print(
            f"[dim]{count} tokens, finish={reason}, load {loaded - t0:.2f}s, "
            f"TTFT {(first or end) - loaded:.3f}s, {1 / decode if decode else 0:.0f} tok/s[/dim]"
        )

    asyncio.run(run())


def _stream_from_server(url: str, token: str | None, prompt: str, params: dict, echo: bool = True,
                        session: str | None = None) -> int:
    """One generation from a running server through the SDK (reconnect and resume); the exit status."""
    from seedance.client import SeedanceClient, SeedanceError

    async def run() -> int:
        try:
            async with SeedanceClient(url, token=token) as c:
                stream = c.generate(prompt, session=session, **params)
                if echo:
                    sys.stdout.write(prompt)
                async for chunk in stream:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
                sys.stdout.write("\n")
                _console().print(f"[dim]{stream.done.usage['completion_tokens']} tokens, "
                              f"finish={stream.done.finish_reason}[/dim]")
        except (SeedanceError, OSError) as err:
            _console().print(f"[red]error:[/red] {escape(str(err))}")
            return 1
        return 0

    return asyncio.run(run())


@app.command()
def client(
    prompt: Annotated[str, typer.Argument(help="text to continue")],
    url: UrlOpt = "ws://127.0.0.1:8000/v1/stream",
    token: TokenOpt = None,
    max_tokens: MaxTokensOpt = CLI_MAX_TOKENS,
    temperature: TemperatureOpt = CLI_TEMPERATURE,
    top_p: TopPOpt = CLI_TOP_P,
    top_k: TopKOpt = CLI_TOP_K,
    seed: Annotated[int | None, typer.Option(metavar="N")] = None,
    session: Annotated[str | None, typer.Option(metavar="ID", help="continue this session (multi-turn)")] = None,
) -> None:
    """One-shot: stream a completion from a running server (the Python SDK, with reconnect and resume)."""
    params = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    raise typer.Exit(_stream_from_server(url, token, prompt, params, echo=False, session=session))


@app.command()
def chat(
    url: UrlOpt = "ws://127.0.0.1:8000/v1/stream",
    token: TokenOpt = None,
    session: Annotated[str | None, typer.Option(metavar="ID", help="session id (default: a new one)")] = None,
    max_tokens: MaxTokensOpt = CLI_MAX_TOKENS,
    temperature: TemperatureOpt = CLI_TEMPERATURE,
    top_p: TopPOpt = CLI_TOP_P,
    top_k: TopKOpt = CLI_TOP_K,
) -> None:
    """Interactive multi-turn chat on a session; each turn reuses the server's KV of the previous ones.
    Ctrl-C stops a reply; at the prompt it quits, as do an empty line and Ctrl-D."""
    import uuid

    from seedance.client import SeedanceError
    from seedance.client.sync import SyncSeedanceClient

    session_id = session or f"chat-{uuid.uuid4().hex[:12]}"
    params = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    # The prompt is read on the main thread, so Ctrl-C interrupts input() at once; the client runs its event
    # loop on a thread of its own (SyncSeedanceClient). A prompt read on a worker thread held the exit until
    # Enter was pressed.
    try:
        c = SyncSeedanceClient(url, token=token)
    except (SeedanceError, OSError) as err:
        _console().print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    with c:
        _console().print(f"[dim]session {session_id}; empty line, Ctrl-D or Ctrl-C to quit[/dim]")
        while True:
            try:
                line = _read_line("> ")
            except KeyboardInterrupt:
                sys.stderr.write("\n")
                raise typer.Exit(130) from None
            if not line:
                return
            try:
                for chunk in c.generate(line, session=session_id, **params):
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                _console().print("\n[dim](stopped)[/dim]")
                continue
            except SeedanceError as err:
                _console().print(f"[red]error:[/red] {escape(str(err))}")
                continue
            sys.stdout.write("\n")
            done = c.last_done
            if done is not None:
                reuse = done.kv_reuse
                _console().print(f"[dim]{done.usage['completion_tokens']} tokens"
                              + (f", KV reused {reuse:.0%}" if reuse is not None else "") + "[/dim]")


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
    ws_stack: Annotated[str | None, typer.Option("--ws-stack", help="the server's /v1/stream stack: picows or "
                                                 "aiohttp (default: the server's own)")] = None,
    source_addresses: Annotated[int, typer.Option(help="clients connect from this many loopback addresses "
                                                  "(127.0.0.1, .2, ...): --workers routes by address")] = 1,
    engine_alone: Annotated[bool, typer.Option("--engine-alone", help="--backend model: then the same closed loop "
                                               "on an in-process engine, no server (the WebSocket figure's ceiling)")]
    = False,
    output: Annotated[str | None, typer.Option(metavar="FILE", help="write results JSON here")] = (
        f"{RESULTS}/transports.json"),
    plots: Annotated[str | None, typer.Option(metavar="DIR", help="write PNG plots into this folder")] = RESULTS,
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
                         with_engine_alone=engine_alone, workers=workers, source_addresses=source_addresses,
                         ws_stack=ws_stack)


@bench_app.command("fuzz")
def bench_fuzz(
    ws_messages: Annotated[int, typer.Option(help="fuzzed WebSocket JSON messages")] = 100_000,
    binary_frames: Annotated[int, typer.Option(help="fuzzed client binary frames")] = 10_000,
    http_bodies: Annotated[int, typer.Option(help="fuzzed HTTP requests (all routes)")] = 50_000,
    realtime_events: Annotated[int, typer.Option(help="fuzzed OpenAI Realtime events (/v1/realtime)")] = 20_000,
    seed: Annotated[int, typer.Option(help="seed of the mutations (a run is reproducible)")] = 0,
    ws_connections: Annotated[int, typer.Option(help="WebSocket fuzzing connections")] = 4,
    http_concurrency: Annotated[int, typer.Option(help="HTTP requests in flight")] = 8,
    hang_timeout: Annotated[float, typer.Option(help="seconds without an answer that count as a hang")] = 20.0,
    quiet_match: Annotated[bool, typer.Option(
        help="after the fuzz, run the quiet canary as many requests as under fuzz: the reference for its max")] = True,
    attacker: Annotated[str, typer.Option(
        help="the fuzzers' scheduling: normal, or idle (SCHED_IDLE: they take only the CPU the server leaves, as an "
             "attacker on other hardware would; the harness's setting, reported)")] = "normal",
    url: Annotated[str | None, typer.Option(help="target a running loopback server instead of starting one")] = None,
    engine: Annotated[str | None, typer.Option(
        help="the started server's engine_mode, thread or process; default: the server's own (process)")] = None,
    server_setting: Annotated[list[str] | None, typer.Option(
        "--set", metavar="NAME=VALUE", help="a setting of the started server (repeatable), e.g. "
        "max_running_per_client=none")] = None,
    output: Annotated[str | None, typer.Option(metavar="FILE", help="write the report JSON here")] = (
        f"{RESULTS}/fuzz.json"),
) -> None:
    """Fuzz WebSocket JSON, binary frames, Realtime events and HTTP bodies with a canary stream running; exit 1 on
    any defect."""
    from seedance.bench.fuzz import run_fuzz_bench

    if bad := [kv for kv in server_setting or [] if "=" not in kv]:
        raise typer.BadParameter(f"{bad[0]!r}: expected NAME=VALUE", param_hint="--set")
    if engine not in (None, "thread", "process"):
        raise typer.BadParameter("--engine must be thread or process")
    if attacker not in ("normal", "idle"):
        raise typer.BadParameter("--attacker must be normal or idle")
    overrides = dict(kv.split("=", 1) for kv in server_setting or [])
    if engine is not None:
        overrides["engine_mode"] = engine
    report = run_fuzz_bench(url, output, ws_messages=ws_messages, binary_frames=binary_frames,
                            http_bodies=http_bodies, realtime_events=realtime_events, seed=seed,
                            ws_connections=ws_connections, http_concurrency=http_concurrency,
                            hang_timeout_s=hang_timeout, quiet_match=quiet_match, attacker=attacker,
                            server_settings=overrides)
    _console().print_json(data={"defects": report.defects, "canary_quiet": report.quiet, "canary_loaded": report.loaded,
                             "canary_quiet_matched": report.quiet_matched,
                             "canary_quiet_beside_fuzz_cpu": report.quiet_beside_fuzz_cpu,
                             "max_ratio": report.max_ratio, "attacker": report.attacker,
                             "fuzz_client_cores": report.fuzz_client_cores, "duration_s": report.duration_s})
    if any(report.defects.values()):
        raise typer.Exit(1)


@bench_app.command("slowloris")
def bench_slowloris(
    connections: Annotated[int, typer.Option(help="unfinished connections from one address")] = 5000,
    header_timeout: Annotated[float, typer.Option(help="the server's header_timeout_s")] = 10.0,
) -> None:
    """One address holds many connections with unfinished headers; is /healthz still answered for others?"""
    from seedance.bench.slowloris import run_slowloris_bench

    _console().print_json(data=run_slowloris_bench(connections, {"header_timeout_s": header_timeout}))


@bench_app.command("cold-start")
def bench_cold_start(
    runs: Annotated[int, typer.Option(help="servers started per warm-up mode")] = 5,
    backend: Annotated[str, typer.Option(help="model (built-in model) or synthetic (no model compute)")] = "model",
    no_warmup: Annotated[bool, typer.Option("--no-warmup", help="servers with EngineConfig.warmup off")] = False,
    compare_warmup: Annotated[bool, typer.Option("--compare-warmup", help="as many again with warm-up off: "
                                                 "first-request TTFT with and without")] = False,
    rate: Annotated[float, typer.Option(help="synthetic backend: tokens/s per stream")] = 50.0,
    max_tokens: Annotated[int, typer.Option(help="tokens per request (two requests per server)")] = 8,
    engine: Annotated[str, typer.Option("--engine", help="the servers' --engine: thread or process")] = "thread",
    output: Annotated[str | None, typer.Option(metavar="FILE", help="write results JSON here")] = (
        f"{RESULTS}/cold-start.json"),
    plot: Annotated[str | None, typer.Option(metavar="FILE", help="waterfall PNG")] = (
        f"{RESULTS}/cold-start-waterfall.png"),
) -> None:
    """Process start to first token, N times: each phase (imports, listener, config, weights, tokenizer, KV pool,
    warm-up, first connection, first token) as mean ± std, a JSON report and a waterfall plot."""
    from seedance.bench.cold_start import render, run_cold_start_bench

    if backend not in ("synthetic", "model"):
        raise typer.BadParameter("--backend must be synthetic or model")
    if runs < 1:
        raise typer.BadParameter("--runs must be >= 1")
    if engine not in ("thread", "process"):
        raise typer.BadParameter("--engine must be thread or process")
    modes = (True, False) if compare_warmup else (not no_warmup,)
    render(_console(), run_cold_start_bench(runs, backend, modes, rate, max_tokens, output, plot, console=_console(),
                                            engine_mode=engine))


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
    output: Annotated[str | None, typer.Option(metavar="FILE", help="write results JSON here")] = (
        f"{RESULTS}/workloads.json"),
    plots: Annotated[str | None, typer.Option(metavar="DIR", help="write PNG plots into this folder")] = RESULTS,
) -> None:
    """Short / long-context summary / multi-turn dialogue × server configurations: latency, memory and completion
    rate per cell, and the Pareto-optimal configurations per workload."""
    from seedance.bench.workloads_bench import parse_configs, parse_workloads, run_workloads_bench

    try:
        chosen, names = parse_workloads(workloads, requests, rate), parse_configs(configs)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    run_workloads_bench(chosen, names, deadline, output, plots, seed, console=_console(), retries=retries)


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
    output: Annotated[str | None, typer.Option(metavar="FILE", help="write results JSON here")] = (
        f"{RESULTS}/serving.json"),
    plots: Annotated[str | None, typer.Option(help="write serving.png into this folder")] = None,
    compare: Annotated[list[str] | None, typer.Option(help="earlier result JSONs to plot beside this run")] = None,
    temperature: Annotated[float, typer.Option(help="every request's temperature (0: greedy)")] = 0.0,
    top_p: Annotated[float | None, typer.Option(help="every request's top_p (default: not sent)")] = None,
    top_k: Annotated[int | None, typer.Option(help="every request's top_k (default: not sent)")] = None,
) -> None:
    """Load any OpenAI-compatible server like `vllm bench serve`: output tok/s, TTFT / ITL / TPOT / E2E
    percentiles, goodput, errors and the server's memory, per concurrency level or request rate."""
    from seedance.bench.serving_run import BadOption, ServingOptions, run_serving

    options = ServingOptions(base_url, concurrency, request_rate, rounds, num_prompts, max_concurrency, prompt_tokens,
                             max_tokens, dataset, tokenizer, endpoint, model, ignore_eos, slo, warmup, seed,
                             server_pid, server_port, label, output, plots, compare or [], temperature, top_p,
                             top_k)
    try:
        run_serving(options, _console())
    except BadOption as err:
        raise typer.BadParameter(str(err)) from None


if __name__ == "__main__":
    app()
