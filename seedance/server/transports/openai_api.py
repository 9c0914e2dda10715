"""OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions (SSE when stream=true), /v1/models.

Field names, finish reasons, usage and logprobs follow the OpenAI API so the official `openai` SDK works
unchanged. Each SSE event carries `id: <request id>:<seq>` (seq counts events from 0), so a client can tell
which request an event belongs to and where a dropped stream stopped; a stream cannot be resumed, because a
client that disconnects cancels its generation (the handler is cancelled and the stream's exit cancels the
engine request). Malformed requests get 400 before anything reaches the engine.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from seedance.engine.async_engine import AsyncEngine, GenerateRequest
from seedance.engine.errors import EngineError
from seedance.engine.events import FinishReason
from seedance.engine.prompt_embeds import EncodedRows
from seedance.engine.sampling_params import SamplingParams
from seedance.observability.logs import set_request_context
from seedance.protocol.messages import MAX_ID_LENGTH
from seedance.server.http.http_errors import HttpError, from_engine_error, read_json_object
from seedance.server.http.observability_http import OBS
from seedance.server.http.security import authorize_generate, principal_of
from seedance.server.http.state import STATE
from seedance.server.transports.openai_format import OpenAIFormatter, openai_finish_reason
from seedance.server.transports.requests import image_from_url
from seedance.server.transports.sse_generation import SseGeneration
from seedance.serving.generation import Generation, split_replay
from seedance.sessions.manager import SessionError, scoped_key

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # the range of the same fields in a WebSocket generate
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(slots=True)
class ParsedRequest:
    request: GenerateRequest
    stream: bool
    include_usage: bool
    logprobs: int | None
    session: str | None = None  # Seedance extension: a session turn (history, KV reuse, resume)


_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object"}
_JSON_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _get(body: dict, name: str, kinds: tuple[type, ...], default: Any = None,
         int_range: tuple[int, int] = (INT32_MIN, INT32_MAX)) -> Any:
    """body[name] if it has one of the JSON types `kinds` (null or absent: default), else a 400 naming the field.
    JSON integers have no size limit: one outside int_range (for an integer field) or beyond a double (for a
    number field: a 400-digit temperature) is a 400 too, before float() or torch could fail on it."""
    value = body.get(name)
    if value is None:
        return default
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        expected = _KIND_NAMES[float] if float in kinds else " or ".join(_KIND_NAMES[k] for k in kinds)
        got = _JSON_NAMES.get(type(value), type(value).__name__)
        raise HttpError(400, "invalid_request", f"{name} must be {expected}, got {got}", name)
    if isinstance(value, int) and not isinstance(value, bool):
        in_range = abs(value) <= 2**1023 if float in kinds else int_range[0] <= value <= int_range[1]
        if not in_range:
            raise HttpError(400, "invalid_request", f"{name} is out of range", name)
    return value


def _common_params(body: dict, max_tokens_default: int | None) -> SamplingParams:
    for name in ("n", "best_of"):
        if _get(body, name, (int,), 1) != 1:
            raise HttpError(400, "unsupported", f"{name} > 1 is not supported", name)
    for name in ("presence_penalty", "frequency_penalty"):
        if _get(body, name, (int, float), 0) != 0:
            raise HttpError(400, "unsupported", f"{name} is not supported", name)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = stop
    else:
        raise HttpError(400, "invalid_request", "stop must be a string or a list of strings", "stop")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _get(body, name, (int,), max_tokens_default)
    seed = _get(body, "seed", (int,), int_range=(INT64_MIN, INT64_MAX))  # a seed torch cannot take fails the step
    stop_token_ids = _get(body, "stop_token_ids", (list,), [])
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in stop_token_ids):
        raise HttpError(400, "invalid_request", "stop_token_ids must be a list of token ids (integers >= 0)",
                        "stop_token_ids")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(_get(body, "temperature", (int, float), 1.0)),
        top_p=float(_get(body, "top_p", (int, float), 1.0)),
        top_k=int(_get(body, "top_k", (int,), 0)),
        seed=seed,
        stop=stops,
        stop_token_ids=list(stop_token_ids),
        ignore_eos=bool(_get(body, "ignore_eos", (bool,), False)),
    )


def parse_completion(body: dict) -> ParsedRequest:
    if _get(body, "echo", (bool,), False):
        raise HttpError(400, "unsupported", "echo is not supported", "echo")
    if body.get("suffix"):
        raise HttpError(400, "unsupported", "suffix is not supported", "suffix")
    params = _common_params(body, 16)
    logprobs = _get(body, "logprobs", (int,))
    if logprobs is not None and not 0 <= logprobs <= 20:
        raise HttpError(400, "invalid_request", "logprobs must be in [0, 20]", "logprobs")
    params.logprobs = logprobs
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    embeds = _prompt_embeds(body)
    if embeds is not None:
        if prompt not in (None, "", []):
            raise HttpError(400, "invalid_request", "give prompt or prompt_embeds, not both (one prompt)", "prompt")
        request = GenerateRequest(prompt_parts=[embeds], params=params)
    elif isinstance(prompt, str):
        request = GenerateRequest(prompt=prompt, params=params)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        request = GenerateRequest(prompt_token_ids=prompt, params=params)
    else:
        raise HttpError(400, "invalid_request", "prompt must be a string or a list of token ids (one prompt)",
                        "prompt")
    request.priority = _get(body, "priority", (int,), 0)
    return ParsedRequest(request, bool(_get(body, "stream", (bool,), False)), _include_usage(body), logprobs,
                         _session(body))


def _prompt_embeds(body: dict) -> EncodedRows | None:
    """vLLM's prompt_embeds: base64 of a torch.save'd [n, hidden_size] tensor (a batch of one may be a list of
    one). Decoded, bounded and checked on the engine's tokenizer thread: torch.load(weights_only=True), no other
    unpickling (engine/prompt_embeds.py)."""
    embeds = body.get("prompt_embeds")
    if isinstance(embeds, list) and len(embeds) == 1:
        embeds = embeds[0]
    if embeds is None:
        return None
    if not isinstance(embeds, str) or not embeds:
        raise HttpError(400, "invalid_request", "prompt_embeds must be a base64 string (one prompt)", "prompt_embeds")
    return EncodedRows(embeds, "torch")


def _content_parts(content: list, i: int):
    """OpenAI content parts as the engine takes them: a string when all are text, else text and image parts.
    An image_url must be a data: URL (the server fetches nothing); the image is decoded on the engine's vision
    thread, and a model without images refuses it there (400 invalid_request)."""
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict) and isinstance(
                part["image_url"].get("url"), str):
            try:
                parts.append({"type": "image", "image": image_from_url(part["image_url"]["url"])})
            except EngineError as err:
                raise HttpError(400, "invalid_request", f"messages[{i}]: {err}", "messages") from None
        else:
            raise HttpError(400, "unsupported", "content parts are text or image_url ({url: data:...})",
                            "messages")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def parse_chat(body: dict) -> ParsedRequest:
    if body.get("tools") or body.get("functions"):
        raise HttpError(400, "unsupported", "tool calling is not supported", "tools")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "invalid_request", "messages must be a non-empty list", "messages")
    plain: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise HttpError(400, "invalid_request", f"messages[{i}] needs a role", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text, and images for a model that takes them
            content = _content_parts(content, i)
        if not isinstance(content, str | list):
            raise HttpError(400, "invalid_request", f"messages[{i}].content must be a string", "messages")
        plain.append({"role": m["role"], "content": content})
    params = _common_params(body, 256)
    top = _get(body, "top_logprobs", (int,))
    if top is not None and not 0 <= top <= 20:
        raise HttpError(400, "invalid_request", "top_logprobs must be in [0, 20]", "top_logprobs")
    logprobs = (top or 0) if _get(body, "logprobs", (bool,), False) else None
    params.logprobs = logprobs
    request = GenerateRequest(messages=plain, params=params, priority=_get(body, "priority", (int,), 0))
    return ParsedRequest(request, bool(_get(body, "stream", (bool,), False)), _include_usage(body), logprobs,
                         _session(body))


def _session(body: dict) -> str | None:
    """A session name is an id, as on the WebSocket: 1 to MAX_ID_LENGTH characters."""
    name = _get(body, "session", (str,))
    if name is not None and not 1 <= len(name) <= MAX_ID_LENGTH:
        raise HttpError(400, "invalid_request", f"session must be 1 to {MAX_ID_LENGTH} characters", "session")
    return name


def _include_usage(body: dict) -> bool:
    options = _get(body, "stream_options", (dict,), {})
    return bool(_get(options, "include_usage", (bool,), False))


def _merge_logprobs(acc: dict | None, part: dict | None) -> dict | None:
    if part is None:
        return acc
    if acc is None:
        return part
    for key, value in part.items():
        if isinstance(value, list):
            acc[key] = (acc.get(key) or []) + value
    return acc


async def _handle(request: web.Request, chat: bool) -> web.StreamResponse:
    state = request.app[STATE]
    engine: AsyncEngine | None = state.engine
    if engine is None:
        raise HttpError(503, "not_ready", "model is loading", headers={"Retry-After": "1"})
    if state.draining:
        raise HttpError(503, "shutting_down", "server is shutting down")
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id:
        return await _resume_sse(request, last_event_id)
    body = await read_json_object(request, state.config.max_message_bytes)
    model = body.get("model")
    if model is not None and model != state.config.model_name:
        raise HttpError(404, "model_not_found", f"model {model!r} is not served here; see /v1/models", "model")
    parsed = parse_chat(body) if chat else parse_completion(body)
    authorize_generate(request, parsed.logprobs, parsed.request.priority)  # per-option scopes (security.py)
    prefix = "chatcmpl" if chat else "cmpl"
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    parsed.request.request_id = request_id
    set_request_context(request_id, parsed.session)  # log lines of this handler carry the ids
    session, input_text = None, ""
    try:
        if parsed.session is not None:
            if not parsed.stream:
                raise HttpError(400, "invalid_request", "session turns stream: set stream to true", "session")
            session = await state.sessions.get(scoped_key(principal_of(request), parsed.session))
            input_text = await state.sessions.prepare_turn(session, parsed.request)
        stream = await engine.submit(parsed.request)
    except SessionError as err:
        raise HttpError(err.status, err.code, err.message) from None
    except EngineError as err:
        raise from_engine_error(err) from None
    fmt = OpenAIFormatter(chat, state.config.model_name, request_id, engine.tokenizer)
    hub = request.app.get(OBS)
    obs = hub.request("sse", request_id, parsed.session, engine) if hub is not None else None

    if not parsed.stream:
        gen, logprobs = Generation(request_id, stream, engine, obs=obs), None
        async for event in stream:
            step = gen.take([event])
            logprobs = _merge_logprobs(logprobs, fmt.logprobs([event], parsed.logprobs))
            if step.final is not None:
                gen.end(step.final)
        final = gen.final
        if obs is not None and final is not None:
            obs.sent()
        if final is None or final.finish_reason is FinishReason.ERROR:
            raise HttpError(500, "internal", "generation failed")
        usage = fmt.usage(stream.num_prompt_tokens, gen.completion_tokens, final.num_cached_tokens, final)
        body = fmt.full("".join(gen.output_text), logprobs, openai_finish_reason(final.finish_reason), usage)
        return web.json_response(body)

    sr = SseGeneration(request_id, stream, engine, fmt=fmt, logprobs_k=parsed.logprobs,
                          include_usage=parsed.include_usage, obs=obs)
    if session is not None:
        sr.session_id, sr.session_name, sr.input_text, sr.log = session.id, parsed.session, input_text, []
        sr.prompt_token_ids = list(parsed.request.prompt_token_ids)
        state.sessions.begin_turn(session, sr)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    return await _stream_sse(request, response, sr)


async def _stream_sse(request: web.Request, response: web.StreamResponse, sr: SseGeneration) -> web.StreamResponse:
    """Write the request's events as they come. If the client goes away, a session turn is detached for a
    resume (Last-Event-ID); any other request is cancelled."""
    wake = asyncio.Event()
    sr.stream.listener = wake.set
    owner = sr.owner = object()  # this response; a resume elsewhere takes the request over
    wake.set()
    try:
        while not sr.finished and sr.owner is owner:
            await wake.wait()
            wake.clear()
            out: list[bytes] = []
            sr.produce(out, [])
            if out:
                await response.write(b"".join(out))
            if sr.finished and sr.obs is not None:
                sr.obs.sent()
    finally:
        if not sr.finished and sr.owner is owner:
            sessions = request.app[STATE].sessions
            if sr.session_id is not None and sessions is not None:
                sessions.detach(sr, owner=owner)
            else:
                sr.engine.cancel(sr.engine_id)
    await response.write_eof()
    return response


async def _resume_sse(request: web.Request, last_event_id: str) -> web.StreamResponse:
    """Last-Event-ID: <session>/<request id>:<seq>. Replay the events after seq, then continue live."""
    state = request.app[STATE]
    try:
        prefix, seq_text = last_event_id.rsplit(":", 1)
        session_id, request_id = prefix.split("/", 1)
        last_seq = int(seq_text)
    except ValueError:
        raise HttpError(400, "invalid_request", "Last-Event-ID must be <session>/<request id>:<seq>") from None
    try:
        session = await state.sessions.get(scoped_key(principal_of(request), session_id))
    except SessionError as err:
        raise HttpError(400, err.code, err.message) from None
    sr = state.sessions.adopt(session, request_id, owner=None)  # _stream_sse takes ownership below
    if sr is None:
        logged = session.replay.get(request_id)
        if logged is None:
            raise HttpError(404, "unknown_id", f"session {session_id!r} has no request {request_id!r} to resume")
        replay, _ = split_replay(logged, last_seq)
    else:
        replay, _ = sr.replay_after(last_seq)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    if replay:
        await response.write(b"".join(replay))
    if sr is None or sr.finished:
        await response.write_eof()
        return response
    state.engine.resume(sr.engine_id)  # it may have been paused while its client was away
    return await _stream_sse(request, response, sr)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, chat=True)


def _model_card(state) -> dict:
    """`input_modalities` (a Seedance extension): ["text", "image"] for a model that takes images."""
    takes_images = state.engine is not None and state.engine.engine.takes_images
    return {"id": state.config.model_name, "object": "model", "created": state.started_at, "owned_by": "seedance",
            "input_modalities": ["text", "image"] if takes_images else ["text"]}


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model_card(request.app[STATE])]})


async def model(request: web.Request) -> web.Response:
    """GET /v1/models/{model_id}, the SDK's models.retrieve (app.py routes it)."""
    state = request.app[STATE]
    model_id = request.match_info["model_id"]
    if model_id != state.config.model_name:
        raise HttpError(404, "model_not_found", f"model {model_id!r} is not served here; see /v1/models", "model")
    return web.json_response(_model_card(state))
