"""OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions (SSE when stream=true), /v1/models.

Field names, finish reasons, usage and logprobs follow the OpenAI API so the official `openai` SDK works
unchanged. Each SSE event carries `id: <request id>:<seq>` (seq counts events from 0), so a client can tell
which request an event belongs to and where a dropped stream stopped; a stream cannot be resumed, because a
client that disconnects cancels its generation (the handler is cancelled and the stream's exit cancels the
engine request). Malformed requests get 400 before anything reaches the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

from aiohttp import web

from seedance.engine.async_engine import AsyncEngine, GenerateRequest, RequestStream
from seedance.engine.errors import EngineError
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.prompt_embeds import EncodedRows
from seedance.observability.logs import set_request_context
from seedance.protocol.messages import MAX_ID_LENGTH
from seedance.server.http.http_errors import HttpError, from_engine_error, read_json_object
from seedance.server.http.observability_http import OBS
from seedance.server.http.security import authorize_generate, principal_of
from seedance.server.http.state import STATE
from seedance.server.transports.choices import submit_choices
from seedance.server.transports.openai_fields import check_fields
from seedance.server.transports.openai_format import OpenAIFormatter, openai_finish_reason
from seedance.server.transports.openai_params import choices_count, get_field, sampling_params
from seedance.server.transports.openai_tools import ToolChoice, assistant_call_text, parse_tool_choice, tool_calls_of
from seedance.server.transports.requests import image_from_url
from seedance.server.transports.sse_generation import SseGeneration, sse_event
from seedance.serving.generation import Generation, split_replay
from seedance.sessions.manager import SessionError, scoped_key

log = logging.getLogger(__name__)
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(slots=True)
class ParsedRequest:
    request: GenerateRequest
    stream: bool
    include_usage: bool
    logprobs: int | None
    session: str | None = None  # Seedance extension: a session turn (history, KV reuse, resume)
    n: int = 1  # choices, each an engine request of its own sharing the prompt's KV (prefix cache)
    tool_choice: ToolChoice | None = None


_get = get_field


def parse_completion(body: dict) -> ParsedRequest:
    _get(body, "echo", (bool,))
    _get(body, "suffix", (str,))
    params = sampling_params(body, 16)
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
                         _session(body), choices_count(body))


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


_CHAT_ROLES = {"system", "developer", "user", "assistant", "tool"}


def _chat_messages(messages: object) -> list[dict[str, str]]:
    """OpenAI messages as the plain {"role", "content"} strings a chat template takes: text content parts joined,
    developer as system, an assistant's tool_calls as the call text the model produced (openai_tools.py)."""
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "invalid_request", "messages must be a non-empty list", "messages")
    plain: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise HttpError(400, "invalid_request", f"messages[{i}] needs a role", "messages")
        role = m["role"]
        if role not in _CHAT_ROLES:
            raise HttpError(400, "invalid_request", f"messages[{i}].role must be one of {sorted(_CHAT_ROLES)}",
                            "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text, and images for a model that takes them
            content = _content_parts(content, i)
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            if not isinstance(calls, list):
                raise HttpError(400, "invalid_request", f"messages[{i}].tool_calls must be a list", "messages")
            content = ((content or "") + "\n" if content else "") + assistant_call_text(calls)
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise HttpError(400, "invalid_request", f"messages[{i}] (tool) needs a tool_call_id", "messages")
        if not isinstance(content, str | list):
            raise HttpError(400, "invalid_request", f"messages[{i}].content must be a string", "messages")
        plain.append({"role": "system" if role == "developer" else role, "content": content})
    return plain


def parse_chat(body: dict) -> ParsedRequest:
    tool_choice = parse_tool_choice(body)
    plain = _chat_messages(body.get("messages"))
    params = sampling_params(body, 256)
    if tool_choice is not None:
        if params.guided is not None:
            raise HttpError(400, "invalid_request", "tools and response_format (or guided_*) exclude each other",
                            "response_format")
        params.guided = tool_choice.guided()
    top = _get(body, "top_logprobs", (int,))
    if top is not None and not 0 <= top <= 20:
        raise HttpError(400, "invalid_request", "top_logprobs must be in [0, 20]", "top_logprobs")
    logprobs = (top or 0) if _get(body, "logprobs", (bool,), False) else None
    params.logprobs = logprobs
    _get(body, "parallel_tool_calls", (bool,))  # a reply makes at most one call either way
    _get(body, "store", (bool,))
    request = GenerateRequest(messages=plain, params=params, priority=_get(body, "priority", (int,), 0))
    return ParsedRequest(request, bool(_get(body, "stream", (bool,), False)), _include_usage(body), logprobs,
                         _session(body), choices_count(body), tool_choice)


def _with_tools(request: GenerateRequest, tool_choice: ToolChoice | None, tokenizer) -> None:
    """Show the model its tools: through its chat template when that takes them, else as a system message."""
    if tool_choice is None:
        return
    if tokenizer is not None and tokenizer.template_takes_tools:
        request.tools = tool_choice.tools
        return
    note = tool_choice.system_prompt()
    messages = request.messages
    if messages and messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + note}
    else:
        messages.insert(0, {"role": "system", "content": note})


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
    check_fields(body, chat)
    parsed = parse_chat(body) if chat else parse_completion(body)
    end_user = _get(body, "user", (str,)) or (_get(body, "safety_identifier", (str,)) if chat else None)
    authorize_generate(request, parsed.logprobs, parsed.request.priority)  # per-option scopes (security.py)
    _with_tools(parsed.request, parsed.tool_choice, engine.tokenizer)
    prefix = "chatcmpl" if chat else "cmpl"
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    parsed.request.request_id = request_id
    set_request_context(request_id, parsed.session)  # log lines of this handler carry the ids
    if end_user is not None:
        log.info("request %s for end user %r", request_id, end_user[:128])
    session, input_text = None, ""
    try:
        if parsed.session is not None:
            if not parsed.stream:
                raise HttpError(400, "invalid_request", "session turns stream: set stream to true", "session")
            if parsed.n > 1:
                raise HttpError(400, "unsupported", "a session turn has one choice (n = 1)", "n")
            session = await state.sessions.get(scoped_key(principal_of(request), parsed.session))
            input_text = await state.sessions.prepare_turn(session, parsed.request)
        streams = await submit_choices(engine, parsed.request, parsed.n)
    except SessionError as err:
        raise HttpError(err.status, err.code, err.message) from None
    except EngineError as err:
        raise from_engine_error(err) from None
    fmts = [OpenAIFormatter(chat, state.config.model_name, request_id, engine.tokenizer, index=i)
            for i in range(len(streams))]
    hub = request.app.get(OBS)
    label = "sse" if parsed.stream else "json"  # the log line, metrics and traces tell the two apart
    obs = [hub.request(label, s.request_id, parsed.session, engine) if hub is not None else None for s in streams]

    if not parsed.stream:
        try:
            results = await asyncio.gather(*(_collect(s, engine, f, o, parsed) for s, f, o in zip(streams, fmts, obs,
                                                                                                    strict=True)))
        finally:
            for s in streams:
                if not s.finished:
                    s.cancel()
        usage = fmts[0].usage(streams[0].num_prompt_tokens, sum(r[1] for r in results), max(r[2] for r in results),
                                results[0][3])
        return web.json_response(fmts[0].body([r[0] for r in results], usage))

    srs = [SseGeneration(s.request_id if len(streams) > 1 else request_id, s, engine, fmt=f,
                         logprobs_k=parsed.logprobs, include_usage=parsed.include_usage, obs=o,
                         tail=len(streams) == 1, tool_choice=parsed.tool_choice)
           for s, f, o in zip(streams, fmts, obs, strict=True)]
    sr = srs[0]
    if session is not None:
        sr.session_id, sr.session_name, sr.input_text, sr.log = session.id, parsed.session, input_text, []
        sr.prompt_token_ids = list(parsed.request.prompt_token_ids)
        try:  # two turns of one session submitted at once: the first to get here is the turn, the other a 409
            state.sessions.begin_turn(session, sr)
        except SessionError as err:
            for s in streams:
                s.cancel()
            raise HttpError(err.status, err.code, err.message) from None
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    if len(srs) == 1:
        return await _stream_sse(request, response, sr)
    return await _stream_choices(response, srs, request_id)


