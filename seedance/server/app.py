"""The aiohttp application: routes, engine lifecycle, graceful shutdown.

The socket is listening before the model has loaded: /healthz answers at once, /readyz says 503 until
the engine is up, and the transports refuse work with a clear "model is loading" until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import socket
import time
import uuid
from pathlib import Path

from aiohttp import web

from seedance.engine.async_engine import AsyncEngine
from seedance.engine.core_spawn import SpawnedCore
from seedance.engine.process_engine import ProcessEngine
from seedance.models.identity import model_identity
from seedance.protocol import CloseCode
from seedance.server.http import client_identity, conn_guard, cors, security
from seedance.server.http import observability_http as observability
from seedance.server.http.config import ServerConfig
from seedance.server.http.gc_policy import GcPolicy
from seedance.server.http.head_router import HeadRouter
from seedance.server.http.http_errors import HttpError
from seedance.server.http.proxy import TrustedProxies
from seedance.server.http.reuseport import attach_source_ip_routing
from seedance.server.http.state import STATE, Placement, ServerState
from seedance.server.transports import embeddings, openai_api, polling, tokenize_api
from seedance.server.transports.realtime import realtime_handler
from seedance.server.transports.ws import websocket_handler
from seedance.server.transports.ws_picows import PicowsStream
from seedance.sessions.manager import SessionManager
from seedance.sessions.store import open_store

log = logging.getLogger("seedance.server")
STATIC_DIR = Path(__file__).resolve().parent / "static"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state: ServerState = request.app[STATE]
    if state.engine is None or state.draining:
        reason = state.load_error or ("draining" if state.draining else "loading")
        return web.json_response({"status": "not_ready", "reason": reason}, status=503)
    if (failure := getattr(state.engine, "failure", None)) is not None:  # the engine process died
        return web.json_response({"status": "not_ready", "reason": "engine_unavailable", "detail": failure},
                                 status=503)
    if state.sessions is not None and state.sessions.store_error is not None:
        # Still serving (requests without a session work); session requests fail with store_unavailable.
        return web.json_response({"status": "degraded", "reason": "session_store_unavailable",
                                  "detail": state.sessions.store_error, "model": state.config.model_name})
    return web.json_response({"status": "ready", "model": state.config.model_name})


async def stats(request: web.Request) -> web.Response:
    """Engine and transport counters as JSON (what an operator or a test checks)."""
    state: ServerState = request.app[STATE]
    if state.engine is None:
        raise web.HTTPServiceUnavailable(text='{"status": "loading"}', content_type="application/json")
    body = dataclasses.asdict(state.engine.stats())
    body.update(websockets=len(state.websockets), open_requests=state.engine.num_open_requests,
                jobs=len(state.jobs.jobs) if state.jobs else 0,
                sessions=len(state.sessions.sessions) if state.sessions else 0,
                snapshots_written=state.sessions.snapshots_written if state.sessions else 0,
                prefix_cache_hit_rate=round(body["prefix_cache_hit_tokens"] / body["prefix_cache_query_tokens"], 4)
                if body["prefix_cache_query_tokens"] else 0.0,
                cold_start_ms=observability.cold_start_ms(request.app),
                engine_mode="process" if state.worker is not None else state.config.engine_mode,
                worker=state.worker.index if state.worker is not None else None,
                engine_pid=process.pid if (process := getattr(state.engine, "process", None)) is not None else None)
    return web.json_response(body)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _load_engine(app: web.Application) -> None:
    try:
        await _start_engine(app)
    finally:
        settle_heap()


def settle_heap() -> None:
    """End of start-up: move what start-up built (~365k objects: modules, model, tokenizer) to the permanent
    generation and turn the collector back on (`seedance serve` turns it off while importing and loading).
    Measured before: ~0.5 s of repeated full collections during start-up, and one 170-210 ms full collection
    ~0.3 s after ready that stalled the first requests. No collection here either (one over that heap took
    ~290 ms): start-up's few cyclic leftovers stay frozen, and later full collections skip the frozen objects."""
    gc.freeze()
    gc.enable()


