"""HTTP polling transport, for legacy clients and for the transport comparison.

POST /v1/jobs takes the fields of a WebSocket `generate` (without type and id), starts a generation and
answers 202 with its id; GET /v1/jobs/{id}?after=SEQ&wait_ms=N returns the chunks after SEQ (-1, the default:
all), waiting up to wait_ms (capped by poll_max_wait_ms) for new ones while the job runs (long polling);
DELETE cancels. A reply carries status (running, done or cancelled), the new chunks, last_seq (the seq of the
last chunk so far, -1 before the first: the `after` of the next poll), next_seq (the seq the next chunk will
have: last_seq + 1), and finish_reason, stop_reason and usage once finished.
A job's chunk log is bounded by its max_tokens; finished jobs are kept for job_ttl_s so late readers get the
end, then expire. At most max_jobs jobs (running or kept) exist at once; beyond that POST gets 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from seedance.engine.async_engine import AsyncEngine, RequestStream
from seedance.engine.errors import EngineError
from seedance.engine.events import FinishReason
from seedance.observability.hub import RequestObs
from seedance.protocol import ProtocolError, decode_client_message
from seedance.server.http.http_errors import HttpError, from_engine_error, read_json_object
from seedance.server.http.observability_http import OBS
from seedance.server.http.security import authorize_generate, principal_of
from seedance.server.http.state import STATE
from seedance.server.transports.requests import generate_request_from
from seedance.serving.generation import Generation

log = logging.getLogger(__name__)


@dataclass
class Job:
    id: str
    stream: RequestStream
    created: float
    chunks: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    usage: dict | None = None
    finished_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    owner: str | None = None  # the principal that created it; only it can read or cancel the job
    obs: RequestObs | None = None  # metrics / tracing

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def status(self) -> str:
        if self.finish_reason is None:
            return "running"
        return "cancelled" if self.finish_reason == FinishReason.CANCELLED else "done"

    def view(self, after: int) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "chunks": self.chunks[after + 1 :],
            "last_seq": len(self.chunks) - 1,
            "next_seq": len(self.chunks),
            "finish_reason": self.finish_reason,
            "stop_reason": self.stop_reason,
            "usage": self.usage,
        }


class JobStore:
    def __init__(self, engine: AsyncEngine, max_jobs: int, ttl_s: float) -> None:
        self.engine = engine
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.jobs: dict[str, Job] = {}

    def create(self, stream: RequestStream, job_id: str) -> Job:
        job = Job(job_id, stream, time.monotonic())
        self.jobs[job_id] = job
        job.task = asyncio.get_running_loop().create_task(self._consume(job))
        return job

    async def _consume(self, job: Job) -> None:
        try:
            await self._record(job)
        except Exception:  # a job that can never finish would hold its slot forever and hang its pollers
            log.exception("job %s failed", job.id)
            self.engine.cancel(job.stream.request_id)
            if not job.done:
                job.finish_reason = str(FinishReason.ERROR)
                job.finished_at = time.monotonic()
                job.changed.set()

    async def _record(self, job: Job) -> None:
        gen = Generation(job.id, job.stream, self.engine, obs=job.obs)
        async for event in job.stream:
            step = gen.take([event, *job.stream.drain()])
            if step.tokens or step.text:
                job.chunks.append({"seq": len(job.chunks), "text": step.text,
                                   "token_ids": [e.token_id for e in step.tokens]})
            final = step.final
            if final is not None:
                job.finish_reason = str(final.finish_reason)
                job.stop_reason = final.stop_reason
                job.usage = {"prompt_tokens": job.stream.num_prompt_tokens, "completion_tokens": gen.completion_tokens,
                             "cached_tokens": final.num_cached_tokens}
                job.finished_at = time.monotonic()
                gen.end(final)
                if job.obs is not None:
                    job.obs.sent()  # pollers read it from here
            job.changed.set()
            if final is not None:
                return

    def expire(self, now: float) -> int:
        """Drop finished jobs older than the TTL; returns how many went."""
        old = [j for j in self.jobs.values() if j.finished_at is not None and now - j.finished_at > self.ttl_s]
        for job in old:
            del self.jobs[job.id]
        return len(old)

    def cancel(self, job: Job) -> None:
        self.engine.cancel(job.stream.request_id)

    async def close(self) -> None:
        for job in list(self.jobs.values()):
            self.cancel(job)
            if job.task:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(job.task, 5)


def _store(request: web.Request) -> JobStore:
    state = request.app[STATE]
    if state.jobs is None:
        raise HttpError(503, "not_ready", "model is loading", headers={"Retry-After": "1"})
    return state.jobs


async def create_job(request: web.Request) -> web.Response:
    state = request.app[STATE]
    store = _store(request)
    if state.draining:
        raise HttpError(503, "shutting_down", "server is shutting down")
    body = await read_json_object(request, state.config.max_message_bytes)
    if body.setdefault("type", "generate") != "generate":
        raise HttpError(400, "invalid_request", f"type must be 'generate' or left out, got {body['type']!r}", "type")
    body.setdefault("id", "job")  # the server names the job; the field is only there for the decoder
    store.expire(time.monotonic())
    if len(store.jobs) >= store.max_jobs:
        raise HttpError(429, "overloaded", f"at most {store.max_jobs} jobs", headers={"Retry-After": "1"})
    try:
        message = decode_client_message(json.dumps(body), max_size=state.config.max_message_bytes)
        authorize_generate(request, message.logprobs, message.priority)  # per-option scopes (security.py)
        job_id = f"job-{uuid.uuid4().hex}"
        stream = await store.engine.submit(generate_request_from(message, request_id=job_id))
    except ProtocolError as err:
        raise HttpError(400, err.code, err.message) from None
    except EngineError as err:
        raise from_engine_error(err) from None
    job = store.create(stream, job_id)
    job.owner = principal_of(request).id
    hub = request.app.get(OBS)
    if hub is not None:
        job.obs = hub.request("polling", job_id, None, store.engine)
    return web.json_response({"id": job_id, "status": "running"}, status=202,
                             headers={"Location": f"/v1/jobs/{job_id}"})


def _job(request: web.Request) -> Job:
    job = _store(request).jobs.get(request.match_info["job_id"])
    if job is None or job.owner not in (None, principal_of(request).id):  # another principal's job: not found
        raise HttpError(404, "not_found", f"no job {request.match_info['job_id']!r} (finished jobs expire)")
    return job


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise HttpError(400, "invalid_request", f"{name} must be an integer", name) from None


async def get_job(request: web.Request) -> web.Response:
    job = _job(request)
    after = _int_query(request, "after", -1)
    if after < -1:
        raise HttpError(400, "invalid_request", "after must be >= -1 (-1: from the first chunk)", "after")
    wait_ms = min(max(0, _int_query(request, "wait_ms", 0)), request.app[STATE].config.poll_max_wait_ms)
    deadline = time.monotonic() + wait_ms / 1000
    while len(job.chunks) - 1 <= after and not job.done:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        job.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.changed.wait(), remaining)
    return web.json_response(job.view(after))


async def delete_job(request: web.Request) -> web.Response:
    store = _store(request)
    job = _job(request)
    if not job.done:
        store.cancel(job)
        if job.task:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(job.task), 5)
    return web.json_response({"id": job.id, "status": job.status, "finish_reason": job.finish_reason})