async def _collect(stream: RequestStream, engine: AsyncEngine, fmt: OpenAIFormatter, obs, parsed: ParsedRequest
                   ) -> tuple[dict, int, int, TokenEvent]:
    """One choice of a non-streaming response: (its body choice, completion tokens, cached prompt tokens, its
    final event)."""
    gen, logprobs = Generation(stream.request_id, stream, engine, obs=obs), None
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
    text = "".join(gen.output_text)
    calls = tool_calls_of(text, parsed.tool_choice)
    finish = "tool_calls" if calls is not None else openai_finish_reason(final.finish_reason)
    return fmt.choice(text, logprobs, finish, calls), gen.completion_tokens, final.num_cached_tokens, final


async def _stream_choices(response: web.StreamResponse, srs: list[SseGeneration], request_id: str
                          ) -> web.StreamResponse:
    """n > 1: every choice's chunks (each with its index) on one stream as they come, then one usage and [DONE].
    A client that goes away cancels every choice."""
    wake = asyncio.Event()
    for sr in srs:
        sr.stream.listener = wake.set
        sr.owner = response
    wake.set()
    try:
        while not all(sr.finished for sr in srs):
            await wake.wait()
            wake.clear()
            out: list[bytes] = []
            for sr in srs:
                was = sr.finished
                sr.produce(out, [])
                if sr.finished and not was and sr.obs is not None:
                    sr.obs.sent()
            if out:
                await response.write(b"".join(out))
    finally:
        for sr in srs:
            if not sr.finished:
                sr.engine.cancel(sr.engine_id)
    tail = b""
    if srs[0].include_usage:
        fmt = srs[0].fmt
        usage = fmt.usage(srs[0].stream.num_prompt_tokens, sum(sr.completion_tokens for sr in srs),
                          max(sr.final.num_cached_tokens for sr in srs))
        tail = sse_event(f"{request_id}:{sum(sr.next_seq for sr in srs)}", fmt.usage_chunk(usage))
    await response.write(tail + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


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
                try:
                    await response.write(b"".join(out))
                except ConnectionError:  # the client went away mid-write: its request ends below, quietly
                    break
            if sr.finished and sr.obs is not None:
                sr.obs.sent()
    finally:
        if not sr.finished and sr.owner is owner:
            sessions = request.app[STATE].sessions
            if sr.session_id is not None and sessions is not None:
                sessions.detach(sr, owner=owner)
            else:
                sr.engine.cancel(sr.engine_id)
    with contextlib.suppress(ConnectionError):  # nobody left to read the end
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
    # images where this engine can encode them (process mode has no vision encoder: it refuses them)
    takes_images = state.engine is not None and state.engine.vision is not None
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