async def _start_engine(app: web.Application) -> None:
    state: ServerState = app[STATE]
    # an engine process `seedance serve` spawned before importing the app began loading then (the first mark wins)
    observability.mark(app, "engine_load_start", state.spawned_core.started_ns if state.spawned_core else None)
    try:
        if state.worker is not None:  # one of --workers N: the group's engine process
            engine = await ProcessEngine.connect_path(state.config.engine, state.worker.core_path,
                                                      state.worker.prefix)
        elif state.config.engine_mode == "process":
            core, state.spawned_core = state.spawned_core, None
            engine = await ProcessEngine.create(state.config.engine, log_level=logging.getLogger().level, core=core)
        else:
            engine = await AsyncEngine.create(state.config.engine)
    except Exception as err:  # one line, then `seedance serve` exits non-zero (serve() returns the reason)
        log.debug("model failed to load", exc_info=True)
        state.load_error = f"model failed to load: {err}"
        log.error("%s", state.load_error)
        if state.on_load_failure is not None:
            state.on_load_failure()
        return
    times = engine.engine.load_times  # taken on the engine thread where each phase ended
    for mark, key in (("config_loaded", "config_loaded"), ("weights_loaded", "weights_loaded"),
                      ("model_loaded", "tokenizer_loaded"), ("kv_allocated", "kv_allocated"),
                      ("warmup_done", "warmup_done")):
        if key in times:
            observability.mark(app, mark, times[key])
    observability.mark(app, "model_loaded")  # a no-op when the engine said when (the first mark wins)
    cfg = state.config
    try:
        store = open_store(cfg.session_store_url(), ttl_s=cfg.session_idle_ttl_s * 24)
    except Exception as err:
        log.exception("session store unavailable")
        state.load_error = f"session store {cfg.session_store_url()!r} unavailable: {err}"
        await engine.close()
        return
    model_id = await asyncio.to_thread(
        model_identity, _model_path(cfg, engine), engine.config.dtype,
        quantize=cfg.engine.quantize)  # the dtype "auto" resolved to on this machine
    state.sessions = SessionManager(engine, store, model_id=model_id, max_sessions=cfg.max_sessions,
                                    idle_ttl_s=cfg.session_idle_ttl_s,
                                    resume_grace_s=cfg.resume_grace_s,
                                    detached_buffer_tokens=cfg.detached_buffer_tokens,
                                    snapshot_embeds_bytes=cfg.session_snapshot_embeds_bytes)
    state.jobs = polling.JobStore(engine, cfg.max_jobs, cfg.job_ttl_s)
    state.engine = engine
    observability.mark(app, "engine_ready")
    log.info("model ready: %s (identity %s)", state.config.engine.model or "built-in", model_id)


def _model_path(cfg: ServerConfig, engine: AsyncEngine | ProcessEngine) -> str | Path | None:
    """The served weights' file or directory (None: synthetic). An engine process resolved it itself (Ready):
    the loader imports torch, which a process-mode gateway does without."""
    if isinstance(engine, ProcessEngine):
        return engine.model_path
    if cfg.engine.synthetic_rate:
        return None
    from seedance.models.loader import resolve_model_path  # the thread mode has loaded it (and torch) already

    return resolve_model_path(cfg.engine.model)


async def _reap_jobs(app: web.Application) -> None:
    state: ServerState = app[STATE]
    while True:
        await asyncio.sleep(min(10.0, state.config.job_ttl_s))
        if state.jobs is not None:
            state.jobs.expire(time.monotonic())
        if state.sessions is not None:
            state.sessions.evict_idle()


async def _on_startup(app: web.Application) -> None:
    state: ServerState = app[STATE]
    state.tasks.append(asyncio.create_task(_load_engine(app), name="load-engine"))
    state.tasks.append(asyncio.create_task(_reap_jobs(app), name="reap-jobs"))


async def drain(app: web.Application) -> None:
    """Stop taking work, give in-flight streams the grace period, cancel the rest (their clients get a
    done/cancelled), then close WebSockets with 1001. Idempotent."""
    state: ServerState = app[STATE]
    if state.draining:
        return
    state.draining = True
    engine = state.engine

    async def wait_for_streams(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while engine is not None and engine.num_open_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    await wait_for_streams(state.config.shutdown_grace_s)
    if engine is not None:
        for request_id in engine.open_request_ids():
            engine.cancel(request_id)
        await wait_for_streams(2.0)  # let the cancellations reach their clients
        await asyncio.sleep(0.05)
    if state.jobs is not None:
        await state.jobs.close()
    deadline = time.monotonic() + 2.0
    while any(conn.requests for conn in state.websockets) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # each writer sends its cancelled requests' done before the close
    for conn in list(state.websockets):
        await conn.close(CloseCode.GOING_AWAY, "server is shutting down")
    if state.sessions is not None:
        await state.sessions.close()  # waits for snapshot writes in flight
    if engine is not None:
        await engine.close()


async def _on_cleanup(app: web.Application) -> None:
    state: ServerState = app[STATE]
    for task in state.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


@web.middleware
async def last_resort(request: web.Request, handler):
    """No route answers aiohttp's text/plain 500: an unexpected exception becomes the JSON error body with a
    request id, which the log line (with the traceback) carries too, so a report can be matched to it."""
    try:
        return await handler(request)
    except (web.HTTPException, ConnectionError):  # answers, and clients that went away
        raise
    except Exception:
        error_id = f"err-{uuid.uuid4().hex}"
        log.exception("unexpected error in %s %s (%s)", request.method, request.path, error_id,
                      extra={"request_id": error_id})
        raise HttpError(500, "internal", f"internal error (request id {error_id})",
                        headers={"X-Request-Id": error_id}) from None


@web.middleware
async def json_errors(request: web.Request, handler):
    """aiohttp's own 404/405 pages are plain text; every HTTP error here is the JSON shape clients parse."""
    try:
        return await handler(request)
    except HttpError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "message_too_large"}.get(exc.status, "http_error")
        raise HttpError(exc.status, code, exc.reason or "error", headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"}) from None


def build_app(config: ServerConfig) -> web.Application:
    app = web.Application(client_max_size=config.max_message_bytes,
                          middlewares=[conn_guard.middleware, client_identity.middleware, last_resort, json_errors,
                                       cors.middleware, security.middleware])
    app[STATE] = ServerState(config)
    if config.model_name is None:
        from seedance.models.registry import served_name

        config.model_name = served_name(config.engine.model)
    app[conn_guard.GUARD] = conn_guard.ConnectionGuard(
        config.header_timeout_s, config.max_pending_connections_per_ip, config.max_open_connections,
        config.fd_reserve, exempt=TrustedProxies(config.trusted_proxies).trusts)
    security.install(app, config)  # TLS, auth, scopes, Origin, limits (security.py); refuses unsafe configs
    cors.install(app, config.cors_max_age_s)  # preflights (middleware above) and CORS headers on responses
    observability.install(app, config)  # /metrics, tracing, per-transport counters (docs/observability.md)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(drain)
    app.on_cleanup.append(_on_cleanup)
    app.add_routes([
        web.get("/", index),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/health", readyz),  # the name vLLM, llama-server and TGI use: readiness (503 until loaded)
        web.get("/stats", stats),
        web.get("/v1/stream", websocket_handler),
        web.get("/v1/realtime", realtime_handler),
        web.get("/v1/models", openai_api.models),
        web.get("/v1/models/{model_id}", openai_api.model),
        web.post("/v1/completions", openai_api.completions),
        web.post("/v1/chat/completions", openai_api.chat_completions),
        web.post("/v1/jobs", polling.create_job),
        web.get("/v1/jobs/{job_id}", polling.get_job),
        web.delete("/v1/jobs/{job_id}", polling.delete_job),
        web.post("/tokenize", tokenize_api.tokenize),
        web.post("/detokenize", tokenize_api.detokenize),
    ])
    embeddings.install(app)  # POST /v1/embeddings and its bound
    app.router.add_static("/static", STATIC_DIR)
    return app


async def serve(config: ServerConfig, ready: asyncio.Event | None = None,
                worker: Placement | None = None, core: SpawnedCore | None = None) -> str | None:
    """Run until SIGTERM/SIGINT, then shut down gracefully; a model that fails to load stops it too.
    Returns why the model failed to load (the CLI exits non-zero with it), None after a normal run.
    worker: this process is one of `--workers N` (server/workers.py): shared port, shared engine process.
    core: `--engine process`'s core, spawned by `seedance serve` before this module was imported."""
    app = build_app(config)
    app[STATE].worker = worker
    app[STATE].spawned_core = core
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=config.shutdown_grace_s + 5)
    await runner.setup()
    sec = app[security.SECURITY]
    # /v1/stream's stack (server-stack.md); None also when the start-up probe finds picows unusable (aiohttp then)
    picows = await PicowsStream.start(app) if config.ws_stack == "picows" else None
    site = conn_guard.GuardedSite(runner, app[conn_guard.GUARD], config.host, config.port, reuse_address=True,
                                  ssl_context=sec.ssl_context, backlog=config.listen_backlog,
                                  reuse_port=worker is not None, keepalive=config.keepalive,
                                  accept_batch=config.accept_batch,
                                  protocol=HeadRouter.factory(picows.protocol) if picows else None)
    try:
        await site.start()
    except OSError:  # cannot listen (port in use...): the CLI says so in one line
        await runner.cleanup()
        raise
    if worker is not None:
        for sock in site._server.sockets:
            if sock.family == socket.AF_INET:
                attach_source_ip_routing(sock, worker.count)
    observability.mark(app, "listener_ready")
    gc_policy = GcPolicy(lambda: site._server.accepted, config.gc_burst_accepts_per_s)
    gc_policy.start()
    stop = asyncio.Event()
    app[STATE].on_load_failure = stop.set
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = runner.addresses[0][1] if runner.addresses else config.port
    tls = sec.ssl_context is not None
    log.info("seedance listening on %s://%s:%d (WebSocket %s://%s:%d/v1/stream); %s", "https" if tls else "http",
             config.host, port, "wss" if tls else "ws", config.host, port, sec.describe())
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining for up to %.1f s", config.shutdown_grace_s)
        # Drain before aiohttp's own shutdown: once that starts, it stops reading from open sockets, and
        # clients must still be able to cancel and answer pings while their streams finish.
        for s in list(runner.sites):
            await s.stop()  # no new connections
        gc_policy.stop()
        await drain(app)
        if picows is not None:
            await picows.close()
        await runner.cleanup()
    return app[STATE].load_error
